"""The checkpoint contract: `policy_config.json`, the file that makes a policy self-describing.

Training writes it into every checkpoint directory (`build_policy_config`,
`write_policy_config`); deployment (the policy loader, the policy server, the inference
node), evaluation and the demo read it (`read_policy_config`) and check it against the
robot (`validate_config`, or both at once with `load_policy_config`). A policy server sends
the same dict to its clients, which check it with `validate_config` too.

Fields (format_version 1):
    format_version          FORMAT_VERSION; a reader refuses any other
    backend                 the backend that loads the weights (crane_x7_vla.policy.loader's registry)
    base_model              the model the weights were trained from
    image_spec              preprocessing of the camera images (crane_x7_vla.preprocess.ImageSpec)
    cameras                 camera names, in the order the model reads them
    joint_names             the robot's joints, in the order of the action dimensions
    action_space            {"dim", "horizon", "kind", "representation", ...backend entries}
    normalization           {"mode": "q01_q99" | "zscore" | "none"}
    dataset_statistics      {"action": {"q01", "q99"}, "proprio": {...}, "fingerprint"}; null with mode "none"
    statistics_fingerprint  the fingerprint of those statistics, repeated so an edit shows
    default_instruction     the instruction used when the caller gives none
    control_rate_hz         how often a chunk step is executed
    step, train_config      the training step and the run's settings
    plus the backend's own section ("openvla", "openpi", "baseline").

Every problem is a `CheckpointError` (a `ConfigError`) whose one-line message names the file
and the field.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from crane_x7_vla import robot
from crane_x7_vla.errors import ConfigError

CONFIG_FILE = "policy_config.json"
FORMAT_VERSION = 1
STAT_KEYS = ("q01", "q99")
# Fields every policy_config.json has, and the JSON kind of those that must have one.
REQUIRED_FIELDS = ("backend", "image_spec", "joint_names", "action_space", "dataset_statistics")
_FIELD_KINDS = {"backend": str, "image_spec": dict, "joint_names": list, "action_space": dict}
_KIND_WORDS = {str: "text", dict: "an object", list: "a list"}


class CheckpointError(ConfigError):
    """A checkpoint is missing, damaged or does not fit this robot or run; the message names it."""


def config_path(directory: str | os.PathLike) -> Path:
    """Where a checkpoint directory keeps its policy_config.json."""
    return Path(directory) / CONFIG_FILE


def has_policy_config(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a policy_config.json (is a checkpoint rather than another layout)."""
    return config_path(directory).exists()


def build_policy_config(
    *,
    backend: str,
    base_model: str,
    image_spec: dict,
    cameras: list[str],
    horizon: int,
    statistics: dict | None,
    default_instruction: str,
    control_rate_hz: float | None,
    step: int,
    train_config: dict,
    representation: str = "absolute",
    extra: dict | None = None,
) -> dict:
    """The policy_config dict of a policy; `statistics` None means actions are not normalised.
    `extra` adds the backend's own sections (and may replace a field)."""
    config = {
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "base_model": base_model,
        "image_spec": dict(image_spec),
        "cameras": list(cameras),
        "joint_names": list(robot.JOINT_NAMES),
        "action_space": {
            "dim": robot.ACTION_DIM,
            "horizon": int(horizon),
            "kind": "absolute_joint_positions",
            "representation": representation,
        },
        "normalization": {"mode": "q01_q99" if statistics is not None else "none"},
        "dataset_statistics": statistics,
        "statistics_fingerprint": statistics.get("fingerprint") if statistics else None,
        "default_instruction": default_instruction,
        "control_rate_hz": control_rate_hz,
        "step": int(step),
        "train_config": train_config,
    }
    if extra:
        config.update(extra)
    return config


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write `data` as indented JSON through a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def write_policy_config(directory: str | os.PathLike, config: dict) -> Path:
    """Write `config` as the policy_config.json of `directory`; returns its path."""
    return write_json(config_path(directory), config)


def read_policy_config(directory: str | os.PathLike) -> dict:
    """The parsed policy_config.json of a checkpoint directory, with its required fields present
    and of the right kind; CheckpointError naming the file otherwise."""
    directory = Path(directory)
    path = config_path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing. A checkpoint directory written by `crane-x7-vla train` "
            f"(e.g. .../checkpoint-final) holds a {CONFIG_FILE}; is this the right directory?"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level, "
                              f"found {type(config).__name__}")
    for key in REQUIRED_FIELDS:
        _require(config, key, path)
    return config


def _require(config: dict, key: str, where):
    if key not in config:
        raise CheckpointError(f"{where}: field '{key}' is missing")
    value, kind = config[key], _FIELD_KINDS.get(key)
    if kind is not None and not isinstance(value, kind):
        raise CheckpointError(f"{where}: field '{key}' must be {_KIND_WORDS[kind]}, "
                              f"found {type(value).__name__}")
    return value


def check_joint_names(config: dict, expected, where) -> None:
    """Refuse a policy whose actions drive other joints, or the same joints in another order."""
    names = list(_require(config, "joint_names", where))
    expected = list(expected)
    if names == expected:
        return
    if sorted(names) == sorted(expected):
        raise CheckpointError(
            f"{where}: the checkpoint orders the joints differently from this robot "
            f"(checkpoint: {names}; robot: {expected}). Its actions would drive the wrong joints."
        )
    raise CheckpointError(
        f"{where}: the checkpoint was trained for other joints "
        f"(checkpoint: {names}; robot: {expected})."
    )


def _check_stat_entry(stats: dict, key: str, dim: int, where) -> None:
    entry = stats.get(key)
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: dataset_statistics has no '{key}' entry")
    for s in STAT_KEYS:
        values = entry.get(s)
        if not isinstance(values, list) or len(values) != dim:
            raise CheckpointError(f"{where}: dataset_statistics.{key}.{s} must be a list of {dim} numbers")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise CheckpointError(f"{where}: dataset_statistics.{key}.{s} holds a non-finite value")
    if any(lo > hi for lo, hi in zip(entry["q01"], entry["q99"])):
        raise CheckpointError(f"{where}: dataset_statistics.{key} has q01 above q99")


def check_statistics(config: dict, where, expected_fingerprint: str | None = None) -> None:
    """Refuse statistics that are missing, incomplete, or not the ones the checkpoint says it used."""
    mode = (config.get("normalization") or {}).get("mode", "q01_q99")
    stats = config.get("dataset_statistics")
    carried = config.get("statistics_fingerprint")
    if mode == "none" and stats is None:
        if expected_fingerprint:
            raise CheckpointError(
                f"{where}: the checkpoint carries no dataset statistics, so it cannot be checked "
                f"against the expected fingerprint {expected_fingerprint}"
            )
        return
    if not isinstance(stats, dict):
        raise CheckpointError(f"{where}: field 'dataset_statistics' is missing; "
                              f"the actions cannot be un-normalised")
    dim = int((config.get("action_space") or {}).get("dim", robot.ACTION_DIM))
    for key in ("action", "proprio"):
        _check_stat_entry(stats, key, dim, where)
    inner = stats.get("fingerprint")
    if not carried or not inner:
        raise CheckpointError(
            f"{where}: the statistics fingerprint is missing ('statistics_fingerprint' and "
            f"dataset_statistics.fingerprint are both required), so nothing proves these statistics "
            f"are the ones the model was trained with"
        )
    if carried != inner:
        raise CheckpointError(
            f"{where}: statistics_fingerprint {carried} does not match the fingerprint of the statistics "
            f"it carries ({inner}); the file was edited or assembled from two trainings"
        )
    if expected_fingerprint and expected_fingerprint != carried:
        raise CheckpointError(
            f"{where}: trained on statistics {carried}, "
            f"but this robot is configured for {expected_fingerprint}. "
            f"The checkpoint comes from a different dataset version; retrain or use the matching checkpoint."
        )


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config: dict, where, *, expected_joint_names=robot.JOINT_NAMES,
                    expected_fingerprint: str | None = None) -> None:
    """Refuse a policy config this robot cannot run: another format version, other joints, an
    action space or control rate that does not fit, or statistics that are incomplete or not the
    expected ones. `where` names the config in the messages (a file, a policy server)."""
    try:
        _validate(config, where, expected_joint_names, expected_fingerprint)
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind
        raise CheckpointError(f"{where}: a field holds a value of the wrong kind ({exc})") from None


def _validate(config: dict, where, expected_joint_names, expected_fingerprint: str | None) -> None:
    version = config.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version} is not supported "
                              f"(this version reads {FORMAT_VERSION})")
    backend = _require(config, "backend", where)
    if not backend.isidentifier():
        raise CheckpointError(f"{where}: backend '{backend}' is not a backend name")
    check_joint_names(config, expected_joint_names, where)
    space = _require(config, "action_space", where)
    dim, horizon = space.get("dim", -1), space.get("horizon", 0)
    if not _is_whole(dim) or dim != len(expected_joint_names):
        raise CheckpointError(f"{where}: action_space.dim is {dim!r:.40}, "
                              f"the robot has {len(expected_joint_names)} joints")
    if not _is_whole(horizon) or horizon < 1:
        raise CheckpointError(f"{where}: action_space.horizon must be a whole number of at least 1 "
                              f"(got {horizon!r:.40})")
    rate = config.get("control_rate_hz")
    if not isinstance(rate, (int, float)) or not rate > 0:
        raise CheckpointError(f"{where}: control_rate_hz must be a positive number (got {rate!r})")
    cameras = config.get("cameras", [])
    if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
        raise CheckpointError(f"{where}: cameras must be a list of camera names")
    check_statistics(config, where, expected_fingerprint)


def load_policy_config(directory: str | os.PathLike, *, expected_joint_names=robot.JOINT_NAMES,
                       expected_fingerprint: str | None = None) -> dict:
    """`read_policy_config` then `validate_config`: the config of a checkpoint this robot can run."""
    config = read_policy_config(directory)
    validate_config(config, config_path(directory), expected_joint_names=expected_joint_names,
                    expected_fingerprint=expected_fingerprint)
    return config


def fingerprint_of(path: str | os.PathLike) -> str:
    """The statistics fingerprint of a dataset directory or a dataset_statistics.json file, to
    check a checkpoint's statistics against (`expected_fingerprint`)."""
    from crane_x7_vla.episode import schema
    from crane_x7_vla.episode.stats import dataset_stats_entry

    p = Path(path)
    if p.is_dir():
        p = p / schema.STATS_FILE
    if not p.is_file():
        raise CheckpointError(f"{p}: no dataset statistics file")
    found = dataset_stats_entry(json.loads(p.read_text()), str(p)).get("fingerprint")
    if not found:
        raise CheckpointError(f"{p}: has no fingerprint; regenerate it with `crane-x7-vla dataset stats`")
    return found
