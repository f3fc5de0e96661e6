"""Import the earlier CRANE-X7 stack's episodes.

Its layout: ``<root>/episode_NNNN_YYYYmmdd_HHMMSS/episode_data.tfrecord`` with keys
observation/proprio, observation/image_<camera> (JPEG), observation/timestep, action,
task/language_instruction, dataset_name; no metadata file, no timestamps. Its JPEGs
were encoded from RGB arrays by an encoder that assumed BGR, so red and blue are
swapped in all of them: ``swap_rb=True`` fixes that while importing.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from crane_x7_vla.episode import jpeg, schema
from crane_x7_vla.episode.reader import DatasetError, load_episode
from crane_x7_vla.episode.writer import EpisodeWriter


def find_legacy_episodes(src: str | os.PathLike) -> list[Path]:
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(
            f"{src} is a file; a folder of episode_* folders is expected"
            if src.exists()
            else f"{src}: no such directory"
        )
    found = sorted(
        p for p in src.iterdir() if p.is_dir() and p.name.startswith("episode_") and (p / schema.RECORD_FILE).exists()
    )
    if not found:
        raise DatasetError(f"{src}: no episode_*/{schema.RECORD_FILE} found (the earlier stack's layout)")
    return found


def import_legacy(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    swap_rb: bool = False,
    fps: float = 10.0,
    instruction: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Convert every legacy episode under `src` into our format under `dst`.

    `dst` may not be `src` nor a folder inside it (the copies would land among, or below,
    the episodes being read)."""
    source, target = Path(src).resolve(), Path(dst).resolve()
    if target == source or source in target.parents:
        where = "is the source folder" if target == source else f"is inside the source folder {source}"
        raise DatasetError(f"{dst} {where}: import the episodes into a folder outside {src}")
    if target.exists() and not target.is_dir():
        raise DatasetError(f"{dst} is a file; the episodes are written into a folder")
    if not fps > 0:
        raise DatasetError(f"--fps must be above 0 (got {fps})")
    written = []
    episodes = find_legacy_episodes(src)
    for path in tqdm(episodes, desc="import-legacy", unit="episode", disable=not progress):
        ep = load_episode(path, images=True)
        text = ep.instruction or instruction
        if not text:
            raise DatasetError(f"{path}: the episode has no task/language_instruction; pass --instruction")
        cameras = {}
        for cam, frames in ep.images.items():
            cameras[cam] = jpeg.size_of(frames[0])
        writer = EpisodeWriter(
            dst,
            fps=fps,
            instruction=text,
            cameras=cameras,
            extra={"imported_from": str(path.resolve()), "red_blue_fixed": bool(swap_rb)},
        )
        try:
            for t in range(len(ep)):
                images = {}
                for cam, frames in ep.images.items():
                    if swap_rb:
                        images[cam] = jpeg.decode(frames[t])[:, :, ::-1]
                    else:
                        images[cam] = frames[t]  # keep the original bytes untouched
                writer.add_step(ep.proprio[t], images, action=ep.action[t])
            written.append(writer.close(success=None, source="earlier CRANE-X7 stack (imported)", achieved_fps=None))
        except BaseException:
            writer.discard()
            raise
    return written
