"""`load()` for checkpoints with backend "baseline" (see crane_x7_vla.policy.baselines)."""

from __future__ import annotations

from pathlib import Path

from crane_x7_vla.policy.baselines import HoldPolicy, MeanTrajectoryPolicy


def load(checkpoint_dir: Path, config: dict, device: str | None = None):
    kind = (config.get("baseline") or {}).get("kind")
    if kind == "hold":
        return HoldPolicy(config)
    if kind == "mean_trajectory":
        return MeanTrajectoryPolicy.load(checkpoint_dir, config)
    raise ValueError(f"{Path(checkpoint_dir) / 'policy_config.json'}: baseline.kind must be 'hold' or "
                     f"'mean_trajectory' (got {kind!r})")
