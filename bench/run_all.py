"""Every benchmark of the project behind one command, figures gathered into one JSON.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--json bench_results.json]

Each benchmark runs as its own process (TensorFlow and MuJoCo rendering cannot share
one) and writes its figures with --json; this script collects them under the
benchmark's name, with the machine, the commit and the date, so runs can be compared.
--quick shortens the long ones (the logger's 5-minute soak becomes 20 s) and says so
in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, full arguments, quick arguments)
BENCHMARKS = {
    "episode_io": ("episode_io.py", ["--steps", "300"], ["--steps", "100"]),
    "logger_rate": ("logger_rate.py", ["--seconds", "300"], ["--seconds", "20"]),
    "sim_rates": ("sim_rates.py", [], ["--seconds", "1"]),
    "sim_node_rate": ("sim_node_rate.py", ["--seconds", "15"], ["--seconds", "5"]),
    "sim_expert": ("sim_expert.py", ["--seeds", "20"], ["--seeds", "3"]),
    "export_throughput": ("export_throughput.py", [], ["--episodes", "2", "--steps", "50"]),
    "train_data_pipeline": ("train_data_pipeline.py", [], ["--steps", "20"]),
    "openpi_step": ("openpi_step.py", [], ["--steps", "5"]),
    "openvla_7b_step": (
        "openvla_7b_step.py",
        [],
        ["--depth-override", "1", "--width-divisor", "64", "--batch-size", "2", "--steps", "1", "--infer-actions", "3"],
    ),
    "inference_latency": ("inference_latency.py", ["--seconds", "20"], ["--seconds", "8"]),
    "inference_threads": ("inference_threads.py", [], ["--calls", "5"]),
    "control_jitter": ("control_jitter.py", ["--seconds", "20"], ["--seconds", "8"]),
    "openvla_action_heads": ("openvla_action_heads.py", [], ["--calls", "5"]),
    "distributed_memory": ("distributed_memory.py", [], []),
    "vision_probe": ("vision_probe.py", [], ["--scenes", "100", "--steps", "50", "--held-out", "50"]),
}


def run_one(name: str, quick: bool, workdir: Path) -> dict:
    script, full, short = BENCHMARKS[name]
    out = workdir / f"{name}.json"
    cmd = [sys.executable, str(HERE / script), *(short if quick else full), "--json", str(out)]
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    result = subprocess.run(cmd, text=True, stdout=sys.stdout, stderr=subprocess.PIPE)
    entry = {"seconds": round(time.monotonic() - t0, 1), "args": cmd[2:-2], "exit_code": result.returncode}
    if result.returncode == 0 and out.exists():
        entry["figures"] = json.loads(out.read_text())
    else:
        entry["error"] = result.stderr[-2000:]
        print(f"   {name} FAILED (exit {result.returncode}):\n{result.stderr[-1000:]}", flush=True)
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shortened runs (a smoke check, not the targets)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--json", default="bench_results.json", help="where the gathered figures go")
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit or None,
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "benchmarks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or BENCHMARKS:
            report["benchmarks"][name] = run_one(name, args.quick, Path(tmp))
            Path(args.json).write_text(json.dumps(report, indent=2))
    failed = [n for n, e in report["benchmarks"].items() if e["exit_code"] != 0]
    print(
        f"\nwrote {args.json}: {len(report['benchmarks']) - len(failed)} benchmark(s) ok"
        + (f", FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
