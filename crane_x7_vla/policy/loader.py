"""Load a trained policy from its checkpoint directory, refusing ones that do not fit the robot.

`load_policy(checkpoint_dir)` reads the checkpoint's policy config
(crane_x7_vla.checkpoint_contract), checks that the checkpoint commands the same joints in
the same order as this robot and that the normalisation statistics it carries are complete
and consistent, then looks its backend up in the registry (`BACKENDS`: backend name ->
module) and calls that module's ``load(checkpoint_dir, config, device)``. A folder in another
layout (`LAYOUTS`: OpenVLA's published layout, openpi's own) is described as a policy config
by its backend first and checked the same way. Heavy libraries (torch, jax) are imported by
the backend only. A checkpoint's own parts (weights, a bundled base model) are read from its
directory and never looked up on a model hub; only a base model that training was given as
a hub id is (openvla adapters).

Every policy object (the `Policy` protocol) offers:
    policy.config   -> dict (the policy config)
    policy.predict(observation) -> (H, 8) float64 absolute joint targets
        observation = {"images": {camera: RGB uint8 (H, W, 3)}, "state": (8,), "instruction": str}
    policy.metadata -> dict (sent to clients by the policy server on connect)
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from crane_x7_vla import robot
from crane_x7_vla.checkpoint_contract import (CONFIG_FILE, CheckpointError, config_path, load_policy_config,
                                              validate_config)
from crane_x7_vla.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Policy(Protocol):
    """What every policy offers, local or remote (see the module docstring)."""

    config: dict

    @property
    def metadata(self) -> dict: ...

    def predict(self, observation: dict) -> np.ndarray: ...


@dataclass(frozen=True)
class Backend:
    """How the policies of one backend are loaded: ``module.load(checkpoint_dir, config, device,
    **options)``, with ``options`` the keyword options that load() takes."""

    module: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A folder without a policy_config.json that is served as it is: ``module.<detect>(path)``
    recognises one and ``module.<describe>(path, options, joint_names=...)`` writes its policy
    config (raising CheckpointError). ``option`` names the load_policy argument it takes its
    options from; ``where`` is the file that config is read from, named in messages;
    ``refused`` pairs each load_policy option that does not apply with the reason."""

    name: str
    module: str
    detect: str
    describe: str
    option: str
    where: str
    refused: tuple[tuple[str, str], ...] = ()


# backend name (policy_config.json "backend") -> its loader; the module is imported only when
# a policy of that backend is loaded, so torch (openvla) and jax (openpi) stay out otherwise
BACKENDS: dict[str, Backend] = {
    "openvla": Backend("crane_x7_vla.backends.openvla.policy", options=("cpu_threads",)),
    "openpi": Backend("crane_x7_vla.backends.openpi.policy"),
    "baseline": Backend("crane_x7_vla.backends.baseline.policy"),  # its kinds: backends/baseline/policy.py
}

# other layouts a folder may have, tried in this order before reading a policy_config.json
LAYOUTS: tuple[Layout, ...] = (
    Layout("openvla-published", "crane_x7_vla.backends.openvla.published", "is_published_dir",
           "published_policy_config", option="unnorm_key", where="config.json"),
    Layout("openpi", "crane_x7_vla.backends.openpi.served", "is_openpi_dir", "openpi_policy_config",
           option="openpi", where="params",
           refused=(("unnorm_key",
                     "an openpi directory; choose its norm stats with --asset-id, not --unnorm-key"),)),
)


def register_backend(name: str, module: str, options: tuple[str, ...] = ()) -> None:
    """Make checkpoints whose backend is `name` load through `module.load(...)`."""
    BACKENDS[name] = Backend(module, tuple(options))


def layout_of(path: str | os.PathLike) -> Layout | None:
    """The layout of a folder without a policy_config.json, or None (a checkpoint or nothing known)."""
    for layout in LAYOUTS:
        if getattr(importlib.import_module(layout.module), layout.detect)(path):
            return layout
    return None


def _layout_config(layout: Layout, ckpt: Path, options: dict, joint_names) -> dict:
    """The policy config of a folder in `layout`, after refusing the options that do not apply to it."""
    for name, why in layout.refused:
        if options.get(name) is not None:
            raise CheckpointError(f"{ckpt}: {why}")
    module = importlib.import_module(layout.module)
    return getattr(module, layout.describe)(ckpt, options.get(layout.option), joint_names=joint_names)


def load_policy(checkpoint_dir: str | os.PathLike, device: str | None = None, *,
                expected_joint_names=robot.JOINT_NAMES, expected_fingerprint: str | None = None,
                cpu_threads: int = 0, unnorm_key: str | None = None, openpi: dict | None = None) -> Policy:
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
        raise CheckpointError(f"cpu_threads must be a whole number >= 0 (0 = the library's default), "
                              f"got {cpu_threads!r}")
    ckpt = Path(checkpoint_dir)
    layout = layout_of(ckpt)
    if layout is not None:
        options = {"unnorm_key": unnorm_key, "openpi": openpi}
        config = _layout_config(layout, ckpt, options, expected_joint_names)
        where = ckpt / layout.where
        validate_config(config, where, expected_joint_names=expected_joint_names,
                        expected_fingerprint=expected_fingerprint)
    else:
        if unnorm_key is not None:
            raise CheckpointError(f"{ckpt}: --unnorm-key chooses the statistics of a model folder in OpenVLA's "
                                  f"published layout; a checkpoint carries its own in {CONFIG_FILE}")
        if any(v not in (None, False) for v in (openpi or {}).values()):
            raise CheckpointError(f"{ckpt}: the openpi serving options ({', '.join(sorted(openpi))}) apply to a "
                                  f"directory in openpi's layout (params/, assets/); a checkpoint carries its own")
        config = load_policy_config(ckpt, expected_joint_names=expected_joint_names,
                                    expected_fingerprint=expected_fingerprint)
        where = config_path(ckpt)
    backend = BACKENDS.get(config["backend"])
    if backend is None:
        raise CheckpointError(f"{where}: unknown backend '{config['backend']}' "
                              f"(backends: {', '.join(sorted(BACKENDS))})")
    given = {"cpu_threads": cpu_threads} if cpu_threads else {}  # 0: the backend's own choice
    module = importlib.import_module(backend.module)
    try:
        return module.load(ckpt, config, device, **{k: v for k, v in given.items() if k in backend.options})
    except CheckpointError:
        raise
    except ConfigError as exc:  # an unusable base model or device: one line naming it
        raise CheckpointError(str(exc)) from exc


def warm_up(policy, **extra) -> float:
    """One prediction on a blank picture at the home pose, so the first real call is not also
    the one that compiles the model (openpi's JAX program takes seconds to build) or fills the
    caches; returns its seconds. `extra` adds observation fields (e.g. the committed actions of
    a guided, real-time-chunking call, a program of its own). Policies with a `reset` are reset
    after it."""
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
        **extra,
    }
    t0 = time.perf_counter()
    policy.predict(observation)
    seconds = time.perf_counter() - t0
    if hasattr(policy, "reset"):
        policy.reset()
    return seconds
