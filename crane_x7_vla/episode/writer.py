"""Atomic episode writing.

An episode is written into a hidden ``.episode_NNNN_<time>.partial`` directory, one
record per step, flushed as it goes. Only `close()` writes the metadata and renames
the directory to its final name, so:

* a crash (even SIGKILL) never touches episodes that were already closed;
* a crashed episode stays visibly ``.partial`` and `recover_partial` turns its
  complete records into a normal episode (marked ``extra.recovered``);
* nothing ever looks like a finished episode while it is truncated.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import jpeg, schema, tfrecord
from crane_x7_vla.episode.schema import CameraInfo, EpisodeMeta


def _next_index(root: Path) -> int:
    highest = -1
    for entry in root.iterdir() if root.exists() else ():
        name = entry.name.lstrip(".").removesuffix(schema.PARTIAL_SUFFIX)
        match = schema.EPISODE_DIR_RE.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_features(
    *,
    proprio,
    action,
    timestep: int,
    instruction: str,
    images: dict[str, bytes],
    timestamp_ns: int | None = None,
    image_timestamps_ns: dict[str, int] | None = None,
) -> dict:
    """The tf.train.Example features of one step (see schema for the keys)."""
    proprio = np.asarray(proprio, dtype=np.float32).reshape(-1)
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    if proprio.shape != (schema.STATE_DIM,):
        raise ValueError(f"observation/proprio must hold {schema.STATE_DIM} values, got {proprio.size}")
    if action.shape != (schema.STATE_DIM,):
        raise ValueError(f"action must hold {schema.STATE_DIM} values, got {action.size}")
    features = {
        schema.KEY_PROPRIO: proprio,
        schema.KEY_ACTION: action,
        schema.KEY_TIMESTEP: [int(timestep)],
        schema.KEY_INSTRUCTION: instruction.encode("utf-8"),
        schema.KEY_DATASET: schema.DATASET_NAME.encode(),
    }
    if timestamp_ns is not None:
        features[schema.KEY_TIMESTAMP] = [int(timestamp_ns)]
    for camera, data in images.items():
        features[schema.image_key(camera)] = data
        if image_timestamps_ns and camera in image_timestamps_ns:
            features[schema.image_timestamp_key(camera)] = [int(image_timestamps_ns[camera])]
    return features


class EpisodeWriter:
    """Write one episode step by step; `close()` makes it visible, `discard()` drops it.

    ``action`` of each step defaults to the NEXT step's proprio (absolute joint
    targets); the last step repeats its own. Steps are therefore written one step
    late: a crash loses at most the newest step.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        fps: float,
        instruction: str,
        cameras: dict[str, tuple[int, int] | CameraInfo],
        task: str = "",
        seed: int | None = None,
        jpeg_quality: int = 90,
        extra: dict | None = None,
        start_time: datetime | None = None,
    ) -> None:
        """``start_time``: when the episode was recorded (an imported recording's own time);
        the folder name and the metadata's start_time carry it. Default: now."""
        if not instruction:
            raise ValueError("an episode needs a language instruction")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        now = (start_time or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self.index = _next_index(self.root)
        self.name = schema.episode_dir_name(self.index, now.strftime("%Y%m%d_%H%M%S"))
        self.partial_dir = self.root / f".{self.name}{schema.PARTIAL_SUFFIX}"
        self.partial_dir.mkdir()
        cams = {
            n: c if isinstance(c, CameraInfo) else CameraInfo(width=int(c[0]), height=int(c[1]))
            for n, c in cameras.items()
        }
        self.meta = EpisodeMeta(
            fps=float(fps),
            language_instruction=instruction,
            cameras=cams,
            start_time=now.isoformat(),
            task=task,
            seed=seed,
            extra=dict(extra or {}),
        )
        # The metadata of a partial episode says so, for anyone who finds it after a crash.
        (self.partial_dir / schema.META_FILE).write_text(self.meta.to_json())
        self.jpeg_quality = jpeg_quality
        self._file = open(self.partial_dir / schema.RECORD_FILE, "wb")
        self._pending: dict | None = None
        self._count = 0
        self._t0 = time.monotonic()
        self.closed = False

    @property
    def num_steps(self) -> int:
        return self._count + (self._pending is not None)

    def add_step(
        self,
        proprio,
        images: dict[str, np.ndarray | bytes],
        *,
        timestamp_ns: int | None = None,
        image_timestamps_ns: dict[str, int] | None = None,
        action=None,
    ) -> None:
        """Append a step. Images are RGB uint8 arrays (encoded here) or JPEG bytes."""
        if self.closed:
            raise RuntimeError(f"episode {self.name} is already closed")
        missing = set(self.meta.cameras) - set(images)
        if missing:
            raise ValueError(f"step {self.num_steps} lacks images from camera(s) {sorted(missing)}")
        proprio = np.asarray(proprio, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(proprio)):
            raise ValueError(f"step {self.num_steps}: observation/proprio has NaN or inf: {proprio}")
        encoded = {
            cam: data if isinstance(data, (bytes, bytearray)) else jpeg.encode(data, self.jpeg_quality)
            for cam, data in images.items()
        }
        if self._pending is not None:
            self._flush_pending(next_proprio=proprio)
        self._pending = dict(
            proprio=proprio,
            images=encoded,
            timestamp_ns=timestamp_ns,
            image_timestamps_ns=image_timestamps_ns,
            action=None if action is None else np.asarray(action, dtype=np.float32),
        )

    def _flush_pending(self, next_proprio) -> None:
        p = self._pending
        action = p["action"] if p["action"] is not None else next_proprio
        features = step_features(
            proprio=p["proprio"],
            action=action,
            timestep=self._count,
            instruction=self.meta.language_instruction,
            images=p["images"],
            timestamp_ns=p["timestamp_ns"],
            image_timestamps_ns=p["image_timestamps_ns"],
        )
        self._file.write(tfrecord.frame(tfrecord.encode_example(features)))
        self._file.flush()  # in the OS after every step: survives a killed process
        self._count += 1
        self._pending = None

    def close(self, *, success: bool | None = None, **meta_updates) -> Path:
        """Write the last step, the metadata, and move the episode into place."""
        if self.closed:
            raise RuntimeError(f"episode {self.name} is already closed")
        if self._pending is not None:
            self._flush_pending(next_proprio=self._pending["proprio"])
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.closed = True
        if self._count == 0:
            shutil.rmtree(self.partial_dir)
            raise ValueError(f"episode {self.name} has no steps; nothing was saved")
        self.meta.num_steps = self._count
        self.meta.success = success
        elapsed = time.monotonic() - self._t0
        if self.meta.achieved_fps is None and elapsed > 0 and self._count > 1:
            self.meta.achieved_fps = round((self._count - 1) / elapsed, 3)
        for key, value in meta_updates.items():
            if not hasattr(self.meta, key):
                raise TypeError(f"unknown episode metadata field '{key}'")
            setattr(self.meta, key, value)
        tmp = self.partial_dir / (schema.META_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(self.meta.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.partial_dir / schema.META_FILE)
        final = self.root / self.name
        os.rename(self.partial_dir, final)
        _fsync_dir(self.root)
        return final

    def discard(self) -> None:
        """Drop the episode being written; nothing of it remains on disk."""
        if not self.closed:
            self._file.close()
            self.closed = True
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            if exc_type is None:
                self.close()
            else:
                self._file.close()  # leave the .partial directory for recovery
                self.closed = True


def recover_partial(partial_dir: str | os.PathLike) -> Path:
    """Turn a crashed ``.episode_*.partial`` directory into a normal episode.

    Keeps every complete, CRC-valid record, cuts a damaged tail, and marks the
    metadata with ``extra.recovered = true`` and ``success = null``.
    """
    partial_dir = Path(partial_dir)
    if not partial_dir.name.endswith(schema.PARTIAL_SUFFIX):
        raise ValueError(f"{partial_dir} is not a partial episode directory")
    record_path = partial_dir / schema.RECORD_FILE
    scan = tfrecord.scan_records(record_path)
    if not scan.records:
        raise ValueError(f"{partial_dir}: no complete step to recover")
    with open(record_path, "r+b") as f:
        f.truncate(scan.valid_bytes)
    meta = EpisodeMeta.load(partial_dir / schema.META_FILE)
    meta.num_steps = len(scan.records)
    meta.success = None
    meta.extra = dict(meta.extra, recovered=True, damaged_tail=scan.error)
    (partial_dir / schema.META_FILE).write_text(meta.to_json())
    final = partial_dir.parent / partial_dir.name.lstrip(".").removesuffix(schema.PARTIAL_SUFFIX)
    os.rename(partial_dir, final)
    return final
