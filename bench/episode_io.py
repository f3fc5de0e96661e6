"""Episode writer and reader throughput on one core.

Writer: steps/s with two 640x480 cameras (JPEG encoding included); target >= 10x the
30 Hz recording rate. Reader: decoded 224x224 training samples/s, side by side with
tf.data reading and decoding the same files (tf.data runs in a subprocess, pinned to
one core like ours); target >= 1.5x tf.data.

    .venv/bin/python bench/episode_io.py [--steps 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import EpisodeWriter, iter_steps, list_episodes, schema
from crane_x7_vla.episode.synthetic import joint_path
from crane_x7_vla.preprocess import ImageSpec, prepare_image


def pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def scene(rng, w=640, h=480):
    """Camera-like frames: smooth shading plus sensor noise (JPEG cost close to real)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 0.3) % 255, (y * 0.4) % 255, ((x + y) * 0.2) % 255], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def bench_writer(root: Path, steps: int) -> dict:
    rng = np.random.default_rng(0)
    frames = [scene(rng) for _ in range(8)]
    path = joint_path(rng, steps)
    writer = EpisodeWriter(root, fps=30, instruction="bench", cameras={"primary": (640, 480), "wrist": (640, 480)})
    t0 = time.perf_counter()
    for t, q in enumerate(path):
        writer.add_step(q, {"primary": frames[t % 8], "wrist": frames[(t + 3) % 8]}, timestamp_ns=t + 1)
    writer.close()
    dt = time.perf_counter() - t0
    return {
        "writer_steps_per_s": steps / dt,
        "writer_target_steps_per_s": 300.0,
        "writer_realtime_factor_30hz": steps / dt / 30,
    }


def bench_reader(root: Path, spec: ImageSpec) -> dict:
    refs = list_episodes(root)
    t0 = time.perf_counter()
    n = 0
    for ref in refs:
        for step in iter_steps(ref.path):
            for cam in schema.cameras_in(step):
                prepare_image(step[schema.image_key(cam)][0], spec)
                n += 1
            _ = step[schema.KEY_PROPRIO], step[schema.KEY_ACTION]
    dt = time.perf_counter() - t0
    return {"reader_samples_per_s": n / dt, "reader_samples": n}


TF_READER = """
import os, sys, time
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
files = {files!r}
spec = {{"observation/proprio": tf.io.FixedLenFeature([8], tf.float32),
         "action": tf.io.FixedLenFeature([8], tf.float32),
         "observation/image_primary": tf.io.FixedLenFeature([], tf.string),
         "observation/image_wrist": tf.io.FixedLenFeature([], tf.string)}}
side = {side}
def parse(raw):
    ex = tf.io.parse_single_example(raw, spec)
    out = []
    for key in ("observation/image_primary", "observation/image_wrist"):
        img = tf.io.decode_jpeg(ex[key], channels=3)
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        ch = tf.cast(tf.cast(h, tf.float32) * side, tf.int32)
        cw = tf.cast(tf.cast(w, tf.float32) * side, tf.int32)
        img = tf.image.crop_to_bounding_box(img, (h - ch) // 2, (w - cw) // 2, ch, cw)
        out.append(tf.image.resize(img, ({h}, {w}), method="area"))
    return out, ex["action"]
ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=1)
for _ in ds.take(4): pass
t0 = time.perf_counter(); n = 0
for imgs, a in ds:
    n += 2
dt = time.perf_counter() - t0
print(n / dt)
"""


def bench_tf_reader(root: Path, spec: ImageSpec) -> float | None:
    files = [str(r.record_path) for r in list_episodes(root)]
    code = TF_READER.format(files=files, side=float(np.sqrt(spec.crop_scale)), h=spec.height, w=spec.width)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return None
    return float(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps per benchmark episode")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    pin_one_core()
    spec = ImageSpec(224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        figures = bench_writer(root, args.steps)
        figures.update(bench_reader(root, spec))
        tf_rate = bench_tf_reader(root, spec)
    figures["tfdata_samples_per_s"] = tf_rate
    figures["reader_vs_tfdata"] = figures["reader_samples_per_s"] / tf_rate if tf_rate else None
    print(
        f"writer : {figures['writer_steps_per_s']:8.1f} steps/s with 2 x 640x480 JPEG "
        f"({figures['writer_realtime_factor_30hz']:.1f}x the 30 Hz rate; target 10x)"
    )
    print(f"reader : {figures['reader_samples_per_s']:8.1f} decoded 224x224 samples/s (one core)")
    if tf_rate:
        print(
            f"tf.data: {tf_rate:8.1f} decoded 224x224 samples/s (one core) -> ours is "
            f"{figures['reader_vs_tfdata']:.2f}x (target 1.5x)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
