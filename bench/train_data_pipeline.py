"""Training data pipeline vs. the trainer: does the trainer ever wait on data?

1. Pipeline alone: samples/s that `training.data.BatchStream` delivers (JPEG decode of
   640x480 camera-like frames, random crop, resize, colour jitter, collate) at the tiny
   preset's input size and at OpenVLA's 224x224.
2. The real OpenVLA trainer with the tiny preset on CPU (`backends.openvla.trainer.train`):
   step time, samples/s consumed and the share of each step spent waiting for the next
   batch (from its metrics.jsonl). Target: < 5 %.
3. Headroom for a 7B step: pipeline samples/s at 224x224 divided by what an OpenVLA-7B
   LoRA step consumes. The 7B step time is an ASSUMPTION (default 1.5 s per step at
   batch 16 on one A100-class GPU, i.e. ~10.7 samples/s), not measured here.

    .venv/bin/python bench/train_data_pipeline.py [--steps 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode import EpisodeWriter
from crane_x7_vla.episode.stats import write_statistics
from crane_x7_vla.preprocess import ImageSpec
from crane_x7_vla.training.data import BatchStream, load_training_data


def camera_frame(rng, t: int, w=640, h=480) -> np.ndarray:
    """Shaded background + a moving square + sensor noise: JPEG cost close to a real camera."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 0.3) % 255, (y * 0.4) % 255, ((x + y) * 0.2) % 255], -1)
    cx, cy = 100 + 8 * t, 200
    img[cy - 30 : cy + 30, cx - 30 : cx + 30] = (200, 40, 40)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def write_dataset(root: Path, episodes: int, steps: int) -> None:
    rng = np.random.default_rng(0)
    for e in range(episodes):
        w = EpisodeWriter(root, fps=10.0, instruction="reach the red cube", cameras={"primary": (640, 480)})
        q0 = robot.home_state()
        for t in range(steps):
            q = q0.copy()
            q[:7] += 0.01 * t * (e + 1)
            w.add_step(robot.clamp_to_limits(q), {"primary": camera_frame(rng, t)})
        w.close(success=True)
    write_statistics(root)


def pipeline_rate(data, size: int, batch: int, workers: int, batches: int) -> float:
    spec = ImageSpec(size, size)
    with BatchStream(
        data.train,
        cameras=data.cameras,
        spec=spec,
        horizon=1,
        batch_size=batch,
        seed=0,
        num_workers=workers,
        prefetch=4,
    ) as stream:
        next(stream)  # start-up
        t0 = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * batch / (time.perf_counter() - t0)


def trainer_run(root: Path, out: Path, steps: int, batch: int, size: int, workers: int) -> dict:
    from crane_x7_vla.backends.openvla.trainer import train
    from crane_x7_vla.training.config import TrainConfig
    from crane_x7_vla.training.metrics import read_metrics

    cfg = TrainConfig(
        backend="openvla",
        model="tiny",
        data_root=str(root),
        output_dir=str(out),
        image_size=f"{size}x{size}",
        batch_size=batch,
        max_steps=steps,
        save_steps=10 * steps,
        logging_steps=1,
        eval_samples=8,
        learning_rate=2e-3,
        device="cpu",
        num_workers=workers,
        val_ratio=0.0,
    )
    train(cfg)
    rows = [r for r in read_metrics(out) if "perf/step_time_s" in r][3:]  # skip warm-up steps
    step = np.array([r["perf/step_time_s"] for r in rows])
    wait = np.array([r["perf/data_wait_share"] for r in rows])
    return {
        "steps_measured": len(rows),
        "step_seconds_median": float(np.median(step)),
        "samples_per_second_consumed": float(batch / np.median(step)),
        "data_wait_share_mean": float(wait.mean()),
        "data_wait_share_max": float(wait.max()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--steps-per-episode", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40, help="trainer steps to time")
    ap.add_argument("--batch-size", type=int, default=8, help="tiny-preset batch")
    ap.add_argument("--image-size", type=int, default=64, help="tiny-preset input side")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--assumed-7b-step-seconds",
        type=float,
        default=1.5,
        help="ASSUMED OpenVLA-7B LoRA step time at batch 16 (A100-class GPU); not measured here",
    )
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, args.episodes, args.steps_per_episode)
        data = load_training_data(root, val_ratio=0.0)
        tiny_rate = pipeline_rate(data, args.image_size, args.batch_size, args.workers, 30)
        big_rate = pipeline_rate(data, 224, 16, args.workers, 12)
        run = trainer_run(root, Path(tmp) / "run", args.steps, args.batch_size, args.image_size, args.workers)

    consumed_7b = 16 / args.assumed_7b_step_seconds
    result = {
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "source_frames": "640x480 JPEG q90",
        "pipeline_workers": args.workers,
        f"pipeline_samples_per_second_{args.image_size}px": round(tiny_rate, 1),
        "pipeline_samples_per_second_224px": round(big_rate, 1),
        "tiny_trainer": {k: round(v, 4) if isinstance(v, float) else v for k, v in run.items()},
        "tiny_batch_size": args.batch_size,
        "tiny_headroom_factor": round(tiny_rate / run["samples_per_second_consumed"], 2),
        "assumed_7b_step_seconds_at_batch_16": args.assumed_7b_step_seconds,
        "assumed_7b_samples_per_second": round(consumed_7b, 2),
        "headroom_factor_7b": round(big_rate / consumed_7b, 1),
        "target_data_wait_share": 0.05,
        "meets_target": bool(run["data_wait_share_mean"] < 0.05),
    }
    print(f"data pipeline ({result['cpu_cores']} cores, {args.workers} workers, 640x480 JPEG sources):")
    print(f"  {tiny_rate:8.1f} samples/s at {args.image_size}x{args.image_size}, {big_rate:8.1f} samples/s at 224x224")
    print(
        f"tiny preset trainer on CPU (batch {args.batch_size}, {args.image_size}px): "
        f"{run['step_seconds_median'] * 1000:.0f} ms/step median, {run['samples_per_second_consumed']:.1f} samples/s"
    )
    print(
        f"  waiting on data: {100 * run['data_wait_share_mean']:.2f} % of step time on average "
        f"(max {100 * run['data_wait_share_max']:.1f} %), "
        f"target < 5 %: {'met' if result['meets_target'] else 'NOT met'}"
    )
    print(f"  pipeline / trainer headroom: {result['tiny_headroom_factor']}x")
    print(
        f"7B step (ASSUMED {args.assumed_7b_step_seconds} s at batch 16 = {consumed_7b:.1f} samples/s): "
        f"224px pipeline headroom {result['headroom_factor_7b']}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
