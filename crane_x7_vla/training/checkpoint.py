"""Checkpoint directories, `policy_config.json` and resume bookkeeping (both backends).

    {output_dir}/checkpoint-{step}/   every --save-steps
    {output_dir}/checkpoint-final/    at the end: everything deployment needs

Each directory holds `policy_config.json` (self-describing: backend, base model, image
preprocessing, joint order, action space, dataset statistics + fingerprint, default
instruction, train config) and `trainer_state.json` (step, data position, ...); the backend
adds its weights, optimizer, scheduler and RNG state. A checkpoint is written into a
hidden temporary directory and renamed into place, so a crash never leaves a half-written
`checkpoint-N` that resume would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from crane_x7_vla import robot

FORMAT_VERSION = 1
POLICY_CONFIG = "policy_config.json"
TRAINER_STATE = "trainer_state.json"
FINAL_NAME = "checkpoint-final"
_STEP_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or does not fit this run; the message names it."""


def checkpoint_dir(output_dir, step: int | None) -> Path:
    """`checkpoint-{step}`, or `checkpoint-final` for step None."""
    return Path(output_dir) / (FINAL_NAME if step is None else f"checkpoint-{int(step)}")


def list_checkpoints(output_dir) -> list[tuple[int, Path]]:
    """Intermediate checkpoints (step, dir), oldest first."""
    out = []
    root = Path(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / POLICY_CONFIG).exists():
                out.append((int(m.group(1)), p))
    return sorted(out)


def build_policy_config(
    *,
    backend: str,
    base_model: str,
    image_spec: dict,
    cameras: list[str],
    horizon: int,
    statistics: dict,
    default_instruction: str,
    control_rate_hz: float | None,
    step: int,
    train_config: dict,
    representation: str = "absolute",
    extra: dict | None = None,
) -> dict:
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
        "normalization": {"mode": "q01_q99"},
        "dataset_statistics": statistics,
        "statistics_fingerprint": statistics.get("fingerprint"),
        "default_instruction": default_instruction,
        "control_rate_hz": control_rate_hz,
        "step": int(step),
        "train_config": train_config,
    }
    if extra:
        config.update(extra)
    return config


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_policy_config(directory, config: dict) -> Path:
    path = Path(directory) / POLICY_CONFIG
    _write_json(path, config)
    return path


def read_policy_config(directory) -> dict:
    directory = Path(directory)
    path = directory / POLICY_CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not path.exists():
        raise CheckpointError(f"{path} not found: {directory} is not a crane_x7_vla checkpoint")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level, found {type(config).__name__}")
    for key in ("backend", "image_spec", "joint_names", "action_space", "dataset_statistics"):
        if key not in config:
            raise CheckpointError(f"{path}: '{key}' is missing")
    for key, kind in (("backend", str), ("image_spec", dict), ("joint_names", list), ("action_space", dict)):
        if not isinstance(config[key], kind):
            raise CheckpointError(f"{path}: '{key}' must be {_KIND_WORDS[kind]}, found {type(config[key]).__name__}")
    return config


_KIND_WORDS = {str: "text", dict: "an object", list: "a list"}


def write_trainer_state(directory, state: dict) -> Path:
    path = Path(directory) / TRAINER_STATE
    _write_json(path, state)
    return path


def read_trainer_state(directory) -> dict:
    path = Path(directory) / TRAINER_STATE
    if not path.exists():
        raise CheckpointError(
            f"{path} not found: {directory} holds no resume state (was it written by an older version, "
            f"or is it a merged/exported model?)"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level, found {type(state).__name__}")
    return state


def check_resume(directory, *, backend: str, fingerprint: str | None = None, base_model: str | None = None) -> dict:
    """The checkpoint's policy config, after refusing one this run cannot continue."""
    config = read_policy_config(directory)
    found = config.get("backend")
    if found != backend:
        raise CheckpointError(
            f"{directory} was written by the '{found}' backend; this run uses '{backend}'. "
            f"Resume it with --backend {found}, or start a new run without --resume-from-checkpoint"
        )
    if fingerprint is not None and config.get("statistics_fingerprint") not in (None, fingerprint):
        raise CheckpointError(
            f"{directory} was trained on a different dataset (statistics fingerprint "
            f"{config.get('statistics_fingerprint')} vs {fingerprint} for --data-root); resuming would mix "
            f"normalisations. Use the same episodes, or start a new run"
        )
    if base_model is not None and config.get("base_model") not in (None, base_model):
        raise CheckpointError(
            f"{directory} fine-tunes '{config.get('base_model')}', but --model is '{base_model}'"
        )
    read_trainer_state(directory)
    return config


class CheckpointWriter:
    """Write a checkpoint atomically: fill `.tmp` then rename it into place.

        with CheckpointWriter(output_dir, step) as d:
            ...write files into d...
    """

    def __init__(self, output_dir, step: int | None):
        self.final = checkpoint_dir(output_dir, step)
        self.tmp = self.final.with_name("." + self.final.name + ".tmp")

    def __enter__(self) -> Path:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():
            old = self.final.with_name("." + self.final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.final, old)
            os.rename(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.final)
