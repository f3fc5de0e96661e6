"""Action representation of the OpenPI backend, shared by training and deployment.

Robot space: 8 absolute joint positions (7 arm joints + gripper), robot.JOINT_NAMES order.
Model space: arm joints as DELTAS from the current state, gripper absolute (DELTA_MASK),
normalised and zero-padded to a fixed width (32 as in openpi, so one network shape serves
any arm). The state is normalised the same way with state statistics and padded.

Two normalisations (`ActionSpace.normalization`):
  "quantile"  q01..q99 -> [-1, 1], clipped (this backend's own presets);
  "zscore"    (x - mean) / (std + 1e-6), unclipped (openpi's π0; its quantile variant is
              for π0-FAST / π0.5).

Why deltas: a chunk of absolute targets is mostly "where the arm already is"; deltas
from the current state leave the network only the motion to predict, and the gripper,
an open/close command, stays absolute. Delta statistics depend on the horizon, so
they are computed from the episodes at training start and stored in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crane_x7_vla.checkpoint_contract import CONFIG_FILE
from crane_x7_vla.preprocess import (  # shared with the openvla backend
    DELTA_ARM_ABSOLUTE_GRIPPER as REPRESENTATION,
    DELTA_MASK,
    GOAL_BOUNDS,
    Normalizer,
    model_action_statistics,
    to_absolute,
    to_delta,
)

__all__ = [
    "DELTA_MASK",
    "REPRESENTATION",
    "ActionSpace",
    "chunk",
    "model_action_statistics",
    "pad",
    "to_absolute",
    "to_delta",
]


def pad(x: np.ndarray, width: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > width:
        raise ValueError(f"cannot pad {x.shape[-1]} values into a width of {width}")
    out = np.zeros(x.shape[:-1] + (width,), np.float32)
    out[..., : x.shape[-1]] = x
    return out


def chunk(actions: np.ndarray, start: int, horizon: int) -> np.ndarray:
    """actions[start : start + horizon], padded by repeating the episode's last action."""
    idx = np.minimum(np.arange(start, start + horizon), len(actions) - 1)
    return actions[idx]


@dataclass
class ActionSpace:
    """State/action <-> model arrays for one checkpoint."""

    horizon: int
    padded_dim: int
    action_stats: dict  # model-space statistics (q01/q99/mean/std...), 8 values each
    state_stats: dict  # state statistics (the dataset's proprio statistics, or an openpi checkpoint's)
    mask: np.ndarray = field(default_factory=DELTA_MASK.copy)
    normalization: str = "quantile"  # NORMALIZATIONS
    state_from_dataset: bool = True  # state_stats are the dataset's proprio entry (else stored here)
    # where the robot's dimensions sit in the model's padded vectors (None: the first ones, in order)
    action_dims: tuple | None = None
    state_dims: tuple | None = None
    # where the goal point (3 values, preprocess.goal_point) sits in every action (None: not written)
    goal_dims: tuple | None = None

    def __post_init__(self):
        self.mask = np.asarray(self.mask, bool)
        n = len(self.mask)
        for name in ("action_dims", "state_dims"):
            dims = getattr(self, name)
            if dims is None:
                continue
            dims = tuple(int(d) for d in dims)
            if len(dims) != n or len(set(dims)) != n or not all(0 <= d < self.padded_dim for d in dims):
                raise ValueError(f"{name} must name {n} different positions below {self.padded_dim} (got {list(dims)})")
            setattr(self, name, None if dims == tuple(range(n)) else dims)
        if self.goal_dims is not None:
            goal = tuple(int(d) for d in self.goal_dims)
            robot = set(self.action_dims or range(n))
            if len(goal) != 3 or len(set(goal)) != 3 or robot & set(goal) or not all(0 <= d < self.padded_dim
                                                                                      for d in goal):
                raise ValueError(f"goal_dims must name 3 different positions below {self.padded_dim} that hold no "
                                 f"robot action (got {list(goal)})")
            self.goal_dims = goal
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS} (got {self.normalization!r})")
        make = ZScore.from_stats if self.normalization == "zscore" else Normalizer.from_stats
        self._act = make({"action": self.action_stats}, "action")
        self._state = make({"proprio": self.state_stats}, "proprio")

    def _place(self, x: np.ndarray, dims) -> np.ndarray:
        if dims is None:
            return pad(x, self.padded_dim)
        out = np.zeros(x.shape[:-1] + (self.padded_dim,), np.float32)
        out[..., list(dims)] = x
        return out

    def encode_state(self, state: np.ndarray) -> np.ndarray:
        return self._place(self._state.normalize(state), self.state_dims)

    def encode_actions(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Absolute targets (..., H, 8) + state (..., 8) -> (..., H, padded_dim) in [-1, 1]."""
        return self._place(self._act.normalize(to_delta(actions, state, self.mask)), self.action_dims)

    def encode_goal(self, goal: np.ndarray) -> np.ndarray:
        """Goal points (..., 3) in metres, arm base frame -> [-1, 1] over preprocess.GOAL_BOUNDS."""
        return _GOAL.normalize(goal)

    def decode_goal(self, model_actions: np.ndarray) -> np.ndarray:
        """(..., H, padded_dim) model output -> (..., 3) the goal point the chunk writes (mean over
        its steps), metres in the arm's base frame. Needs goal_dims."""
        return _GOAL.unnormalize(np.asarray(model_actions, np.float64)[..., list(self.goal_dims)].mean(axis=-2))

    def training_actions(self, actions: np.ndarray, state: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
        """encode_actions, with the goal point (..., 3) written into goal_dims of every step."""
        out = self.encode_actions(actions, state)
        if self.goal_dims is not None:
            if goal is None:
                raise ValueError("this action space writes the goal point: the batch has none")
            out[..., list(self.goal_dims)] = self.encode_goal(goal)[..., None, :]
        return out

    def decode_actions(self, model_actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(..., H, padded_dim) model output + state (..., 8) -> absolute targets (..., H, 8) float64."""
        model_actions = np.asarray(model_actions)
        robot_part = (
            model_actions[..., : len(self.mask)]
            if self.action_dims is None
            else model_actions[..., list(self.action_dims)]
        )
        return to_absolute(self._act.unnormalize(robot_part), state, self.mask)

    def to_dict(self) -> dict:
        """The `action_space` entry of policy_config.json."""
        out = {
            "dim": len(self.mask),
            "horizon": self.horizon,
            "kind": "absolute_joint_positions",
            "representation": REPRESENTATION,
            "delta_mask": self.mask.tolist(),
            "padded_dim": self.padded_dim,
            "model_statistics": self.action_stats,
            "normalization": self.normalization,
        }
        if not self.state_from_dataset:
            out["state_statistics"] = self.state_stats
        if self.goal_dims is not None:
            out["goal_dims"] = list(self.goal_dims)
        if self.action_dims is not None or self.state_dims is not None:
            n = len(self.mask)
            out["model_dims"] = {
                "action": list(self.action_dims or range(n)),
                "state": list(self.state_dims or range(n)),
            }
        return out

    @classmethod
    def from_config(cls, config: dict) -> "ActionSpace":
        where = CONFIG_FILE
        space = config.get("action_space") or {}
        if space.get("representation") != REPRESENTATION or "model_statistics" not in space:
            raise ValueError(
                f"{where}: action_space is not an OpenPI action space "
                f"(representation {space.get('representation')!r}, needs {REPRESENTATION!r} and model_statistics)"
            )
        stats = config.get("dataset_statistics") or {}
        if "state_statistics" not in space and "proprio" not in stats:
            raise ValueError(f"{where}: dataset_statistics has no 'proprio' entry")
        try:
            return cls(
                horizon=int(space["horizon"]),
                padded_dim=int(space["padded_dim"]),
                action_stats=space["model_statistics"],
                state_stats=space.get("state_statistics") or stats["proprio"],
                mask=np.asarray(space["delta_mask"], bool),
                normalization=space.get("normalization", "quantile"),
                state_from_dataset="state_statistics" not in space,
                action_dims=(space.get("model_dims") or {}).get("action"),
                state_dims=(space.get("model_dims") or {}).get("state"),
                goal_dims=space.get("goal_dims"),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{where}: action_space: {exc}") from None


NORMALIZATIONS = ("quantile", "zscore")
#: Where `train --goal-dims` writes the goal point (x, y, z): the first dimensions after the robot's.
GOAL_DIMS = (len(DELTA_MASK), len(DELTA_MASK) + 1, len(DELTA_MASK) + 2)
_GOAL = Normalizer(GOAL_BOUNDS[0], GOAL_BOUNDS[1])  # goal points <-> [-1, 1], as OpenVLA's goal tokens


@dataclass(frozen=True)
class ZScore:
    """openpi's z-score normalisation: (x - mean) / (std + 1e-6) and back, unclipped."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_stats(cls, stats: dict, key: str) -> "ZScore":
        entry = stats[key]
        for name in ("mean", "std"):
            if name not in entry:
                raise KeyError(f"{key} statistics have no '{name}' (z-score normalisation needs mean and std)")
        return cls(np.asarray(entry["mean"], np.float64), np.asarray(entry["std"], np.float64))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / (self.std + 1e-6)).astype(np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, np.float64) * (self.std + 1e-6) + self.mean
