"""Episode layout, per-step keys and metadata: the contract between collect, train and deploy.

On disk (a superset of the earlier CRANE-X7 stack's layout, so its readers still work)::

    <root>/
      episode_0003_20261126_153012/
        episode_data.tfrecord      one tf.train.Example per step
        episode_meta.json          EpisodeMeta below, written when the episode closes
      .episode_0004_20261126_153300.partial/   an episode being written (or a crashed one)
      dataset_statistics.json      `crane-x7-vla dataset stats`

Per-step keys:

    observation/proprio            float[8]  7 arm joints (controller order) + gripper finger_a, rad
    observation/image_<camera>     bytes     JPEG, RGB channel order
    observation/timestep           int64[1]  step index from 0
    observation/timestamp_ns       int64[1]  time of the joint state (ROS time, ns)
    observation/image_<camera>_timestamp_ns  int64[1]  time of the image
    action                         float[8]  absolute joint targets = the NEXT step's proprio
                                             (the last step repeats its own proprio)
    task/language_instruction      bytes     the instruction of the episode
    dataset_name                   bytes     "crane_x7"
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from crane_x7_vla import robot

FORMAT_VERSION = 2  # 1 = the earlier stack's files (no metadata)
RECORDER_VERSION = "crane_x7_vla 0.1.0"
DATASET_NAME = robot.ROBOT_NAME

RECORD_FILE = "episode_data.tfrecord"
META_FILE = "episode_meta.json"
STATS_FILE = "dataset_statistics.json"
PARTIAL_SUFFIX = ".partial"

KEY_PROPRIO = "observation/proprio"
KEY_TIMESTEP = "observation/timestep"
KEY_TIMESTAMP = "observation/timestamp_ns"
KEY_ACTION = "action"
KEY_INSTRUCTION = "task/language_instruction"
KEY_DATASET = "dataset_name"
IMAGE_PREFIX = "observation/image_"

REQUIRED_KEYS = (KEY_PROPRIO, KEY_TIMESTEP, KEY_ACTION, KEY_INSTRUCTION)
STATE_DIM = robot.ACTION_DIM

EPISODE_DIR_RE = re.compile(r"^episode_(\d+)(?:_(\d{8}_\d{6}))?$")


def image_key(camera: str) -> str:
    return f"{IMAGE_PREFIX}{camera}"


def image_timestamp_key(camera: str) -> str:
    return f"{IMAGE_PREFIX}{camera}_timestamp_ns"


def cameras_in(keys) -> list[str]:
    """Camera names present in a step's keys (image_<camera>, not its timestamp)."""
    return sorted(
        k[len(IMAGE_PREFIX) :]
        for k in keys
        if k.startswith(IMAGE_PREFIX) and not k.endswith("_timestamp_ns")
    )


def episode_dir_name(index: int, start_time_str: str) -> str:
    """episode_NNNN_YYYYmmdd_HHMMSS, the earlier stack's naming."""
    return f"episode_{index:04d}_{start_time_str}"


@dataclass
class CameraInfo:
    width: int
    height: int
    topic: str = ""


@dataclass
class EpisodeMeta:
    """The JSON beside each episode's records."""

    fps: float
    language_instruction: str
    cameras: dict[str, CameraInfo]
    start_time: str  # ISO 8601, UTC
    num_steps: int = 0
    joint_names: list[str] = field(default_factory=lambda: list(robot.JOINT_NAMES))
    success: bool | None = None
    discarded: bool = False
    task: str = ""
    seed: int | None = None
    achieved_fps: float | None = None
    dropped_steps: int = 0  # timer ticks with no usable joint state / image
    stale_frames: dict[str, int] = field(default_factory=dict)  # per camera
    recorder_version: str = RECORDER_VERSION
    format_version: int = FORMAT_VERSION
    robot: str = robot.ROBOT_NAME
    action_definition: str = "absolute joint targets: the next step's observation/proprio"
    source: str = "crane_x7_vla recorder"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "episode metadata") -> "EpisodeMeta":
        """The metadata from its JSON object; ValueError naming `where` and the field when a
        field is missing or holds the wrong kind of value."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        for required in ("fps", "language_instruction", "cameras", "start_time"):
            if required not in data:
                raise ValueError(f"{where}: field '{required}' is missing")
        for name, kinds, what in _FIELD_KINDS:
            value = data.get(name)
            if name in data and not (value is None and name in _MAY_BE_NULL) and (
                not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
            ):
                raise ValueError(f"{where}: field '{name}' must be {what}, found {json.dumps(value)[:60]}")
        if not data["fps"] > 0:
            raise ValueError(f"{where}: field 'fps' must be above 0, found {data['fps']}")
        cameras = {}
        for camera, info in data["cameras"].items():
            if not isinstance(info, dict) or not all(
                isinstance(info.get(k), int) and not isinstance(info.get(k), bool) and info.get(k) > 0
                for k in ("width", "height")
            ):
                raise ValueError(f"{where}: cameras.{camera} must hold a positive width and height")
            cameras[camera] = CameraInfo(width=info["width"], height=info["height"], topic=str(info.get("topic", "")))
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["cameras"] = cameras
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EpisodeMeta":
        """Read an episode_meta.json; ValueError naming the file when it is unreadable or wrong."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (expected JSON)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where=str(path))


# Fields whose kind from_dict checks: (name, accepted types, description).
_FIELD_KINDS = (
    ("fps", (int, float), "a number of steps per second"),
    ("language_instruction", (str,), "text"),
    ("cameras", (dict,), "an object of camera name: {width, height}"),
    ("start_time", (str,), "an ISO 8601 time (text)"),
    ("num_steps", (int,), "a whole number"),
    ("joint_names", (list,), "a list of joint names"),
    ("success", (bool,), "true, false or null"),
    ("discarded", (bool,), "true or false"),
    ("task", (str,), "text"),
    ("seed", (int,), "a whole number or null"),
    ("achieved_fps", (int, float), "a number or null"),
    ("dropped_steps", (int,), "a whole number"),
    ("stale_frames", (dict,), "an object of camera name: count"),
    ("extra", (dict,), "an object"),
)
_MAY_BE_NULL = {"success", "seed", "achieved_fps"}
