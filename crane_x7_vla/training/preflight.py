"""Checks every backend runs before building a model: data, statistics, resume checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crane_x7_vla.training import checkpoint
from crane_x7_vla.training.config import TrainConfig
from crane_x7_vla.training.data import TrainingData, load_training_data


@dataclass
class Preflight:
    data: TrainingData
    resume_dir: Path | None = None
    resume_config: dict | None = None  # the checkpoint's policy_config.json
    resume_state: dict | None = None  # the checkpoint's trainer_state.json


def preflight(cfg: TrainConfig) -> Preflight:
    """Raise DatasetError / CheckpointError with a clear message, or return what training needs."""
    resume_dir = Path(cfg.resume_from_checkpoint) if cfg.resume_from_checkpoint else None
    if resume_dir is not None:  # the cheap check first: a checkpoint of the other backend
        checkpoint.check_resume(resume_dir, backend=cfg.backend)
    data = load_training_data(cfg.data_root, cameras=cfg.cameras, val_ratio=cfg.val_ratio, seed=cfg.seed,
                              default_instruction=cfg.instruction)
    result = Preflight(data=data)
    if resume_dir is not None:
        result.resume_dir = resume_dir
        result.resume_config = checkpoint.check_resume(resume_dir, backend=cfg.backend, fingerprint=data.fingerprint,
                                                       base_model=cfg.model)
        result.resume_state = checkpoint.read_trainer_state(resume_dir)
    return result
