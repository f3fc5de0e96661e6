"""Command jitter and image -> command latency of the inference node at 30 Hz, on an idle and
on a loaded machine, side by side (targets: jitter p99 < 5 ms idle, < 15 ms loaded).

    .venv/bin/python bench/control_jitter.py [--rate 30] [--seconds 20] [--checkpoint DIR]
                                             [--priority 50] [--json out.json]

The inference node runs as its own process over real DDS (bench/deploy_harness.py): this
process publishes 640x480 camera images at 30 Hz and joint states at 100 Hz, and records
every JointTrajectory the node publishes with its DDS source time stamp (when the node
published it, so this process's own delays do not count). Conditions, one node each:

    idle            nothing else started by this script (other users of the machine are
                    not stopped: the load average is printed)
    loaded          two CPU-bound processes, one per core of a 2-core machine (as many as
                    --busy says), spinning for the whole measurement
    ... +FIFO       the same with the node's control_priority (SCHED_FIFO) set to --priority,
                    where the OS allows it (the node says when it does not)

Each condition runs with the node's `wait_for_frame` off and then on (`+wait`: each policy
call waits for the next camera frame once its period is up), unless --frame-wait says one.

Figures: command jitter = |interval between published commands - 1/rate| (p50, p99, max),
and image -> command latency (the node's own measure: camera capture to the first command
that uses the chunk computed from it; p50, p99; target: one inference period + 20 ms).
Without --checkpoint the node runs a mean-trajectory baseline (no network); give a trained
checkpoint to put a model's inference beside the control loop.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from deploy_harness import Session, baseline_checkpoint, percentiles, write_json

TARGETS_MS = {"idle": 5.0, "loaded": 15.0}


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def measure(ckpt: Path, *, rate: float, seconds: float, priority: int, busy: int, inference_rate: float,
            wait_for_frame: bool = True) -> dict:
    from trajectory_msgs.msg import JointTrajectory

    from crane_x7_vla import robot
    from crane_x7_vla.ros import msgs

    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    session = Session(image_size=(640, 480))
    published: list[int] = []
    session.node.create_subscription(
        JointTrajectory, robot.ARM_TRAJECTORY_TOPIC, lambda m, info: published.append(info["source_timestamp"]),
        msgs.STATE_QOS)
    try:
        session.start_node(model_path=str(ckpt), control_rate=rate, inference_rate=inference_rate, autostart=True,
                           use_gripper=False, max_joint_velocity=1.0, control_priority=priority, cpu_threads=1,
                           wait_for_frame=wait_for_frame)
        session.wait_running(timeout=300)
        for p in spinners:
            p.start()
        time.sleep(1.0)  # the spinners at full speed
        load_start = os.getloadavg()[0]
        t0 = time.time_ns()
        time.sleep(seconds)
        t1 = time.time_ns()
        diagnostics = session.node.diagnostics[-1]
        load_end = os.getloadavg()[0]
    finally:
        stop.set()
        for p in spinners:
            p.join(5)
        session.close()
    output = session.proc.stdout.read() if session.proc is not None and session.proc.stdout else ""
    stamps = np.array([s for s in published if t0 <= s <= t1], dtype=np.int64)
    intervals = np.diff(np.sort(stamps)) * 1e-6
    latency = diagnostics["latency_ms"].get("image_to_command_ms") or {}
    return {
        "commands": int(len(stamps)),
        "rate_hz": float(len(stamps) / seconds),
        "jitter_ms": percentiles(np.abs(intervals - 1e3 / rate)),
        "image_to_command_ms": latency,
        "inference_ms": diagnostics["latency_ms"].get("inference_ms") or {},
        "stages_ms": diagnostics["latency_ms"],
        "control_late_ms": diagnostics.get("control_late_ms") or {},
        "counts": diagnostics.get("counts") or {},
        "load_average": [load_start, load_end],
        "fifo_refused": "SCHED_FIFO refused" in output,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=30.0, help="control_rate (Hz)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement time per condition")
    ap.add_argument("--checkpoint", help="checkpoint directory (default: a mean-trajectory baseline)")
    ap.add_argument("--inference-rate", type=float, default=10.0)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes of the loaded condition")
    ap.add_argument("--priority", type=int, default=0,
                    help="also run both conditions with control_priority (SCHED_FIFO) set to this; 0: not")
    ap.add_argument("--frame-wait", choices=("on", "off", "both"), default="both",
                    help="the node's wait_for_frame in each condition; both: each condition without, then with "
                         "(`+wait`)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    ckpt = Path(args.checkpoint) if args.checkpoint else baseline_checkpoint()
    conditions = [("idle", 0, 0), ("loaded", args.busy, 0)]
    if args.priority > 0:
        conditions += [("idle+FIFO", 0, args.priority), ("loaded+FIFO", args.busy, args.priority)]
    waits = {"on": [True], "off": [False], "both": [False, True]}[args.frame_wait]
    results = {}
    for name, busy, priority in conditions:
        for wait in waits:
            label = name + ("" if args.frame_wait != "both" else "+wait" if wait else "")
            print(f"== {label}: {busy} busy process(es), control_priority {priority}, wait_for_frame {wait}, "
                  f"{args.seconds:g} s", flush=True)
            results[label] = measure(ckpt, rate=args.rate, seconds=args.seconds, priority=priority, busy=busy,
                                     inference_rate=args.inference_rate, wait_for_frame=wait)
    period = 1e3 / args.rate
    names = list(results)
    print(f"\ncontrol_rate {args.rate:g} Hz (period {period:.2f} ms), inference {args.inference_rate:g} Hz, "
          f"policy {'baseline (mean trajectory)' if not args.checkpoint else args.checkpoint}, "
          f"{os.cpu_count()} cores")
    rows = [
        ("commands/s", lambda r: f"{r['rate_hz']:.2f}"),
        ("jitter p50 ms", lambda r: f"{r['jitter_ms'].get('p50', float('nan')):.2f}"),
        ("jitter p99 ms", lambda r: f"{r['jitter_ms'].get('p99', float('nan')):.2f}"),
        ("jitter max ms", lambda r: f"{r['jitter_ms'].get('max', float('nan')):.2f}"),
        ("image->cmd p50 ms", lambda r: f"{r['image_to_command_ms'].get('p50', float('nan')):.1f}"),
        ("image->cmd p99 ms", lambda r: f"{r['image_to_command_ms'].get('p99', float('nan')):.1f}"),
        ("  delivery p99 ms", lambda r: f"{r['stages_ms'].get('image_delivery_ms', {}).get('p99', float('nan')):.1f}"),
        ("  image wait p99 ms", lambda r: f"{r['stages_ms'].get('image_wait_ms', {}).get('p99', float('nan')):.1f}"),
        ("  inference p99 ms", lambda r: f"{r['inference_ms'].get('p99', float('nan')):.1f}"),
        ("  publish p99 ms", lambda r: f"{r['stages_ms'].get('publish_ms', {}).get('p99', float('nan')):.1f}"),
        ("tick late p99 ms", lambda r: f"{r['control_late_ms'].get('p99', float('nan')):.2f}"),
        ("slots missed", lambda r: f"{r['counts'].get('control_slots_missed', 0)}"),
        ("load avg (1 min)", lambda r: f"{r['load_average'][0]:.1f}-{r['load_average'][1]:.1f}"),
    ]
    print(f"{'':20}" + "".join(f"{n:>17}" for n in names))
    for label, fn in rows:
        print(f"{label:20}" + "".join(f"{fn(results[n]):>17}" for n in names))
    base = results[names[0]]["jitter_ms"].get("p99")
    if base:
        print(f"{'p99 jitter / idle':20}" + "".join(
            f"{results[n]['jitter_ms'].get('p99', float('nan')) / base:>16.2f}x" for n in names))
    verdicts = []
    for n in names:
        target = TARGETS_MS["loaded" if n.startswith("loaded") else "idle"]
        p99 = results[n]["jitter_ms"].get("p99", float("inf"))
        results[n]["target_p99_ms"] = target
        results[n]["target_met"] = bool(p99 < target)
        verdicts.append(f"{n} p99 {p99:.2f} < {target:g} ms: {'met' if p99 < target else 'NOT met'}"
                        f"{' (SCHED_FIFO refused)' if results[n]['fifo_refused'] else ''}")
    bound = 1e3 / args.inference_rate + 20.0  # one inference period + 20 ms
    for n in names:
        p99 = results[n]["image_to_command_ms"].get("p99", float("inf"))
        results[n]["image_to_command_target_ms"] = bound
        verdicts.append(f"{n} image->cmd p99 {p99:.0f} < {bound:.0f} ms: {'met' if p99 < bound else 'NOT met'}")
    print("targets: " + "; ".join(verdicts))
    write_json(args.json, {"control_rate_hz": args.rate, "seconds": args.seconds, "conditions": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
