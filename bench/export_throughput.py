"""Export throughput (steps/s) for each format on one core.

Synthetic episodes with camera-like pictures (smooth shading + noise, so JPEG and
video cost is close to real footage) are exported as RLDS (TFDS TFRecords, the
recorded JPEGs copied through), as LeRobot v3.0 with AV1 (LeRobot's default) and with
H.264 (every frame decoded from JPEG and encoded to video).

    .venv/bin/python bench/export_throughput.py [--episodes 4 --steps 100 --size 224x224 --cameras 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from crane_x7_vla.episode import EpisodeWriter
from crane_x7_vla.episode.synthetic import joint_path
from crane_x7_vla.preprocess import parse_image_size


def pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def scene(rng, w, h, shift):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([((x + shift) * 0.8) % 255, (y * 0.9) % 255, ((x + y + shift) * 0.5) % 255], -1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def make_dataset(root: Path, episodes: int, steps: int, size: tuple[int, int], cameras: int) -> None:
    rng = np.random.default_rng(0)
    names = ["primary", "wrist", "secondary"][:cameras]
    w, h = size
    for e in range(episodes):
        writer = EpisodeWriter(root, fps=10, instruction=f"bench task {e % 2}", cameras={n: size for n in names})
        for t, q in enumerate(joint_path(rng, steps)):
            writer.add_step(q, {n: scene(rng, w, h, t * 2 + i * 17) for i, n in enumerate(names)})
        writer.close(success=True)


def timed(fn, root, out, **kw) -> tuple[float, dict]:
    t0 = time.perf_counter()
    summary = fn(root, out, progress=False, **kw)
    return time.perf_counter() - t0, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", default="224x224", help="camera image size WxH (default 224x224)")
    parser.add_argument("--cameras", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    pin_one_core()
    size = parse_image_size(args.size)

    t0 = time.perf_counter()
    import tensorflow  # noqa: F401  (a one-off start-up cost, reported apart from the export)
    import tensorflow_datasets  # noqa: F401

    tf_import_s = time.perf_counter() - t0

    from crane_x7_vla.episode.lerobot import export_lerobot
    from crane_x7_vla.episode.rlds import export_rlds

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "episodes", args.episodes, args.steps, size, args.cameras)
        total = args.episodes * args.steps
        runs = {
            "rlds": (export_rlds, {}),
            "lerobot_av1": (export_lerobot, {"vcodec": "av1"}),
            "lerobot_h264": (export_lerobot, {"vcodec": "h264"}),
        }
        for name, (fn, kw) in runs.items():
            seconds, summary = timed(fn, tmp / "episodes", tmp / name, **kw)
            assert summary["steps"] == total
            size_mb = sum(p.stat().st_size for p in (tmp / name).rglob("*") if p.is_file()) / 1024**2
            results[name] = {
                "seconds": round(seconds, 3),
                "steps_per_s": round(total / seconds, 1),
                "output_mb": round(size_mb, 2),
            }
    report = {
        "benchmark": "export_throughput",
        "episodes": args.episodes,
        "steps": args.episodes * args.steps,
        "cameras": args.cameras,
        "image_size": args.size,
        "cores": 1,
        "machine": platform.processor() or platform.machine(),
        "tensorflow_import_s": round(tf_import_s, 2),
        "results": results,
    }
    print(f"export throughput, one core, {report['steps']} steps, {args.cameras} camera(s) {args.size}:")
    for name, r in results.items():
        print(f"  {name:14s} {r['steps_per_s']:8.1f} steps/s  ({r['seconds']:.2f} s, {r['output_mb']:.1f} MB)")
    print(f"  (importing TensorFlow for the RLDS export takes {tf_import_s:.1f} s once per run, not counted above)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
