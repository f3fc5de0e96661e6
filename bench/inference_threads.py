"""Model call time of an OpenVLA checkpoint on the CPU: torch's default threads vs one thread,
on an idle CPU and beside busy cores (as in `crane-x7-vla eval`, where the simulator and the
evaluation runner share the machine with the inference node).

    .venv/bin/python bench/inference_threads.py [--checkpoint DIR] [--calls 20] [--busy 1] [--json out.json]

Everything runs in this one process, side by side: the same policy object, the same
observation, `torch.set_num_threads` switched between the rows. "Busy" cores are processes
spinning in a loop (a stand-in for the simulator's physics and rendering). Without
--checkpoint a tiny checkpoint with the demo's settings (goal tokens, 5-step chunks, 64x64) is
trained for 2 steps on synthetic episodes: the call time depends on the architecture and the
number of decoded tokens, not on the weights.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _spin() -> None:
    while True:
        pass


def tiny_checkpoint() -> Path:
    from crane_x7_vla.episode.stats import write_statistics
    from crane_x7_vla.episode.synthetic import write_synthetic_dataset
    from crane_x7_vla.training.cli import main as train

    root = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    write_synthetic_dataset(root / "data", episodes=4, steps=30, fps=10.0, cameras={"primary": (320, 240)})
    write_statistics(root / "data")
    code = train(["train", "--backend", "openvla", "--model", "tiny", "--data-root", str(root / "data"),
                  "--output-dir", str(root / "train"), "--max-steps", "2", "--batch-size", "2", "--image-size", "64x64",
                  "--no-use-lora", "--cameras", "primary", "--crop-scale", "1.0", "--action-horizon", "5",
                  "--goal-tokens", "--num-workers", "1", "--device", "cpu"])
    if code:
        raise SystemExit(f"training the tiny checkpoint failed (exit {code})")
    return root / "train" / "checkpoint-final"


def time_calls(policy, observation: dict, calls: int) -> dict:
    for _ in range(3):  # warm-up
        policy.predict(observation)
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        policy.predict(observation)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": round(float(np.median(ms)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="an openvla checkpoint directory (default: a tiny one, trained here)")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per row (default 20)")
    ap.add_argument("--busy", type=int, default=1, help="busy cores beside the model in the loaded rows (default 1)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    import torch

    from crane_x7_vla import robot
    from crane_x7_vla.policy.loader import load_policy

    ckpt = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint()
    policy = load_policy(ckpt, "cpu")
    if policy.config.get("backend") != "openvla":
        raise SystemExit(f"{ckpt}: an openvla checkpoint is needed (this one is {policy.config.get('backend')!r})")
    meta = policy.metadata
    width, height = meta.get("image_size") or (64, 64)
    rng = np.random.default_rng(0)
    observation = {"images": {c: rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for c in policy.cameras},
                   "state": robot.home_state(), "instruction": "reach the red cube"}
    default = torch.get_num_threads()
    rows = []
    for busy in (0, args.busy):
        spinners = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            for threads in sorted({default, 1}, reverse=True):
                torch.set_num_threads(threads)
                rows.append({"busy_cores": busy, "threads": threads, **time_calls(policy, observation, args.calls)})
        finally:
            for p in spinners:
                p.terminate()
                p.join()
    torch.set_num_threads(default)
    print(f"model call of {ckpt} ({policy.codec.n_tokens(policy.horizon)} decoded tokens, {width}x{height} input) "
          f"on {os.cpu_count()} CPU cores, {args.calls} calls per row:")
    print(f"{'busy cores':>10} {'threads':>8} {'p50 ms':>8} {'p90 ms':>8}")
    for r in rows:
        print(f"{r['busy_cores']:>10} {r['threads']:>8} {r['p50_ms']:>8} {r['p90_ms']:>8}")
    figures = {"cpu_cores": os.cpu_count(), "default_threads": default, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
