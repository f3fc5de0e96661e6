"""Export episodes as a LeRobotDataset v3.0 (parquet + mp4), without the lerobot package.

Layout (LeRobot's v3.0 conventions: many episodes per file, relational metadata)::

    OUT/
      meta/info.json                 codebase_version "v3.0", fps, features, path templates
      meta/stats.json                per-feature min/max/mean/std/count/q01..q99
      meta/tasks.parquet             task (index) -> task_index
      meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks,
                                     data/chunk_index, data/file_index, dataset_from_index,
                                     dataset_to_index, videos/<key>/{chunk_index,file_index,
                                     from_timestamp,to_timestamp}, stats/<feature>/<stat>
      data/chunk-000/file-000.parquet            one row per frame: observation.state,
                                     action, timestamp, frame_index, episode_index, index, task_index
      videos/observation.images.<camera>/chunk-000/file-000.mp4   one stream per camera

``timestamp`` is frame_index / fps (LeRobot checks that spacing); a frame's position in
its video is from_timestamp + timestamp. Images are decoded from the recorded JPEGs
(RGB) and encoded with PyAV (AV1 by default, as LeRobot records; H.264 on request).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode import jpeg, schema
from crane_x7_vla.episode.export_common import check_output, export_folder, load_for_export, plan_export
from crane_x7_vla.episode.reader import DatasetError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
CODECS = {"av1": "libsvtav1", "h264": "libx264"}
MAX_CRF = {"av1": 63, "h264": 51}  # the encoders' quality scales
DATA_BYTES_PER_FRAME = 2 * 4 * schema.STATE_DIM + 4 + 4 * 8  # parquet size estimate for file roll-over


def video_key(camera: str) -> str:
    return f"observation.images.{camera}"


def next_chunk_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


# ---------------------------------------------------------------- statistics


def vector_stats(values: np.ndarray) -> dict:
    """LeRobot-style statistics of (N, D) values: lists of D numbers, count [N]."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    out = {
        "min": v.min(0).tolist(),
        "max": v.max(0).tolist(),
        "mean": v.mean(0).tolist(),
        "std": v.std(0).tolist(),
        "count": [int(len(v))],
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(v, q, axis=0).tolist()
    return out


def image_stats(frames: list[np.ndarray], max_pixels: int = 100_000) -> dict:
    """Per-channel statistics of RGB frames in [0, 1], shaped (3, 1, 1) as LeRobot stores them.

    Computed on an evenly strided subset of at most `max_pixels` pixels per frame
    sequence (image statistics describe colour ranges; every pixel is not needed).
    """
    h, w = frames[0].shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(len(frames) * h * w / max_pixels))))
    pixels = np.concatenate([f[::stride, ::stride].reshape(-1, 3) for f in frames]).astype(np.float32) / 255.0
    out = {
        "min": pixels.min(0),
        "max": pixels.max(0),
        "mean": pixels.mean(0, dtype=np.float64),
        "std": pixels.std(0, dtype=np.float64),
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(pixels, q, axis=0)
    shaped = {k: v.reshape(3, 1, 1).tolist() for k, v in out.items()}
    shaped["count"] = [len(frames)]
    return shaped


def aggregate_stats(per_episode: list[dict]) -> dict:
    """Dataset statistics from per-episode ones (pooled mean/variance, weighted quantiles)."""
    out = {}
    for key in per_episode[0]:
        entries = [e[key] for e in per_episode]
        counts = np.array([e["count"][0] for e in entries], dtype=np.float64)
        w = counts / counts.sum()
        mean = np.array([e["mean"] for e in entries])
        std = np.array([e["std"] for e in entries])
        shape = (-1,) + (1,) * (mean.ndim - 1)
        total_mean = (w.reshape(shape) * mean).sum(0)
        second = (w.reshape(shape) * (std**2 + (mean - total_mean) ** 2)).sum(0)
        agg = {
            "min": np.min([e["min"] for e in entries], axis=0).tolist(),
            "max": np.max([e["max"] for e in entries], axis=0).tolist(),
            "mean": total_mean.tolist(),
            "std": np.sqrt(second).tolist(),
            "count": [int(counts.sum())],
        }
        for name in QUANTILES:
            agg[name] = (w.reshape(shape) * np.array([e[name] for e in entries])).sum(0).tolist()
        out[key] = agg
    return out


# ---------------------------------------------------------------- video


@dataclass
class VideoFile:
    """One growing mp4 of one camera; episodes are appended back to back."""

    path: Path
    fps: int
    width: int
    height: int
    codec: str
    crf: int
    gop: int
    frames: int = 0
    container: object = None
    stream: object = None

    def open(self) -> None:
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration otherwise
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(
            self.codec, rate=self.fps, options={"g": str(self.gop), "crf": str(self.crf)}
        )
        self.stream.width = self.width
        self.stream.height = self.height
        self.stream.pix_fmt = "yuv420p"

    def add(self, rgb: np.ndarray) -> None:
        import av

        if self.container is None:
            self.open()
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def size_in_mb(self) -> float:
        return self.path.stat().st_size / 1024**2 if self.path.exists() else 0.0

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None


def probe_video(path: Path) -> dict:
    """The `info` entry of a video feature, read back from the file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": len(container.streams.audio) > 0,
        }


# ---------------------------------------------------------------- parquet


def _vector_column(rows: list[np.ndarray]):
    import pyarrow as pa

    flat = np.concatenate(rows).astype(np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), schema.STATE_DIM)


@dataclass
class DataFile:
    """The frame rows of one data parquet file, written on close."""

    path: Path
    state: list = field(default_factory=list)
    action: list = field(default_factory=list)
    columns: dict = field(default_factory=lambda: {k: [] for k in INDEX_KEYS})
    frames: int = 0

    def add_episode(self, ep, episode_index: int, first_index: int, task_index: int, fps: int) -> None:
        n = len(ep)
        frame_index = np.arange(n, dtype=np.int64)
        self.state.append(ep.proprio)
        self.action.append(ep.action)
        self.columns["timestamp"].append((frame_index / fps).astype(np.float32))
        self.columns["frame_index"].append(frame_index)
        self.columns["episode_index"].append(np.full(n, episode_index, np.int64))
        self.columns["index"].append(first_index + frame_index)
        self.columns["task_index"].append(np.full(n, task_index, np.int64))
        self.frames += n

    def write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.frames:
            return
        arrays = {STATE_KEY: _vector_column(self.state), ACTION_KEY: _vector_column(self.action)}
        for key, parts in self.columns.items():
            arrays[key] = pa.array(np.concatenate(parts))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(arrays), self.path, compression="snappy")


def write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet: a 'task' index (the instruction) and a task_index column.

    Written with pyarrow plus the pandas index metadata, so `pandas.read_parquet`
    gives the DataFrame LeRobot expects (tasks.loc[instruction].task_index).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(tasks)
    table = pa.table(
        {"task_index": pa.array([tasks[n] for n in names], pa.int64()), "task": pa.array(names, pa.string())}
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_episodes(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {key: [row[key] for row in rows] for key in rows[0]}
    arrays = {}
    for key, values in columns.items():
        if key == "tasks":
            arrays[key] = pa.array(values, pa.list_(pa.string()))
        elif key.startswith("stats/"):
            arrays[key] = pa.array(values)  # (nested) lists of float64, count as int64
        elif key.endswith("timestamp"):
            arrays[key] = pa.array(values, pa.float64())
        else:
            arrays[key] = pa.array(values, pa.int64())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)


# ---------------------------------------------------------------- export


def _integral_fps(fps: float) -> int:
    if abs(fps - round(fps)) > 1e-6 or round(fps) < 1:
        raise DatasetError(
            f"LeRobot datasets need a whole-number frame rate; the episodes were recorded at {fps:g} Hz "
            f"(pass --fps with the nominal rate)"
        )
    return int(round(fps))


def features_of(cameras: dict[str, tuple[int, int]], video_info: dict[str, dict]) -> dict:
    names = list(robot.JOINT_NAMES)
    features = {
        STATE_KEY: {"dtype": "float32", "shape": [schema.STATE_DIM], "names": names},
        ACTION_KEY: {"dtype": "float32", "shape": [schema.STATE_DIM], "names": names},
    }
    for cam, (w, h) in cameras.items():
        features[video_key(cam)] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": video_info.get(cam, {}),
        }
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def export_lerobot(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    fps: float | None = None,
    vcodec: str = "av1",
    crf: int = 30,
    gop: int = 2,
    progress: bool = True,
) -> dict:
    """Write every episode under `root` as a LeRobotDataset v3.0 into `out`; returns a summary.

    The dataset is written into a hidden folder beside `out` and moved into place when it is
    complete (export_common.export_folder): a failed export leaves no half-written `out`."""
    if vcodec not in CODECS:
        raise DatasetError(f"--vcodec {vcodec!r}: choose one of {', '.join(CODECS)}")
    if not 0 <= crf <= MAX_CRF[vcodec]:
        raise DatasetError(f"--crf must be 0..{MAX_CRF[vcodec]} for --vcodec {vcodec} (got {crf})")
    if gop < 1:
        raise DatasetError(f"--gop must be at least 1 (got {gop})")
    check_output(out, overwrite=overwrite, source=root)
    plan = plan_export(root, fps=fps)
    rate = _integral_fps(plan.fps)
    for cam, (w, h) in plan.cameras.items():
        if w % 2 or h % 2:
            raise DatasetError(f"camera '{cam}' is {w}x{h}: video export (yuv420p) needs an even width and height")
    with export_folder(out, overwrite=overwrite, source=root, fmt="lerobot") as work:
        summary = _write_lerobot(work, plan, rate, vcodec=vcodec, crf=crf, gop=gop, progress=progress)
    return {"format": "lerobot", "out": str(Path(out)), **summary}


def _write_lerobot(out: Path, plan, rate: int, *, vcodec: str, crf: int, gop: int, progress: bool) -> dict:
    """The LeRobot files of `plan`'s episodes in the folder `out`; the summary's counts."""
    from tqdm import tqdm

    tasks: dict[str, int] = {}
    episode_rows: list[dict] = []
    episode_stats: list[dict] = []
    data_chunk, data_file_index = 0, 0
    data = DataFile(out / DATA_PATH.format(chunk_index=0, file_index=0))
    videos: dict[str, VideoFile] = {}
    video_pos = {cam: (0, 0) for cam in plan.cameras}
    first_video = {}
    total = 0

    def new_video(cam: str) -> VideoFile:
        chunk, file = video_pos[cam]
        w, h = plan.cameras[cam]
        path = out / VIDEO_PATH.format(video_key=video_key(cam), chunk_index=chunk, file_index=file)
        first_video.setdefault(cam, path)
        return VideoFile(path, rate, w, h, CODECS[vcodec], crf, gop)

    videos = {cam: new_video(cam) for cam in plan.cameras}
    try:
        for episode_index, ref in enumerate(
            tqdm(plan.refs, desc="export lerobot", unit="episode", disable=not progress)
        ):
            ep = load_for_export(ref, plan)
            n = len(ep)
            if not ep.instruction:
                raise DatasetError(f"{ref.path}: the episode has no language instruction (a LeRobot task)")
            task_index = tasks.setdefault(ep.instruction, len(tasks))
            if data.frames and (data.frames + n) * DATA_BYTES_PER_FRAME > DATA_FILES_SIZE_IN_MB * 1024**2:
                data.write()
                data_chunk, data_file_index = next_chunk_file(data_chunk, data_file_index)
                data = DataFile(out / DATA_PATH.format(chunk_index=data_chunk, file_index=data_file_index))
            row = {
                "episode_index": episode_index,
                "tasks": [ep.instruction],
                "length": n,
                "data/chunk_index": data_chunk,
                "data/file_index": data_file_index,
                "dataset_from_index": total,
                "dataset_to_index": total + n,
            }
            data.add_episode(ep, episode_index, total, task_index, rate)
            stats = {STATE_KEY: vector_stats(ep.proprio), ACTION_KEY: vector_stats(ep.action)}
            for cam in plan.cameras:
                video = videos[cam]
                if video.frames and video.size_in_mb() > VIDEO_FILES_SIZE_IN_MB:
                    video.close()
                    video_pos[cam] = next_chunk_file(*video_pos[cam])
                    video = videos[cam] = new_video(cam)
                start = video.frames
                frames = []
                for t, data_jpeg in enumerate(ep.images[cam]):
                    rgb = jpeg.decode(data_jpeg)
                    if rgb.shape[:2] != (video.height, video.width):
                        raise DatasetError(
                            f"{ref.path}: step {t} camera '{cam}' is {rgb.shape[1]}x{rgb.shape[0]}, "
                            f"expected {video.width}x{video.height}"
                        )
                    video.add(rgb)
                    frames.append(rgb)
                key = video_key(cam)
                row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = video_pos[cam]
                row[f"videos/{key}/from_timestamp"] = start / rate
                row[f"videos/{key}/to_timestamp"] = (start + n) / rate
                stats[key] = image_stats(frames)
            index_values = {
                "timestamp": np.arange(n) / rate,
                "frame_index": np.arange(n),
                "episode_index": np.full(n, episode_index),
                "index": total + np.arange(n),
                "task_index": np.full(n, task_index),
            }
            stats.update({k: vector_stats(v) for k, v in index_values.items()})
            for feature, values in stats.items():
                for stat, value in values.items():
                    row[f"stats/{feature}/{stat}"] = value
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            episode_rows.append(row)
            episode_stats.append(stats)
            total += n
    finally:
        for video in videos.values():
            video.close()
    data.write()

    write_episodes(out / EPISODES_PATH.format(chunk_index=0, file_index=0), episode_rows)
    write_tasks(out / TASKS_PATH, tasks)
    (out / STATS_PATH).write_text(json.dumps(aggregate_stats(episode_stats), indent=4))
    video_info = {cam: probe_video(path) for cam, path in first_video.items()}
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot.ROBOT_NAME,
        "total_episodes": len(episode_rows),
        "total_frames": total,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": rate,
        "splits": {"train": f"0:{len(episode_rows)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if plan.cameras else None,
        "features": features_of(plan.cameras, video_info),
    }
    (out / INFO_PATH).write_text(json.dumps(info, indent=4))
    return {
        "episodes": len(episode_rows),
        "steps": total,
        "tasks": len(tasks),
        "fps": rate,
        "cameras": {c: f"{w}x{h}" for c, (w, h) in plan.cameras.items()},
        "video_codec": vcodec,
    }
