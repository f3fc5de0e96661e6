"""What every exporter needs: the episodes to export, their cameras, and an output folder that
appears only once the export is complete."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from crane_x7_vla.episode import jpeg, schema
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


EXPORT_MARKER = ".crane_x7_vla_export.json"  # in every export folder: what wrote it, from which episodes


def check_output(out: str | os.PathLike, *, overwrite: bool, source: str | os.PathLike) -> Path:
    """Refuse an output folder an export may not be written to; returns it as a Path.

    It may be new or an empty folder; an existing non-empty one only with overwrite=True,
    and only when an earlier export wrote it (it holds EXPORT_MARKER). Never a file, nor
    the source episodes or a folder holding them.
    """
    out = Path(out)
    src = Path(source).resolve()
    target = out.resolve()
    if target == src or target in src.parents:
        raise DatasetError(f"--out {out} is (or contains) the source episodes {src}; choose another folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DatasetError(f"--out {out}: {parent} is a file, so no folder can be made inside it")
            break
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DatasetError(f"--out {out} is a file; an export is written into a folder (choose another --out)")
        if any(out.iterdir()):
            if not overwrite:
                raise DatasetError(
                    f"--out {out} already exists and is not empty; choose another --out or pass --overwrite"
                )
            if not (out / EXPORT_MARKER).is_file():
                raise DatasetError(
                    f"--out {out} holds files that no `crane-x7-vla dataset export` wrote (no {EXPORT_MARKER}); "
                    f"--overwrite replaces only an earlier export: choose another --out, or move those files yourself"
                )
    return out


@contextmanager
def export_folder(out: str | os.PathLike, *, overwrite: bool, source: str | os.PathLike, fmt: str) -> Iterator[Path]:
    """A new hidden folder beside `out` to write an export into.

    When the block ends normally, EXPORT_MARKER is written into it and it replaces `out`
    (an empty folder, or an earlier export with overwrite=True: see check_output). When the
    block raises, the folder and any parent folders made for it are removed: a failed
    export leaves nothing, and an earlier export at `out` stays as it was.
    """
    out = check_output(out, overwrite=overwrite, source=source)
    made = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work = out.parent / f".{out.name}.{token}.exporting"
    work.mkdir()
    try:
        yield work
        marker = {
            "format": fmt,
            "source": str(Path(source).resolve()),
            "written": datetime.now(timezone.utc).isoformat(),
            "writer": schema.RECORDER_VERSION,
        }
        (work / EXPORT_MARKER).write_text(json.dumps(marker, indent=2))
        check_output(out, overwrite=overwrite, source=source)  # still true after the writing
        if out.exists():
            replaced = out.parent / f".{out.name}.{token}.replaced"
            os.rename(out, replaced)
            try:
                os.rename(work, out)
            except BaseException:
                os.rename(replaced, out)
                raise
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:
                break
        raise
