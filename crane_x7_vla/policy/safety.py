"""The safety filter every joint command passes before it reaches the robot.

For each control period the filter turns a requested target (8 joint positions) into a
command that is guaranteed to be

* finite: a target holding NaN or inf is rejected whole and the last safe command is held;
* inside the joint position limits (each joint's target clamped, never the whole command
  dropped); a joint measured outside its limits at ``reset()`` is never commanded further
  out and ramps back in with the velocity and acceleration limits;
* at most ``max_velocity`` away from the previous command per second (|dq| <= v_max * dt);
* within ``max_acceleration`` of the previous command's velocity (|dv| <= a_max * dt), except
  when the filter holds (stale input, emergency stop, NaN), or when a joint is moving too fast
  to stop at a position limit with the acceleration limit (a ``reset()`` velocity or a period
  shorter than the previous one): stopping wins, and the joint stops exactly at the limit;
* the previous command while the image or the joint state is stale (``fresh``: an age
  outside [0, ``stale_timeout``], i.e. older than the timeout or stamped in the future);
* the previous command, forever, after an emergency stop, until ``release()``.

Braking is planned in the filter's own discrete time (``stopping_speed``): each period a joint
moves at most the speed from which slowing by a_max * dt per period stops it within the
distance left, to its target and to both position limits. With a constant period and a
target that does not move, the command reaches the target without overshoot and meets a
target on a limit without exceeding the acceleration limit.
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


def fresh(age: float | None, stale_timeout: float) -> bool:
    """Whether an input of ``age`` seconds may be acted on: ``0 <= age <= stale_timeout``.

    None (no input) and NaN are stale; so is a negative age, an input stamped in the future,
    whose real age is unknown.
    """
    return age is not None and 0.0 <= age <= stale_timeout


def message_age(clock_now_ns: int, stamp_ns: int) -> float:
    """Age in seconds of a message stamped ``stamp_ns`` when the receiving clock reads
    ``clock_now_ns`` (both ns on the same clock); negative for a stamp in the future.

    An unset stamp (0) gives 0.0: such a message is timed from its arrival.
    """
    if stamp_ns == 0:
        return 0.0
    return (int(clock_now_ns) - int(stamp_ns)) * 1e-9


def stopping_speed(distance, max_acceleration, dt: float) -> np.ndarray:
    """The largest speed for the coming period of ``dt`` seconds from which a joint stops within
    ``distance`` (0 for distance <= 0), exact for the filter's update ``q += v * dt``.

    The joint moves v * dt now, then slows by u = a * dt each period: it covers
    dt * (v + (v - u) + ... + (v - n u)) = dt * (n + 1) * (v - n u / 2) for n u <= v < (n + 1) u.
    Solved for v at the distance d: v = n u / 2 + d / ((n + 1) dt), with n the largest integer
    such that n (n + 1) / 2 <= d / (u dt). Moving at this speed leaves exactly the distance
    from which the speed u slower is the stopping speed, so braking never needs more than a.
    """
    d = np.maximum(np.asarray(distance, dtype=np.float64), 0.0)
    u = np.asarray(max_acceleration, dtype=np.float64) * dt
    n = np.floor((np.sqrt(8.0 * d / (u * dt) + 1.0) - 1.0) / 2.0)
    return u * n / 2.0 + d / ((n + 1.0) * dt)


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

    def reset(self, state, velocity=None) -> None:
        """Start from the measured joint state (at rest unless ``velocity`` is given; a velocity
        is clipped to ``max_velocity``). Needed before the first step().

        A joint outside its limits stays where it was measured; step() brings it back.
        """
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (self.dim,) or not np.all(np.isfinite(state)):
            raise ValueError(f"safety filter: reset needs {self.dim} finite joint positions, got {state}")
        vel = np.zeros(self.dim)
        if velocity is not None:
            vel = np.asarray(velocity, dtype=np.float64).reshape(-1)
            if vel.shape != (self.dim,) or not np.all(np.isfinite(vel)):
                raise ValueError(f"safety filter: reset velocity needs {self.dim} finite values, got {velocity}")
            vel = np.clip(vel, -self.max_velocity, self.max_velocity)
        self._last = state.copy()
        self._vel = vel

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
        if not fresh(state_age, self.stale_timeout):
            return self._hold("stale_state")
        if image_age is not None and not fresh(image_age, self.stale_timeout):
            return self._hold("stale_image")
        if target is None:
            return self._hold("no_target")
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        if target.shape != (self.dim,):
            raise ValueError(f"safety filter: target must have {self.dim} values, got {target.shape}")
        if not np.all(np.isfinite(target)):
            return self._hold("non_finite")

        reasons = []
        goal = np.clip(target, self.lower, self.upper)
        if np.any(goal != target):
            reasons.append("position_limit")
        last, vel0 = self._last, self._vel
        vmax, amax = self.max_velocity, self.max_acceleration
        error = goal - last
        if np.any(np.abs(error) / dt > vmax * (1 + 1e-9)):
            reasons.append("velocity_limit")
        # Towards the goal, no faster than the speed that can still stop at it.
        wanted = np.sign(error) * np.minimum(vmax, stopping_speed(np.abs(error), amax, dt))
        # The speeds that can still stop at each position limit (0 towards a limit the joint is
        # already beyond, so it is never commanded further out).
        v_hi = np.minimum(vmax, stopping_speed(self.upper - last, amax, dt))
        v_lo = -np.minimum(vmax, stopping_speed(last - self.lower, amax, dt))
        step_dv = amax * dt
        lo = np.maximum(v_lo, vel0 - step_dv)
        hi = np.minimum(v_hi, vel0 + step_dv)
        # Too fast to stop at a limit with the acceleration limit: the limit wins.
        tol = 1e-9 * vmax
        if np.any((vel0 - step_dv > v_hi + tol) | (vel0 + step_dv < v_lo - tol)):
            if "position_limit" not in reasons:
                reasons.append("position_limit")
        lo, hi = np.minimum(lo, v_hi), np.maximum(hi, v_lo)
        if np.any(np.abs(wanted - vel0) > step_dv * (1 + 1e-9)):
            reasons.append("acceleration_limit")
        vel = np.clip(wanted, lo, hi)
        # Within rounding of the acceleration window the braking plan is followed as planned:
        # otherwise rounding in the positions accumulates over the braking ticks into overshoot.
        vel = np.where(np.abs(vel - wanted) <= 1e-9 * step_dv, wanted, vel)
        command = last + vel * dt
        # A move planned to stop at or before the goal never passes it through rounding, and a
        # move of the whole remaining error lands on the goal itself. Rounding never takes a
        # joint past a limit, nor further out when it started outside.
        snap = (vel == wanted) & ((np.sign(error) * (command - goal) > 0) | (vel == error / dt))
        command = np.where(snap, goal, command)
        command = np.clip(command, np.minimum(self.lower, last), np.maximum(self.upper, last))
        self._vel = (command - last) / dt
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
