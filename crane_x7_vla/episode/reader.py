"""Reading episodes: listing, decoding steps, and whole-episode arrays for training."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import schema, tfrecord
from crane_x7_vla.episode.schema import EpisodeMeta


class DatasetError(ValueError):
    """A dataset problem a user can act on; the message names the path."""


@dataclass
class EpisodeRef:
    path: Path
    meta: EpisodeMeta | None  # None for the earlier stack's episodes

    @property
    def record_path(self) -> Path:
        return self.path / schema.RECORD_FILE

    @property
    def name(self) -> str:
        return self.path.name


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise DatasetError(f"{root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; a folder of episodes is expected")


def read_meta(episode_dir: str | os.PathLike) -> EpisodeMeta | None:
    """The metadata of an episode folder (None for the earlier stack's episodes, which have
    none); DatasetError naming the file when it is damaged."""
    meta_path = Path(episode_dir) / schema.META_FILE
    if not meta_path.exists():
        return None
    try:
        return EpisodeMeta.load(meta_path)
    except ValueError as exc:
        raise DatasetError(f"{exc} (`crane-x7-vla dataset validate` lists every damaged file)") from None
    except OSError as exc:
        raise DatasetError(f"{meta_path}: cannot be read ({exc.strerror or exc})") from None


def list_episodes(
    root: str | os.PathLike, *, include_discarded: bool = False, strict: bool = True
) -> list[EpisodeRef]:
    """Finished episodes under ``root`` (sorted by name); partial ones are not included.

    ``root`` may also be a single episode directory. A damaged metadata file is a
    DatasetError naming it; with ``strict=False`` its episode is listed with meta None
    (for `validate`, which reports the file itself).
    """
    root = Path(root)
    _require_dir(root)
    if (root / schema.RECORD_FILE).exists():
        candidates = [root]
    else:
        candidates = sorted(
            p for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / schema.RECORD_FILE).exists()
        )
    refs = []
    for path in candidates:
        try:
            meta = read_meta(path)
        except DatasetError:
            if strict:
                raise
            meta = None
        if meta is not None and meta.discarded and not include_discarded:
            continue
        refs.append(EpisodeRef(path, meta))
    return refs


def list_partial(root: str | os.PathLike) -> list[Path]:
    """Episodes whose writer never closed them (crashed or still recording)."""
    root = Path(root)
    _require_dir(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith(schema.PARTIAL_SUFFIX))


def require_episodes(root: str | os.PathLike) -> list[EpisodeRef]:
    refs = list_episodes(root)
    if not refs:
        hint = ""
        partial = list_partial(root) if Path(root).is_dir() else []
        if partial:
            hint = f" ({len(partial)} unfinished .partial episode(s) found: `crane-x7-vla dataset recover {root}`)"
        raise DatasetError(
            f"no episodes found under {Path(root).resolve()}: expected directories "
            f"episode_NNNN_*/{schema.RECORD_FILE}{hint}"
        )
    return refs


def iter_steps(path: str | os.PathLike):
    """Decoded steps (dict key -> list[bytes] | ndarray) of one episode, in order."""
    record_path = Path(path)
    if record_path.is_dir():
        record_path = record_path / schema.RECORD_FILE
    for index, data in enumerate(tfrecord.iter_records(record_path)):
        try:
            yield tfrecord.decode_example(data)
        except ValueError as exc:
            raise tfrecord.RecordError(f"{record_path}: record {index}: {exc}") from exc


@dataclass
class EpisodeData:
    """One episode in memory: arrays for state/action, JPEG bytes per camera."""

    path: Path
    proprio: np.ndarray  # (T, 8) float32
    action: np.ndarray  # (T, 8) float32
    timestep: np.ndarray  # (T,) int64
    timestamp_ns: np.ndarray | None  # (T,) int64 or None for legacy files
    instruction: str
    images: dict[str, list[bytes]] = field(default_factory=dict)
    meta: EpisodeMeta | None = None
    # A picture with where the named object is (3,), m, and no demonstration: it teaches a
    # policy's goal tokens only (sim/goal_scenes.py); None for recorded episodes.
    goal: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.proprio)

    @property
    def fps(self) -> float | None:
        return self.meta.fps if self.meta else None


def _vector(step: dict, key: str, where: str) -> np.ndarray:
    if key not in step:
        raise DatasetError(f"{where}: key '{key}' is missing")
    value = step[key]
    if isinstance(value, list):
        raise DatasetError(f"{where}: key '{key}' holds bytes, expected numbers")
    return value


def load_episode(path: str | os.PathLike, *, images: bool = True, cameras=None) -> EpisodeData:
    """Read a whole episode. Raises RecordError/DatasetError naming file and record."""
    path = Path(path)
    record_path = path / schema.RECORD_FILE
    meta = read_meta(path)
    proprio, action, timestep, stamps = [], [], [], []
    frames: dict[str, list[bytes]] = {}
    instruction = meta.language_instruction if meta else ""
    for i, step in enumerate(iter_steps(record_path)):
        where = f"{record_path}: record {i}"
        p = _vector(step, schema.KEY_PROPRIO, where)
        a = _vector(step, schema.KEY_ACTION, where)
        if p.shape != (schema.STATE_DIM,) or a.shape != (schema.STATE_DIM,):
            raise DatasetError(
                f"{where}: observation/proprio and action must hold {schema.STATE_DIM} values "
                f"(got {p.size} and {a.size})"
            )
        proprio.append(p)
        action.append(a)
        ts = step.get(schema.KEY_TIMESTEP)
        timestep.append(int(ts[0]) if ts is not None and len(ts) else i)
        stamp = step.get(schema.KEY_TIMESTAMP)
        stamps.append(int(stamp[0]) if stamp is not None and len(stamp) else None)
        if not instruction and schema.KEY_INSTRUCTION in step:
            instruction = step[schema.KEY_INSTRUCTION][0].decode("utf-8")
        if images:
            for cam in cameras or schema.cameras_in(step):
                key = schema.image_key(cam)
                if key not in step:
                    raise DatasetError(f"{where}: image '{key}' is missing")
                frames.setdefault(cam, []).append(step[key][0])
    if not proprio:
        raise DatasetError(f"{record_path}: the episode has no steps")
    return EpisodeData(
        path=path,
        proprio=np.stack(proprio),
        action=np.stack(action),
        timestep=np.array(timestep, dtype=np.int64),
        timestamp_ns=None if any(s is None for s in stamps) else np.array(stamps, dtype=np.int64),
        instruction=instruction,
        images=frames,
        meta=meta,
    )


def load_statistics(root: str | os.PathLike) -> dict:
    path = Path(root) / schema.STATS_FILE
    if not path.exists():
        raise DatasetError(f"{path} not found: run `crane-x7-vla dataset stats {root}` first")
    return json.loads(path.read_text())
