"""Dataset statistics with a fingerprint, so stale statistics are caught, not reused.

``dataset_statistics.json`` keeps the earlier stack's shape
(``{"crane_x7": {"action": {...}, "proprio": {...}, "num_transitions": N}}``) and adds
``num_episodes`` and ``fingerprint``: a hash of every episode's name, length, states
and actions. Training refuses statistics whose fingerprint does not match the
episodes it reads, and the checkpoint carries both.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import schema
from crane_x7_vla.episode.reader import DatasetError, EpisodeData, load_episode, require_episodes

QUANTITIES = ("action", "proprio")


def episode_digest(ep: EpisodeData) -> str:
    h = hashlib.sha256()
    h.update(ep.path.name.encode())
    h.update(np.int64(len(ep)).tobytes())
    h.update(np.ascontiguousarray(ep.proprio, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(ep.action, dtype="<f4").tobytes())
    return h.hexdigest()


def fingerprint(digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in sorted(digests):
        h.update(d.encode())
    return h.hexdigest()[:16]


def summarize(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def compute_statistics(episodes: list[EpisodeData]) -> dict:
    """The statistics dict for one dataset (the value under the "crane_x7" key)."""
    if not episodes:
        raise DatasetError("cannot compute statistics of zero episodes")
    out = {q: summarize(np.concatenate([getattr(e, q) for e in episodes])) for q in QUANTITIES}
    out["num_transitions"] = int(sum(len(e) for e in episodes))
    out["num_trajectories"] = len(episodes)
    out["num_episodes"] = len(episodes)
    out["fingerprint"] = fingerprint([episode_digest(e) for e in episodes])
    out["episodes"] = [e.path.name for e in episodes]
    return out


def load_arrays(root: str | os.PathLike) -> list[EpisodeData]:
    return [load_episode(ref.path, images=False) for ref in require_episodes(root)]


def write_statistics(root: str | os.PathLike) -> tuple[Path, dict]:
    stats = compute_statistics(load_arrays(root))
    path = Path(root) / schema.STATS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({schema.DATASET_NAME: stats}, indent=2))
    os.replace(tmp, path)
    return path, stats


class StaleStatisticsError(DatasetError):
    pass


def check_statistics(stats: dict, episodes: list[EpisodeData], *, where: str) -> None:
    """Raise StaleStatisticsError unless `stats` were computed from exactly these episodes."""
    expected = fingerprint([episode_digest(e) for e in episodes])
    found = stats.get("fingerprint")
    if found is None:
        raise StaleStatisticsError(
            f"{where} has no fingerprint (written by an older tool); "
            f"regenerate it with `crane-x7-vla dataset stats <data dir>`"
        )
    if found != expected:
        raise StaleStatisticsError(
            f"{where} does not match the episodes being read (fingerprint {found} vs {expected}: "
            f"{stats.get('num_episodes', '?')} episodes / {stats.get('num_transitions', '?')} steps in the "
            f"file, {len(episodes)} / {sum(len(e) for e in episodes)} on disk). The episodes changed since the "
            f"statistics were computed; regenerate them with `crane-x7-vla dataset stats <data dir>`"
        )


def dataset_stats_entry(data: dict, where: str) -> dict:
    """The per-dataset entry of a dataset_statistics.json dict."""
    if schema.DATASET_NAME in data:
        return data[schema.DATASET_NAME]
    if "action" in data:
        return data
    raise DatasetError(f"{where}: expected a '{schema.DATASET_NAME}' entry with action/proprio statistics")
