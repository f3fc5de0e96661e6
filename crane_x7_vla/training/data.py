"""Training data for both backends: episodes -> shuffled, augmented, prefetched batches.

* `load_training_data` reads every episode under the data root (clear errors for no
  episodes, damaged records, missing or stale statistics), picks the cameras and splits
  by EPISODE into train / validation.
* `BatchStream` yields batches in an order fixed by (seed, epoch) and can start at any
  `DataPosition`, so a resumed run sees exactly the batches it would have seen. Samples are
  prepared by worker threads ahead of the trainer (JPEG decoding and OpenCV release the GIL).
* Every sample's augmentation uses its own generator seeded by (seed, epoch, index): the
  result does not depend on thread timing, process count or where a run was resumed.
* With `noop_threshold` > 0, training leaves out no-op steps: steps whose action moves no
  joint by more than the threshold from the current state (waiting before the motion
  starts, pauses, holding at the goal), as OpenVLA's fine-tuning filters no-op actions.
  Among near-identical observations at rest, "stay" labels would otherwise outvote
  "start moving", and a policy fed its own still state never starts.

Batches are plain numpy: images {camera: uint8 (B, H, W, 3)}, state float32 (B, 8),
actions float32 (B, horizon, 8) absolute joint targets (the chunk is padded by repeating
the episode's last action), instruction list[str], goal float32 (B, 3) (the goal point:
where the hand is at the end of the current movement, `preprocess.goal_points`) and
goal_only bool (B,) (a picture without a demonstration, whose actions are not to be learned).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import reader, schema, stats as stats_mod
from crane_x7_vla.episode.reader import DatasetError, EpisodeData
from crane_x7_vla.episode.tfrecord import RecordError
from crane_x7_vla.preprocess import ImageSpec, goal_point, prepare_image


@dataclass
class TrainingData:
    root: Path
    train: list[EpisodeData]
    val: list[EpisodeData]
    cameras: list[str]
    statistics: dict  # the 'crane_x7' entry of dataset_statistics.json
    fingerprint: str
    fps: float | None
    default_instruction: str

    @property
    def num_train_steps(self) -> int:
        return sum(len(e) for e in self.train)


def _select_cameras(episodes: list[EpisodeData], wanted: list[str] | None) -> list[str]:
    available = [set(e.images) for e in episodes]
    common = set.intersection(*available) if available else set()
    if wanted:
        for ep, cams in zip(episodes, available):
            missing = [c for c in wanted if c not in cams]
            if missing:
                raise DatasetError(
                    f"{ep.path}: has no images from camera(s) {missing} (it has {sorted(cams) or 'none'}); "
                    f"check --cameras"
                )
        return list(wanted)
    if not common:
        raise DatasetError(
            f"{episodes[0].path.parent}: the episodes share no camera (cameras per episode: "
            f"{sorted({tuple(sorted(c)) for c in available})})"
        )
    return sorted(common)


def split_episodes(n: int, val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and validation episodes; at least one train episode."""
    n_val = int(round(n * val_ratio))
    if val_ratio > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return train, val


def load_training_data(
    data_root,
    *,
    cameras: list[str] | None = None,
    val_ratio: float = 0.1,
    seed: int = 42,
    default_instruction: str = "",
) -> TrainingData:
    """Read and check the dataset before any model is built. Raises DatasetError."""
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(f"--data-root {root.resolve()} does not exist (no episodes to train on)")
    refs = reader.require_episodes(root)
    stats_path = root / schema.STATS_FILE
    if not stats_path.exists():
        raise DatasetError(
            f"{stats_path} not found: training needs the dataset statistics; "
            f"run `crane-x7-vla dataset stats {root}` first"
        )
    try:
        entry = stats_mod.dataset_stats_entry(reader.load_statistics(root), str(stats_path))
    except ValueError as exc:
        raise DatasetError(f"{stats_path}: unreadable ({exc}); run `crane-x7-vla dataset stats {root}`") from None
    episodes = []
    for ref in refs:
        try:
            ep = reader.load_episode(ref.path, images=True)
        except RecordError as exc:
            raise DatasetError(f"damaged episode: {exc} (run `crane-x7-vla dataset validate {root}`)") from None
        for name, arr in (("observation/proprio", ep.proprio), ("action", ep.action)):
            bad = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))
            if bad.size:
                raise DatasetError(f"{ref.record_path}: record {int(bad[0])}: {name} has NaN or inf")
        episodes.append(ep)
    try:
        stats_mod.check_statistics(entry, episodes, where=str(stats_path))
    except stats_mod.StaleStatisticsError as exc:
        raise DatasetError(f"{exc} (run `crane-x7-vla dataset stats {root}`)") from None
    for key in ("action", "proprio"):
        if key not in entry or "q01" not in entry[key] or "q99" not in entry[key]:
            raise DatasetError(f"{stats_path}: no q01/q99 for '{key}'; run `crane-x7-vla dataset stats {root}`")
    cams = _select_cameras(episodes, cameras)
    for ep in episodes:
        if not ep.instruction:
            ep.instruction = default_instruction
    train_idx, val_idx = split_episodes(len(episodes), val_ratio, seed)
    fps_values = sorted({e.fps for e in episodes if e.fps})
    instructions = [e.instruction for e in episodes if e.instruction]
    default = max(set(instructions), key=instructions.count) if instructions else default_instruction
    return TrainingData(
        root=root,
        train=[episodes[i] for i in train_idx],
        val=[episodes[i] for i in val_idx],
        cameras=cams,
        statistics=entry,
        fingerprint=entry["fingerprint"],
        fps=fps_values[0] if fps_values else None,
        default_instruction=default,
    )


def make_sample(ep: EpisodeData, t: int, cameras, spec: ImageSpec, horizon: int, *, train: bool, rng=None) -> dict:
    idx = np.minimum(np.arange(t, t + horizon), len(ep) - 1)
    return {
        "images": {c: prepare_image(ep.images[c][t], spec, train=train, rng=rng) for c in cameras},
        "state": ep.proprio[t].astype(np.float32),
        "actions": ep.action[idx].astype(np.float32),
        "instruction": ep.instruction,
        "goal": (ep.goal if ep.goal is not None else goal_point(ep.proprio, ep.action, t)).astype(np.float32),
        "goal_only": ep.goal is not None,
    }


def collate(samples: list[dict]) -> dict:
    cams = samples[0]["images"].keys()
    return {
        "images": {c: np.stack([s["images"][c] for s in samples]) for c in cams},
        "state": np.stack([s["state"] for s in samples]),
        "actions": np.stack([s["actions"] for s in samples]),
        "instruction": [s["instruction"] for s in samples],
        "goal": np.stack([s["goal"] for s in samples]),
        "goal_only": np.array([s["goal_only"] for s in samples], dtype=bool),
    }


@dataclass(frozen=True)
class DataPosition:
    """The next batch to read: epoch and batch index within it (same on every process)."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataPosition":
        return cls(**d) if d else cls()


def moving_steps(ep: EpisodeData, noop_threshold: float) -> np.ndarray:
    """Indices of the steps whose action moves some joint by more than `noop_threshold`
    (rad) from the state; every step when the threshold is 0."""
    if noop_threshold <= 0 or ep.goal is not None:  # a goal scene has no motion to filter
        return np.arange(len(ep))
    motion = np.abs(np.asarray(ep.action, np.float64) - np.asarray(ep.proprio, np.float64)).max(axis=1)
    return np.flatnonzero(motion > noop_threshold)


class SampleIndex:
    """All (episode, step) pairs of a split (no-op steps left out when `noop_threshold` > 0)
    and their per-epoch order."""

    def __init__(self, episodes: list[EpisodeData], global_batch: int, seed: int, noop_threshold: float = 0.0):
        self.episodes = episodes
        self.pairs = np.array(
            [(e, int(t)) for e, ep in enumerate(episodes) for t in moving_steps(ep, noop_threshold)], dtype=np.int64
        ).reshape(-1, 2)
        if len(self.pairs) == 0:
            if noop_threshold > 0 and any(len(ep) for ep in episodes):
                raise DatasetError(
                    f"no training samples: no step of the training episodes moves a joint by more "
                    f"than --noop-threshold {noop_threshold} rad; lower it"
                )
            raise DatasetError("no training samples: every training episode is empty")
        self.global_batch = global_batch
        self.seed = seed
        self.batches_per_epoch = max(1, len(self.pairs) // global_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self.pairs)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        need = self.batches_per_epoch * self.global_batch
        if need > n:  # fewer samples than one batch: repeat the shuffled order
            order = np.resize(order, need)
        return order

    def batch_items(self, pos: DataPosition, order: np.ndarray, rank: int, per_rank: int) -> list[tuple[int, int, int]]:
        """[(episode, step, sample-number-in-epoch)] of this rank's share of batch `pos`."""
        start = pos.batch * self.global_batch + rank * per_rank
        items = []
        for k in range(start, start + per_rank):
            e, t = self.pairs[order[k]]
            items.append((int(e), int(t), k))
        return items


class BatchStream:
    """Endless iterator of (position_of_this_batch, batch) from `start`, prepared ahead.

    `wait_seconds` accumulates the time `next()` spent blocked on data.
    """

    def __init__(
        self,
        episodes: list[EpisodeData],
        *,
        cameras: list[str],
        spec: ImageSpec,
        horizon: int,
        batch_size: int,
        seed: int,
        start: DataPosition = DataPosition(),
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        prefetch: int = 4,
        noop_threshold: float = 0.0,
    ):
        self.index = SampleIndex(episodes, batch_size * world_size, seed, noop_threshold)
        self.cameras, self.spec, self.horizon = list(cameras), spec, horizon
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.position = start
        self.wait_seconds = 0.0
        self.batches_served = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 1 else None
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    @property
    def batches_per_epoch(self) -> int:
        return self.index.batches_per_epoch

    def _sample(self, epoch: int, item) -> dict:
        e, t, k = item
        rng = np.random.default_rng([self.seed, epoch, k, 7])
        return make_sample(self.index.episodes[e], t, self.cameras, self.spec, self.horizon, train=True, rng=rng)

    def build(self, pos: DataPosition, order: np.ndarray | None = None) -> dict:
        order = self.index.epoch_order(pos.epoch) if order is None else order
        items = self.index.batch_items(pos, order, self.rank, self.batch_size)
        if self._pool is not None:
            samples = list(self._pool.map(lambda it: self._sample(pos.epoch, it), items))
        else:
            samples = [self._sample(pos.epoch, it) for it in items]
        return collate(samples)

    def _produce(self) -> None:
        pos = self.position
        order_epoch, order = None, None
        try:
            while not self._stop.is_set():
                if order_epoch != pos.epoch:
                    order_epoch, order = pos.epoch, self.index.epoch_order(pos.epoch)
                item = (pos, self.build(pos, order))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                nxt = pos.batch + 1
                pos = (
                    DataPosition(pos.epoch + 1, 0)
                    if nxt >= self.index.batches_per_epoch
                    else DataPosition(pos.epoch, nxt)
                )
        except BaseException as exc:  # hand the error to the consumer
            self._queue.put((None, exc))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[DataPosition, dict]:
        t0 = time.perf_counter()
        pos, batch = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if pos is None:
            raise batch
        nxt = pos.batch + 1
        self.position = (
            DataPosition(pos.epoch + 1, 0) if nxt >= self.index.batches_per_epoch else DataPosition(pos.epoch, nxt)
        )
        self.batches_served += 1
        return pos, batch

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def eval_items(episodes: list[EpisodeData], max_samples: int, first_steps: bool = False) -> list[tuple[int, int]]:
    """A fixed, evenly spread set of (episode, step) for validation metrics (`first_steps`: only
    each episode's first step)."""
    pairs = [(e, t) for e, ep in enumerate(episodes) for t in range(min(1, len(ep)) if first_steps else len(ep))]
    if len(pairs) <= max_samples:
        return pairs
    pick = np.linspace(0, len(pairs) - 1, max_samples).round().astype(int)
    return [pairs[i] for i in pick]


def eval_batches(
    episodes, cameras, spec: ImageSpec, horizon: int, batch_size: int, max_samples: int, first_steps: bool = False
):
    """Batches without augmentation (centre crop, as at deployment)."""
    items = eval_items(episodes, max_samples, first_steps)
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        yield collate([make_sample(episodes[e], t, cameras, spec, horizon, train=False) for e, t in chunk])
