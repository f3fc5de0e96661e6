"""Export episodes as an RLDS dataset in TFDS's on-disk format.

The output folder is a TFDS data directory holding one dataset, ``crane_x7`` version
1.0.0: what OpenVLA's and Octo's data pipelines open with ``tfds.builder("crane_x7",
data_dir=OUT)`` (``tfds.builder_from_directory(OUT/crane_x7/1.0.0)`` reads it too)::

    OUT/
      .crane_x7_vla_export.json            marks the folder as an export of ours (--overwrite)
      crane_x7/1.0.0/
        dataset_info.json, features.json   written by TFDS from the feature spec below
        crane_x7-train.tfrecord-00000 ...  one serialized episode per record
        dataset_statistics.json            action/proprio statistics at the top level, as
                                           OpenVLA's loader reads a statistics file (with
                                           num_transitions, num_trajectories, fingerprint)

One RLDS episode per recorded episode::

    steps: Dataset of
      observation/image_<camera>   Image (H, W, 3) uint8, JPEG (the recorded bytes, RGB)
      observation/state            float32[8] 7 arm joints + gripper, rad
      action                       float32[8] absolute joint targets (the next state)
      language_instruction         Text
      is_first, is_last            bool
      is_terminal                  bool: the last step of an episode not marked failed
      reward                       float32: 1 on the last step of a successful episode
      discount                     float32: 1
    episode_metadata:
      file_path                    Text: the source episode folder
      success                      int32: 1 success, 0 failure, -1 unknown
      fps                          float32

TensorFlow is imported only inside the functions of this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import schema
from crane_x7_vla.episode.export_common import check_output, export_folder, load_for_export, plan_export
from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.episode.stats import compute_statistics

DATASET_NAME = schema.DATASET_NAME
VERSION = "1.0.0"
SPLIT = "train"
TARGET_SHARD_BYTES = 256 * 1024 * 1024


def image_feature_name(camera: str) -> str:
    return f"image_{camera}"


def features_spec(cameras: dict[str, tuple[int, int]]):
    """The TFDS FeaturesDict of one episode."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    observation = {
        image_feature_name(cam): tfds.features.Image(shape=(h, w, 3), dtype=tf.uint8, encoding_format="jpeg")
        for cam, (w, h) in cameras.items()
    }
    observation["state"] = tfds.features.Tensor(shape=(schema.STATE_DIM,), dtype=tf.float32)
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": observation,
                    "action": tfds.features.Tensor(shape=(schema.STATE_DIM,), dtype=tf.float32),
                    "language_instruction": tfds.features.Text(),
                    "is_first": tfds.features.Scalar(dtype=tf.bool),
                    "is_last": tfds.features.Scalar(dtype=tf.bool),
                    "is_terminal": tfds.features.Scalar(dtype=tf.bool),
                    "reward": tfds.features.Scalar(dtype=tf.float32),
                    "discount": tfds.features.Scalar(dtype=tf.float32),
                }
            ),
            "episode_metadata": {
                "file_path": tfds.features.Text(),
                "success": tfds.features.Scalar(dtype=tf.int32),
                "fps": tfds.features.Scalar(dtype=tf.float32),
            },
        }
    )


def episode_example(ep, cameras) -> dict:
    """One RLDS episode (the input of FeaturesDict.encode_example) from EpisodeData."""
    n = len(ep)
    success = ep.meta.success if ep.meta is not None else None
    completed = success is not False
    steps = []
    for t in range(n):
        last = t == n - 1
        observation = {image_feature_name(cam): ep.images[cam][t] for cam in cameras}
        observation["state"] = ep.proprio[t].astype(np.float32)
        steps.append(
            {
                "observation": observation,
                "action": ep.action[t].astype(np.float32),
                "language_instruction": ep.instruction,
                "is_first": t == 0,
                "is_last": last,
                "is_terminal": last and completed,
                "reward": 1.0 if (last and success is True) else 0.0,
                "discount": 1.0,
            }
        )
    return {
        "steps": steps,
        "episode_metadata": {
            "file_path": str(ep.path.resolve()),
            "success": -1 if success is None else int(bool(success)),
            "fps": float(ep.meta.fps) if ep.meta is not None else 0.0,
        },
    }


def export_rlds(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    fps: float | None = None,
    episodes_per_shard: int | None = None,
    progress: bool = True,
) -> dict:
    """Write every episode under `root` as an RLDS/TFDS dataset into `out`; returns a summary.

    The dataset is written into a hidden folder beside `out` and moved into place when it is
    complete (export_common.export_folder): a failed export leaves no half-written `out`."""
    if episodes_per_shard is not None and episodes_per_shard < 1:
        raise DatasetError(f"--episodes-per-shard must be at least 1 (got {episodes_per_shard})")
    check_output(out, overwrite=overwrite, source=root)
    plan = plan_export(root, fps=fps)
    with export_folder(out, overwrite=overwrite, source=root, fmt="rlds") as work:
        steps, stats = _write_rlds(dataset_dir(work), plan, episodes_per_shard, progress)
    out = Path(out)
    shards = sorted(p.name for p in dataset_dir(out).iterdir() if ".tfrecord-" in p.name)
    return {
        "format": "rlds",
        "out": str(out),
        "dataset": str(dataset_dir(out)),
        "episodes": stats["num_episodes"],
        "steps": steps,
        "cameras": {c: f"{w}x{h}" for c, (w, h) in plan.cameras.items()},
        "shards": shards,
        "statistics": str(dataset_dir(out) / schema.STATS_FILE),
        "fingerprint": stats["fingerprint"],
    }


def dataset_dir(data_dir: str | os.PathLike) -> Path:
    """Where TFDS keeps the dataset inside an export's data directory: crane_x7/1.0.0."""
    return Path(data_dir) / DATASET_NAME / VERSION


def _write_rlds(out: Path, plan, episodes_per_shard: int | None, progress: bool) -> tuple[int, dict]:
    """The TFDS files and the statistics of `plan`'s episodes in the dataset folder `out`;
    (steps, statistics)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import sequential_writer
    from tqdm import tqdm

    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(name=DATASET_NAME, version=VERSION, data_dir=str(out), module_name=""),
        description=(
            "CRANE-X7 episodes (RLDS). observation/state and action: 7 arm joints in controller order + "
            "gripper finger_a, rad; action = the next step's state (absolute joint targets). "
            f"Images: {', '.join(f'{c} {w}x{h}' for c, (w, h) in plan.cameras.items())}, RGB. "
            f"Recorded at {plan.fps:g} Hz."
        ),
        features=features_spec(plan.cameras),
        homepage="",
    )
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    steps = 0
    loaded = []
    for ref in tqdm(plan.refs, desc="export rlds", unit="episode", disable=not progress):
        ep = load_for_export(ref, plan)
        if writer is None:
            per_shard = episodes_per_shard or _episodes_per_shard(ep)
            writer = sequential_writer.SequentialWriter(info, max_examples_per_shard=per_shard, overwrite=True)
            writer.initialize_splits([SPLIT])
        writer.add_examples({SPLIT: [episode_example(ep, plan.cameras)]})
        steps += len(ep)
        ep.images = {}  # keep only arrays for the statistics
        loaded.append(ep)
    writer.close_all()
    stats = compute_statistics(loaded)
    (out / schema.STATS_FILE).write_text(json.dumps(stats, indent=2))
    return steps, stats


def _episodes_per_shard(ep) -> int:
    size = sum(len(f) for frames in ep.images.values() for f in frames) + len(ep) * 200
    return max(1, int(TARGET_SHARD_BYTES // max(size, 1)))


def load_rlds(out: str | os.PathLike, split: str = SPLIT):
    """The exported dataset through TFDS's own loader, by name in the data directory `out`
    as OpenVLA opens it (tf.data of episodes)."""
    import tensorflow_datasets as tfds

    return tfds.builder(DATASET_NAME, data_dir=str(Path(out))).as_dataset(split=split)
