"""Checkpoint directories and resume bookkeeping (both backends).

    {output_dir}/checkpoint-{step}/   every --save-steps
    {output_dir}/checkpoint-final/    at the end: everything deployment needs

Each directory holds the policy config (crane_x7_vla.checkpoint_contract: backend, base
model, image preprocessing, joint order, action space, dataset statistics + fingerprint,
default instruction, train config) and `trainer_state.json` (step, data position, ...); the backend
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

from crane_x7_vla.checkpoint_contract import CheckpointError, has_policy_config, read_policy_config, write_json

TRAINER_STATE = "trainer_state.json"
FINAL_NAME = "checkpoint-final"
_STEP_RE = re.compile(r"^checkpoint-(\d+)$")


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
            if m and has_policy_config(p):
                out.append((int(m.group(1)), p))
    return sorted(out)


def write_trainer_state(directory, state: dict) -> Path:
    path = Path(directory) / TRAINER_STATE
    write_json(path, state)
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
