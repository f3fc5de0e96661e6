"""Load a trained policy from its checkpoint directory, refusing ones that do not fit the robot.

`load_policy(checkpoint_dir)` reads ``policy_config.json`` (see the checkpoint contract),
checks that the checkpoint commands the same joints in the same order as this robot and
that the normalisation statistics it carries are complete and consistent, then imports
``crane_x7_vla.backends.<backend>.policy`` and calls its ``load(checkpoint_dir, config,
device)``. Heavy libraries (torch, jax) are imported by the backend only. A checkpoint's own
parts (weights, a bundled base model) are read from its directory and never looked up on
a model hub; only a base model that training was given as a hub id is (openvla adapters).

Every policy object offers:
    policy.config   -> dict (policy_config.json)
    policy.predict(observation) -> (H, 8) float64 absolute joint targets
        observation = {"images": {camera: RGB uint8 (H, W, 3)}, "state": (8,), "instruction": str}
    policy.metadata -> dict (sent to clients by the policy server on connect)
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

from crane_x7_vla import robot

CONFIG_FILE = "policy_config.json"
FORMAT_VERSION = 1
STAT_KEYS = ("q01", "q99")
TORCH_BACKENDS = ("openvla",)  # backends whose load() takes cpu_threads


class PolicyLoadError(ValueError):
    """A checkpoint that cannot be used on this robot; the message says why and names the file."""


def read_policy_config(checkpoint_dir: str | os.PathLike) -> dict:
    """The parsed policy_config.json of a checkpoint directory (clear errors when absent or broken)."""
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise PolicyLoadError(f"{ckpt}: no such checkpoint directory")
    path = ckpt / CONFIG_FILE
    if not path.is_file():
        raise PolicyLoadError(
            f"{path}: missing. A checkpoint directory written by `crane-x7-vla train` "
            f"(e.g. .../checkpoint-final) holds a {CONFIG_FILE}; is this the right directory?"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PolicyLoadError(f"{path}: expected a JSON object at the top level")
    return config


def _require(config: dict, key: str, where: Path, kind=None):
    if key not in config:
        raise PolicyLoadError(f"{where}: field '{key}' is missing")
    value = config[key]
    if kind is not None and not isinstance(value, kind):
        raise PolicyLoadError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def check_joint_names(config: dict, expected, where: Path) -> None:
    names = list(_require(config, "joint_names", where, list))
    expected = list(expected)
    if names == expected:
        return
    if sorted(names) == sorted(expected):
        raise PolicyLoadError(
            f"{where}: the checkpoint orders the joints differently from this robot "
            f"(checkpoint: {names}; robot: {expected}). Its actions would drive the wrong joints."
        )
    raise PolicyLoadError(
        f"{where}: the checkpoint was trained for other joints "
        f"(checkpoint: {names}; robot: {expected})."
    )


def _check_stat_entry(stats: dict, key: str, dim: int, where: Path) -> None:
    entry = stats.get(key)
    if not isinstance(entry, dict):
        raise PolicyLoadError(f"{where}: dataset_statistics has no '{key}' entry")
    for s in STAT_KEYS:
        values = entry.get(s)
        if not isinstance(values, list) or len(values) != dim:
            raise PolicyLoadError(f"{where}: dataset_statistics.{key}.{s} must be a list of {dim} numbers")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise PolicyLoadError(f"{where}: dataset_statistics.{key}.{s} holds a non-finite value")
    if any(lo > hi for lo, hi in zip(entry["q01"], entry["q99"])):
        raise PolicyLoadError(f"{where}: dataset_statistics.{key} has q01 above q99")


def check_statistics(config: dict, where: Path, expected_fingerprint: str | None = None) -> None:
    """Refuse statistics that are missing, incomplete, or not the ones the checkpoint says it used."""
    mode = (config.get("normalization") or {}).get("mode", "q01_q99")
    stats = config.get("dataset_statistics")
    carried = config.get("statistics_fingerprint")
    if mode == "none" and stats is None:
        if expected_fingerprint:
            raise PolicyLoadError(
                f"{where}: the checkpoint carries no dataset statistics, so it cannot be checked "
                f"against the expected fingerprint {expected_fingerprint}"
            )
        return
    if not isinstance(stats, dict):
        raise PolicyLoadError(f"{where}: field 'dataset_statistics' is missing; the actions cannot be un-normalised")
    dim = int((config.get("action_space") or {}).get("dim", robot.ACTION_DIM))
    for key in ("action", "proprio"):
        _check_stat_entry(stats, key, dim, where)
    inner = stats.get("fingerprint")
    if not carried or not inner:
        raise PolicyLoadError(
            f"{where}: the statistics fingerprint is missing ('statistics_fingerprint' and "
            f"dataset_statistics.fingerprint are both required), so nothing proves these statistics "
            f"are the ones the model was trained with"
        )
    if carried != inner:
        raise PolicyLoadError(
            f"{where}: statistics_fingerprint {carried} does not match the fingerprint of the statistics "
            f"it carries ({inner}); the file was edited or assembled from two trainings"
        )
    if expected_fingerprint and expected_fingerprint != carried:
        raise PolicyLoadError(
            f"{where}: trained on statistics {carried}, but this robot is configured for {expected_fingerprint}. "
            f"The checkpoint comes from a different dataset version; retrain or use the matching checkpoint."
        )


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config: dict, where: Path, *, expected_joint_names=robot.JOINT_NAMES,
                    expected_fingerprint: str | None = None) -> None:
    version = config.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise PolicyLoadError(f"{where}: format_version {version} is not supported (this version reads {FORMAT_VERSION})")
    backend = _require(config, "backend", where, str)
    if not backend.isidentifier():
        raise PolicyLoadError(f"{where}: backend '{backend}' is not a backend name")
    check_joint_names(config, expected_joint_names, where)
    space = _require(config, "action_space", where, dict)
    dim, horizon = space.get("dim", -1), space.get("horizon", 0)
    if not _is_whole(dim) or dim != len(expected_joint_names):
        raise PolicyLoadError(f"{where}: action_space.dim is {dim!r:.40}, the robot has {len(expected_joint_names)} joints")
    if not _is_whole(horizon) or horizon < 1:
        raise PolicyLoadError(f"{where}: action_space.horizon must be a whole number of at least 1 (got {horizon!r:.40})")
    rate = config.get("control_rate_hz")
    if not isinstance(rate, (int, float)) or not rate > 0:
        raise PolicyLoadError(f"{where}: control_rate_hz must be a positive number (got {rate!r})")
    cameras = config.get("cameras", [])
    if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
        raise PolicyLoadError(f"{where}: cameras must be a list of camera names")
    check_statistics(config, where, expected_fingerprint)


def fingerprint_of(path: str | os.PathLike) -> str:
    """The statistics fingerprint of a dataset directory or a dataset_statistics.json file."""
    from crane_x7_vla.episode import schema
    from crane_x7_vla.episode.stats import dataset_stats_entry

    p = Path(path)
    if p.is_dir():
        p = p / schema.STATS_FILE
    if not p.is_file():
        raise PolicyLoadError(f"{p}: no dataset statistics file")
    found = dataset_stats_entry(json.loads(p.read_text()), str(p)).get("fingerprint")
    if not found:
        raise PolicyLoadError(f"{p}: has no fingerprint; regenerate it with `crane-x7-vla dataset stats`")
    return found


def load_policy(checkpoint_dir: str | os.PathLike, device: str | None = None, *,
                expected_joint_names=robot.JOINT_NAMES, expected_fingerprint: str | None = None,
                cpu_threads: int = 0, unnorm_key: str | None = None, openpi: dict | None = None):
    """Load the policy stored in ``checkpoint_dir`` (see the module docstring).

    ``cpu_threads`` > 0 sets the threads of a PyTorch model running on the CPU (the OpenVLA
    backend; 0 keeps the library's default, one per core); the other backends choose their own.
    A model folder in OpenVLA's published layout (config.json of model_type "openvla", no
    policy_config.json) is served as it is, with the statistics ``unnorm_key`` names in its
    norm_stats (default: "crane_x7", else its only key); see backends/openvla/published.py.
    A directory in openpi's on-disk layout (params/ + assets/, no policy_config.json) is served
    as it is with the serving options ``openpi`` gives (asset_id, tokenizer, image_slots, ...;
    see backends/openpi/served.py)."""
    if not isinstance(cpu_threads, int) or cpu_threads < 0:
        raise PolicyLoadError(f"cpu_threads must be a whole number >= 0 (0 = the library's default), got {cpu_threads!r}")
    ckpt = Path(checkpoint_dir)
    if _is_openvla_model_dir(ckpt):
        from crane_x7_vla.backends.openvla.published import PublishedLayoutError, published_policy_config

        try:
            config = published_policy_config(ckpt, unnorm_key, joint_names=expected_joint_names)
        except PublishedLayoutError as exc:
            raise PolicyLoadError(str(exc)) from None
        where = ckpt / "config.json"
    elif _is_openpi_dir(ckpt):
        from crane_x7_vla.backends.openpi.served import OpenpiDirError, openpi_policy_config

        if unnorm_key is not None:
            raise PolicyLoadError(f"{ckpt}: an openpi directory; choose its norm stats with --asset-id, not --unnorm-key")
        try:
            config = openpi_policy_config(ckpt, openpi, joint_names=expected_joint_names)
        except OpenpiDirError as exc:
            raise PolicyLoadError(str(exc)) from None
        where = ckpt / "params"
    else:
        if unnorm_key is not None:
            raise PolicyLoadError(f"{ckpt}: --unnorm-key chooses the statistics of a model folder in OpenVLA's "
                                  f"published layout; a checkpoint carries its own in {CONFIG_FILE}")
        if any(v not in (None, False) for v in (openpi or {}).values()):
            raise PolicyLoadError(f"{ckpt}: the openpi serving options ({', '.join(sorted(openpi))}) apply to a "
                                  f"directory in openpi's layout (params/, assets/); a checkpoint carries its own")
        config = read_policy_config(ckpt)
        where = ckpt / CONFIG_FILE
    validate_config(config, where, expected_joint_names=expected_joint_names,
                    expected_fingerprint=expected_fingerprint)
    module_name = f"crane_x7_vla.backends.{config['backend']}.policy"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PolicyLoadError(f"{where}: unknown backend '{config['backend']}' (no module {module_name})") from None
        raise
    from crane_x7_vla.training.checkpoint import CheckpointError
    from crane_x7_vla.training.config import ConfigError

    try:
        if cpu_threads and config["backend"] in TORCH_BACKENDS:
            return module.load(ckpt, config, device, cpu_threads=cpu_threads)
        return module.load(ckpt, config, device)
    except (CheckpointError, ConfigError) as exc:  # a missing part or an unusable base model: say which
        raise PolicyLoadError(str(exc)) from exc


def _is_openvla_model_dir(path: Path) -> bool:
    """A folder with an OpenVLA config.json (model_type "openvla") and no policy_config.json."""
    if (path / CONFIG_FILE).exists() or not (path / "config.json").is_file():
        return False
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "openvla"
    except (OSError, ValueError):
        return False


def _is_openpi_dir(path: Path) -> bool:
    """A folder with openpi parameters (params/, an orbax directory) and no policy_config.json."""
    from crane_x7_vla.backends.openpi.served import is_openpi_dir

    return is_openpi_dir(path)


def RemotePolicy(url: str, token: str | None = None, **kwargs):  # noqa: N802 (a class-like factory)
    """A policy served elsewhere (openpi websocket protocol); same predict interface."""
    from crane_x7_vla.policy.client import RemotePolicy as _Remote

    return _Remote(url, token=token, **kwargs)


def warm_up(policy) -> float:
    """One prediction on a blank picture at the home pose, so the first real call is not also
    the one that compiles the model (openpi's JAX program takes seconds to build) or fills the
    caches; returns its seconds. Policies with a `reset` are reset after it."""
    import time

    import numpy as np

    meta = getattr(policy, "metadata", None) or {}
    width, height = meta.get("image_size") or (224, 224)
    cameras = meta.get("cameras") or list(policy.config.get("cameras") or [])
    observation = {
        "images": {cam: np.zeros((int(height), int(width), 3), np.uint8) for cam in cameras},
        "state": robot.home_state(),
        "instruction": policy.config.get("default_instruction") or "warm up",
        "episode_time": 0.0,
    }
    t0 = time.perf_counter()
    policy.predict(observation)
    seconds = time.perf_counter() - t0
    if hasattr(policy, "reset"):
        policy.reset()
    return seconds
