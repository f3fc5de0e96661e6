"""What every exporter needs: the episodes to export, their cameras, an empty output folder."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from crane_x7_vla.episode import jpeg
from crane_x7_vla.episode.reader import DatasetError, EpisodeData, EpisodeRef, load_episode, require_episodes


@dataclass
class ExportPlan:
    refs: list[EpisodeRef]
    cameras: dict[str, tuple[int, int]]  # name -> (width, height), the same in every episode
    fps: float


def episode_cameras(ref: EpisodeRef) -> dict[str, tuple[int, int]]:
    """Camera sizes from the metadata, or from the first step's JPEGs for files without it."""
    if ref.meta is not None:
        return {name: (int(c.width), int(c.height)) for name, c in ref.meta.cameras.items()}
    first = load_episode(ref.path, images=True)
    return {cam: jpeg.size_of(frames[0]) for cam, frames in first.images.items()}


def plan_export(root: str | os.PathLike, *, fps: float | None = None) -> ExportPlan:
    """List the episodes under `root` and check they agree on cameras and rate."""
    refs = require_episodes(root)
    cameras = episode_cameras(refs[0])
    rates = set()
    for ref in refs:
        found = episode_cameras(ref) if ref is not refs[0] else cameras
        if found != cameras:
            raise DatasetError(
                f"{ref.path}: cameras {_describe(found)} differ from {_describe(cameras)} in "
                f"{refs[0].path}; an export holds one camera layout (export such episodes separately)"
            )
        if ref.meta is not None:
            rates.add(float(ref.meta.fps))
    if fps is None:
        if not rates:
            raise DatasetError(
                f"{root}: the episodes carry no metadata, so their rate is unknown; pass the recording rate "
                f"(--fps) or convert them first with `crane-x7-vla dataset import-legacy`"
            )
        if len(rates) > 1:
            raise DatasetError(f"{root}: episodes were recorded at different rates {sorted(rates)}; pass --fps")
        fps = rates.pop()
    if not fps > 0:
        raise DatasetError(f"fps must be positive, got {fps}")
    return ExportPlan(refs=refs, cameras=cameras, fps=float(fps))


def load_for_export(ref: EpisodeRef, plan: ExportPlan) -> EpisodeData:
    ep = load_episode(ref.path, images=True, cameras=list(plan.cameras))
    for cam, frames in ep.images.items():
        if len(frames) != len(ep):
            raise DatasetError(f"{ref.path}: camera '{cam}' has {len(frames)} frames for {len(ep)} steps")
    return ep


def _describe(cameras: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{n} {w}x{h}" for n, (w, h) in sorted(cameras.items())) or "(none)"


def prepare_output(out: str | os.PathLike, *, overwrite: bool, source: str | os.PathLike) -> Path:
    """An empty output folder; an existing non-empty one only with overwrite=True.

    Refuses an output folder that is, or holds, the source episodes.
    """
    out = Path(out)
    src = Path(source).resolve()
    if out.resolve() == src or out.resolve() in src.parents:
        raise DatasetError(f"--out {out} is (or contains) the source episodes {src}; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise DatasetError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
