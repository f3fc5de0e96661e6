"""Baseline policies: what a learned policy has to beat, and a known-good input for the node.

* `HoldPolicy` commands the current state (the arm stays where it is).
* `MeanTrajectoryPolicy` replays the mean demonstrated trajectory of a dataset, indexed by
  time since the start of the episode (shorter episodes are held at their last step when
  averaging). It ignores the images; it is what "just replay the demonstrations" achieves.

Both save as ordinary checkpoint directories (a policy config with backend "baseline"),
so `load_policy`, the policy server and the inference node load them like trained ones.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.checkpoint_contract import build_policy_config, write_policy_config
from crane_x7_vla.preprocess import ImageSpec

TRAJECTORY_FILE = "mean_trajectory.npy"


def baseline_config(kind: str, *, horizon: int, control_rate_hz: float, cameras=("primary",),
                    stats: dict | None = None, instruction: str = "", extra: dict | None = None) -> dict:
    """The policy config of a baseline policy (no statistics: actions are not normalised)."""
    return build_policy_config(
        backend="baseline", base_model=kind, image_spec=ImageSpec().to_dict(), cameras=list(cameras),
        horizon=horizon, statistics=stats, default_instruction=instruction, control_rate_hz=float(control_rate_hz),
        step=0, train_config=dict(extra or {}), extra={"baseline": {"kind": kind}},
    )


def _state_of(observation: dict) -> np.ndarray:
    if "state" not in observation:
        raise ValueError("observation has no 'state' (8 joint positions)")
    state = np.asarray(observation["state"], dtype=np.float64).reshape(-1)
    if state.shape != (robot.ACTION_DIM,):
        raise ValueError(f"observation 'state' must have {robot.ACTION_DIM} values, got {state.shape}")
    return state


class HoldPolicy:
    """Predicts the current state for every step of the chunk."""

    def __init__(self, config: dict | None = None, *, horizon: int = 1, control_rate_hz: float = 10.0,
                 cameras=("primary",)):
        self.config = config or baseline_config("hold", horizon=horizon, control_rate_hz=control_rate_hz,
                                                cameras=cameras)
        self.horizon = int(self.config["action_space"]["horizon"])

    @property
    def metadata(self) -> dict:
        return {"policy_config": self.config}

    def reset(self) -> None:
        pass

    def predict(self, observation: dict) -> np.ndarray:
        return np.tile(_state_of(observation), (self.horizon, 1))

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_policy_config(out, self.config)
        return out


def mean_trajectory(actions: list[np.ndarray]) -> np.ndarray:
    """(T_max, 8) mean over episodes of their (T_i, 8) actions, each held at its last step."""
    if not actions:
        raise ValueError("no episodes to average")
    length = max(len(a) for a in actions)
    padded = [np.concatenate([a, np.repeat(a[-1:], length - len(a), axis=0)]) for a in actions]
    return np.mean(padded, axis=0)


class MeanTrajectoryPolicy:
    """Replays a (T, 8) trajectory: the chunk at episode time t starts at step round(t * rate).

    The episode time comes from ``observation["episode_time"]`` (seconds since the episode
    started) when given; otherwise from the wall clock since the first predict after reset().
    """

    def __init__(self, trajectory: np.ndarray, config: dict):
        trajectory = np.asarray(trajectory, dtype=np.float64)
        if trajectory.ndim != 2 or trajectory.shape[1] != robot.ACTION_DIM or len(trajectory) == 0:
            raise ValueError(f"mean trajectory must be (T, {robot.ACTION_DIM}), got {trajectory.shape}")
        if not np.all(np.isfinite(trajectory)):
            raise ValueError("mean trajectory holds non-finite values")
        self.trajectory = trajectory
        self.config = config
        self.horizon = int(config["action_space"]["horizon"])
        self.rate = float(config["control_rate_hz"])
        self._t0: float | None = None

    @classmethod
    def from_dataset(cls, data_root: str | os.PathLike, *, horizon: int = 10, fps: float | None = None):
        from crane_x7_vla.episode.stats import compute_statistics, load_arrays

        episodes = load_arrays(data_root)
        stats = compute_statistics(episodes)
        rates = {e.fps for e in episodes if e.fps}
        if fps is None:
            if len(rates) > 1:
                raise ValueError(f"{data_root}: episodes were recorded at different rates {sorted(rates)}; pass fps=")
            fps = rates.pop() if rates else 10.0
        cameras = sorted({c for e in episodes if e.meta for c in e.meta.cameras}) or ["primary"]
        instruction = Counter(e.instruction for e in episodes).most_common(1)[0][0]
        config = baseline_config(
            "mean_trajectory", horizon=horizon, control_rate_hz=fps, cameras=cameras, stats=stats,
            instruction=instruction,
            extra={"data_root": str(Path(data_root).resolve()), "episodes": len(episodes)},
        )
        config["baseline"]["file"] = TRAJECTORY_FILE
        return cls(mean_trajectory([e.action for e in episodes]), config)

    @property
    def metadata(self) -> dict:
        return {"policy_config": self.config}

    def reset(self) -> None:
        self._t0 = None

    def _episode_time(self, observation: dict) -> float:
        if observation.get("episode_time") is not None:
            return max(0.0, float(observation["episode_time"]))
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    def predict(self, observation: dict) -> np.ndarray:
        start = int(round(self._episode_time(observation) * self.rate))
        idx = np.minimum(np.arange(start, start + self.horizon), len(self.trajectory) - 1)
        return self.trajectory[idx].copy()

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / TRAJECTORY_FILE, self.trajectory)
        write_policy_config(out, self.config)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, config: dict):
        path = Path(directory) / config.get("baseline", {}).get("file", TRAJECTORY_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the mean trajectory of this baseline checkpoint is missing")
        return cls(np.load(path, allow_pickle=False), config)
