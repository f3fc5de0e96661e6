"""The safety filter every joint command passes before it reaches the robot.

For each control period the filter turns a requested target (8 joint positions) into a
command that is guaranteed to be

* finite: a target holding NaN or inf is rejected whole and the last safe command is held;
* inside the joint position limits (each joint clamped, never the whole command dropped);
* at most ``max_velocity`` away from the previous command per second (|dq| <= v_max * dt);
* within ``max_acceleration`` of the previous command's velocity, except when the filter
  holds (stale input, emergency stop, NaN) or a position limit stops a joint: stopping wins;
* the previous command while the image or the joint state is older than ``stale_timeout``;
* the previous command, forever, after an emergency stop, until ``release()``.

Velocity is also shaped so that the command can stop at the target with the acceleration
limit (v <= sqrt(2 a |error|)), which keeps it from overshooting the target.
Every intervention is counted by kind (``interventions``) for the node's diagnostics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from crane_x7_vla import robot

KINDS = (
    "non_finite", "position_limit", "velocity_limit", "acceleration_limit",
    "stale_image", "stale_state", "emergency_stop", "no_target",
)


@dataclass(frozen=True)
class FilterResult:
    command: np.ndarray  # (8,) the command to send
    held: bool  # True when the previous command was held instead of following the target
    reasons: tuple[str, ...]  # interventions applied this period (KINDS)


def _per_joint(value, n: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"safety filter: {name} must be positive and finite (got {value})")
    return arr


class SafetyFilter:
    def __init__(self, *, lower=robot.LOWER_LIMITS, upper=robot.UPPER_LIMITS,
                 max_velocity=robot.MAX_VELOCITY, max_acceleration=robot.MAX_ACCELERATION,
                 stale_timeout: float = 0.5):
        self.lower = np.asarray(lower, dtype=np.float64).copy()
        self.upper = np.asarray(upper, dtype=np.float64).copy()
        n = self.lower.shape[0]
        if self.upper.shape != (n,) or np.any(self.lower > self.upper):
            raise ValueError("safety filter: lower/upper limits must have the same length and lower <= upper")
        self.max_velocity = _per_joint(max_velocity, n, "max_velocity")
        self.max_acceleration = _per_joint(max_acceleration, n, "max_acceleration")
        if not stale_timeout > 0:
            raise ValueError(f"safety filter: stale_timeout must be positive (got {stale_timeout})")
        self.stale_timeout = float(stale_timeout)
        self.dim = n
        self._last: np.ndarray | None = None
        self._vel = np.zeros(n)
        self._estop_reason: str | None = None
        self._counts: Counter = Counter()

    # --- state -------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return self._last is not None

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()

    @property
    def velocity(self) -> np.ndarray:
        return self._vel.copy()

    @property
    def interventions(self) -> dict[str, int]:
        return {k: int(self._counts[k]) for k in KINDS}

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    def reset(self, state) -> None:
        """Start from the measured joint state (at rest). Needed before the first step()."""
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (self.dim,) or not np.all(np.isfinite(state)):
            raise ValueError(f"safety filter: reset needs {self.dim} finite joint positions, got {state}")
        self._last = np.clip(state, self.lower, self.upper)
        self._vel = np.zeros(self.dim)

    def emergency_stop(self, reason: str = "emergency stop") -> None:
        """Latch: every later step() holds the last command until release()."""
        if self._estop_reason is None:
            self._counts["emergency_stop"] += 1
        self._estop_reason = reason or "emergency stop"
        self._vel = np.zeros(self.dim)

    def release(self, state=None) -> None:
        """Clear the emergency stop; restart from ``state`` (the measured joints) when given."""
        self._estop_reason = None
        if state is not None:
            self.reset(state)
        else:
            self._vel = np.zeros(self.dim)

    # --- one control period ------------------------------------------------------------
    def _hold(self, reason: str | None) -> FilterResult:
        if reason and reason != "emergency_stop":
            self._counts[reason] += 1
        self._vel = np.zeros(self.dim)
        return FilterResult(self._last.copy(), True, (reason,) if reason else ())

    def step(self, target, dt: float, *, image_age: float | None = None,
             state_age: float | None = None) -> FilterResult:
        """The command for the next ``dt`` seconds, given the requested ``target`` (or None)."""
        if self._last is None:
            raise RuntimeError("safety filter: reset(state) with the measured joints before the first step")
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"safety filter: dt must be positive (got {dt})")
        if self._estop_reason is not None:
            return self._hold("emergency_stop")
        if state_age is None or not state_age <= self.stale_timeout:
            return self._hold("stale_state")
        if image_age is not None and not image_age <= self.stale_timeout:
            return self._hold("stale_image")
        if target is None:
            return self._hold("no_target")
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        if target.shape != (self.dim,):
            raise ValueError(f"safety filter: target must have {self.dim} values, got {target.shape}")
        if not np.all(np.isfinite(target)):
            return self._hold("non_finite")

        reasons = []
        clamped = np.clip(target, self.lower, self.upper)
        if np.any(clamped != target):
            reasons.append("position_limit")
        error = clamped - self._last
        wanted = error / dt
        vmax, amax = self.max_velocity, self.max_acceleration
        if np.any(np.abs(wanted) > vmax * (1 + 1e-9)):
            reasons.append("velocity_limit")
        # Fastest speed from which the joint can still stop at the target.
        stoppable = np.sqrt(2.0 * amax * np.abs(error)) + amax * dt
        wanted = np.clip(wanted, -np.minimum(vmax, stoppable), np.minimum(vmax, stoppable))
        lo, hi = self._vel - amax * dt, self._vel + amax * dt
        vel = np.clip(wanted, lo, hi)
        if np.any((wanted < lo - 1e-12) | (wanted > hi + 1e-12)):
            reasons.append("acceleration_limit")
        vel = np.clip(vel, -vmax, vmax)
        command = np.clip(self._last + vel * dt, self.lower, self.upper)
        self._vel = (command - self._last) / dt
        self._last = command
        for r in reasons:
            self._counts[r] += 1
        return FilterResult(command.copy(), False, tuple(reasons))

    def preview(self, targets, dt: float) -> np.ndarray:
        """Commands for a sequence of future targets, without changing the filter's state.

        Used for the short look-ahead points of a published trajectory; a non-finite
        target ends the preview at the last safe command.
        """
        saved = (self._last.copy(), self._vel.copy(), self._counts.copy())
        out = []
        try:
            for t in targets:
                res = self.step(t, dt, state_age=0.0)
                out.append(res.command)
        finally:
            self._last, self._vel, self._counts = saved
        return np.array(out).reshape(-1, self.dim)
