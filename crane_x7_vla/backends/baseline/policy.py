"""`load()` for checkpoints with backend "baseline" (see crane_x7_vla.policy.baselines)."""

from __future__ import annotations

from pathlib import Path

from crane_x7_vla.checkpoint_contract import CheckpointError, config_path
from crane_x7_vla.policy.baselines import HoldPolicy, MeanTrajectoryPolicy

# baseline.kind -> how its policy is made from the checkpoint directory and its config
KINDS = {
    "hold": lambda checkpoint_dir, config: HoldPolicy(config),
    "mean_trajectory": MeanTrajectoryPolicy.load,
}


def load(checkpoint_dir: Path, config: dict, device: str | None = None):
    kind = (config.get("baseline") or {}).get("kind")
    make = KINDS.get(kind) if isinstance(kind, str) else None
    if make is None:
        raise CheckpointError(f"{config_path(checkpoint_dir)}: baseline.kind must be 'hold' or "
                              f"'mean_trajectory' (got {kind!r})")
    return make(checkpoint_dir, config)
