"""`crane-x7-vla dataset validate`: every record, every key, every limit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode import jpeg, schema, tfrecord
from crane_x7_vla.episode.reader import list_episodes, list_partial
from crane_x7_vla.episode.schema import EpisodeMeta

LIMIT_TOLERANCE = 0.02  # rad: measured joint states may overshoot a limit slightly


def validate_episode(path: str | os.PathLike, *, check_images: bool = True) -> list[str]:
    """Problems found in one episode, each naming file and record; [] if valid."""
    path = Path(path)
    record_path = path / schema.RECORD_FILE
    problems: list[str] = []
    meta = None
    meta_path = path / schema.META_FILE
    if meta_path.exists():
        try:
            meta = EpisodeMeta.load(meta_path)
        except ValueError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{meta_path}: cannot be read ({exc.strerror or exc})")
    if meta is not None and meta.joint_names != list(robot.JOINT_NAMES):
        problems.append(f"{meta_path}: joint_names differ from the CRANE-X7 controller order")
    count = 0
    last_stamp = None
    cameras = sorted(meta.cameras) if meta else None
    low = robot.LOWER_LIMITS - LIMIT_TOLERANCE
    high = robot.UPPER_LIMITS + LIMIT_TOLERANCE
    try:
        for i, data in enumerate(tfrecord.iter_records(record_path)):
            count += 1
            where = f"{record_path}: record {i}"
            try:
                step = tfrecord.decode_example(data)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            for key in schema.REQUIRED_KEYS:
                if key not in step:
                    problems.append(f"{where}: key '{key}' is missing")
            for key in (schema.KEY_PROPRIO, schema.KEY_ACTION):
                value = step.get(key)
                if value is None or isinstance(value, list):
                    continue
                if value.shape != (schema.STATE_DIM,):
                    problems.append(f"{where}: '{key}' has {value.size} values, expected {schema.STATE_DIM}")
                    continue
                if not np.all(np.isfinite(value)):
                    problems.append(f"{where}: '{key}' has NaN or inf")
                    continue
                bad = np.flatnonzero((value < low) | (value > high))
                for j in bad:
                    problems.append(
                        f"{where}: '{key}' {robot.JOINT_NAMES[j]} = {value[j]:.3f} rad is outside "
                        f"[{robot.LOWER_LIMITS[j]:.3f}, {robot.UPPER_LIMITS[j]:.3f}]"
                    )
            ts = step.get(schema.KEY_TIMESTEP)
            if ts is not None and not isinstance(ts, list) and (len(ts) != 1 or int(ts[0]) != i):
                problems.append(f"{where}: observation/timestep is {ts.tolist()}, expected [{i}]")
            stamp = step.get(schema.KEY_TIMESTAMP)
            if stamp is not None and not isinstance(stamp, list) and len(stamp):
                if last_stamp is not None and int(stamp[0]) <= last_stamp:
                    problems.append(f"{where}: timestamp does not increase ({int(stamp[0])} after {last_stamp})")
                last_stamp = int(stamp[0])
            step_cams = schema.cameras_in(step)
            if cameras is not None and step_cams != cameras:
                problems.append(f"{where}: cameras {step_cams} differ from the metadata's {cameras}")
            if check_images:
                for cam in step_cams:
                    data_list = step[schema.image_key(cam)]
                    try:
                        w, h = jpeg.size_of(data_list[0])
                    except Exception as exc:  # simplejpeg raises ValueError/RuntimeError
                        problems.append(f"{where}: image '{cam}' is not a readable JPEG ({exc})")
                        continue
                    if meta and cam in meta.cameras:
                        info = meta.cameras[cam]
                        if (w, h) != (info.width, info.height):
                            problems.append(
                                f"{where}: image '{cam}' is {w}x{h}, metadata says {info.width}x{info.height}"
                            )
            if len(problems) > 50:
                problems.append(f"{record_path}: stopping after 50 problems")
                return problems
    except tfrecord.RecordError as exc:
        problems.append(str(exc))
    except FileNotFoundError:
        problems.append(f"{record_path}: file not found")
    if count == 0 and not problems:
        problems.append(f"{record_path}: the episode has no steps")
    if meta is not None and not problems and meta.num_steps != count:
        problems.append(f"{meta_path}: num_steps is {meta.num_steps} but the file holds {count} records")
    return problems


def validate_dataset(root: str | os.PathLike) -> tuple[int, list[str]]:
    """(episodes checked, problems). Unfinished .partial episodes are reported too."""
    refs = list_episodes(root, include_discarded=True, strict=False)
    problems: list[str] = []
    for ref in refs:
        problems.extend(validate_episode(ref.path))
    single_episode = (Path(root) / schema.RECORD_FILE).exists()
    for partial in [] if single_episode else list_partial(root):
        problems.append(
            f"{partial}: unfinished episode (its writer stopped before closing it); "
            f"`crane-x7-vla dataset recover {root}` keeps its complete steps"
        )
    if not refs:
        problems.append(f"{root}: no episodes found")
    return len(refs), problems
