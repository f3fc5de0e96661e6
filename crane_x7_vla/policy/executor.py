"""Executing action chunks at the control rate: interpolation, latency compensation, blending.

Timing. A chunk predicted from an observation taken at time ``t_obs`` holds H absolute
targets; step i is the target for ``t_obs + (i + 1) / policy_rate`` (training pairs the
state at step t with the state at step t + 1 as its action). The chunk is a piecewise
linear trajectory through ``(t_obs, observed state)`` and those points, held at its last
point afterwards. The controller samples it at its own rate (``control_rate``), so a
policy trained at 10 Hz drives a 30 Hz command stream smoothly.

Interpolation (``interpolation``). ``"linear"``: straight lines between the points, so the
velocity jumps at every point (the command's jerk peaks there, three times a policy step at
30 Hz). ``"bspline"``: a uniform cubic B-spline with the points as control points: position,
velocity and acceleration are continuous, the curve stays within the points' convex hull
(no overshoot), starts at the first point, passes within a sixth of the local second
difference of the others and comes to rest at the last point one policy step after it.

Latency compensation. A chunk is stamped with its observation time, not its arrival
time, so when it arrives ``latency`` seconds later the part of it that is already in the
past is skipped: sampling starts at ``now``, i.e. at step ``latency * policy_rate``.

Blending (the choice made here): a **linear cross-fade** over the overlap. When a new chunk
arrives at ``t_a`` the output is ``(1 - a) * previous(t) + a * new(t)`` with
``a = clip((t - t_a) / crossfade, 0, 1)``. At ``t_a`` the output equals what was being
executed, so a new chunk never causes a jump; over ``crossfade`` seconds control passes
to the new chunk. Several chunks arriving within one cross-fade fold in order. Compared
with ACT's temporal ensembling (exponentially weighted mean over every chunk that covers
t), the cross-fade is continuous at arrival by construction, reacts to the newest
observation within a fixed time, and needs no weight tuning per inference rate.
``mode="replace"`` (switch at arrival, no blending) is kept for comparison.

Real-time chunking (``mode="rtc"``, docs/fast_actions.md): the next chunk is sampled knowing
what is already committed: ``committed(obs_time, H)`` gives the targets the current plan
will command at the new chunk's step times, and a policy that takes them
(``supports_guidance``) samples a chunk that continues them. Such a chunk agrees with the
plan at its arrival to within millimetres (the steps executed while it was computed are the
ones it was guided to agree with); the same cross-fade passes control over, so even that
remainder never reaches the command as a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("crossfade", "replace", "rtc")
SWITCH_AT_ARRIVAL = ("replace",)
INTERPOLATIONS = ("linear", "bspline")


def _bspline_basis(s: float) -> np.ndarray:
    """The four uniform cubic B-spline weights at s in [0, 1]."""
    return np.array([(1 - s) ** 3, 3 * s**3 - 6 * s**2 + 4, -3 * s**3 + 3 * s**2 + 3 * s + 1, s**3]) / 6.0


@dataclass
class Chunk:
    times: np.ndarray  # (K,) absolute times of the points, increasing, one policy step apart
    points: np.ndarray  # (K, D)
    obs_time: float
    arrival_time: float
    interpolation: str = "linear"

    def __post_init__(self):
        if self.interpolation == "bspline":
            p = self.points
            second = p[1] if len(p) > 1 else p[0]
            # a leading control point mirrored through the first point starts the curve on it with the
            # first segment's velocity; two copies of the last bring it to rest there
            self._control = np.concatenate([(2 * p[0] - second)[None], p, p[-1:], p[-1:]])
            self._step = float(self.times[1] - self.times[0]) if len(self.times) > 1 else 0.0

    @property
    def end_time(self) -> float:
        if self.interpolation == "bspline" and len(self.times) > 1:
            return float(self.times[-1]) + self._step
        return float(self.times[-1])

    def at(self, t: float) -> np.ndarray:
        """The trajectory at t; held at the first/last point outside it."""
        times, pts = self.times, self.points
        if t <= times[0]:
            return pts[0].copy()
        if t >= self.end_time:
            return pts[-1].copy()
        if self.interpolation == "bspline":
            u = (t - times[0]) / self._step
            j = min(int(u), len(pts))
            return _bspline_basis(u - j) @ self._control[j: j + 4]
        i = int(np.searchsorted(times, t, side="right")) - 1
        w = (t - times[i]) / (times[i + 1] - times[i])
        return (1.0 - w) * pts[i] + w * pts[i + 1]


class ChunkExecutor:
    def __init__(self, policy_rate_hz: float, *, crossfade_s: float = 0.2, mode: str = "crossfade",
                 interpolation: str = "linear"):
        if not policy_rate_hz > 0:
            raise ValueError(f"policy_rate_hz must be positive (got {policy_rate_hz})")
        if mode not in MODES:
            raise ValueError(f"blend mode must be one of {MODES} (got '{mode}')")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS} (got '{interpolation}')")
        if mode not in SWITCH_AT_ARRIVAL and not crossfade_s > 0:
            raise ValueError(f"crossfade_s must be positive (got {crossfade_s})")
        self.policy_rate_hz = float(policy_rate_hz)
        self.crossfade_s = float(crossfade_s)
        self.mode = mode
        self.interpolation = interpolation
        self._chunks: list[Chunk] = []

    def clear(self) -> None:
        self._chunks = []

    @property
    def has_chunk(self) -> bool:
        return bool(self._chunks)

    @property
    def newest(self) -> Chunk | None:
        return self._chunks[-1] if self._chunks else None

    def add_chunk(self, actions, obs_time: float, arrival_time: float, state=None) -> Chunk:
        """Add an (H, D) chunk predicted from the observation taken at ``obs_time``.

        ``state`` (the observed joints) starts the trajectory at ``obs_time``; without it
        the trajectory starts at the first action.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]
        if actions.ndim != 2 or len(actions) == 0:
            raise ValueError(f"an action chunk must be (H, D), got {actions.shape}")
        step = 1.0 / self.policy_rate_hz
        times = obs_time + step * np.arange(1, len(actions) + 1)
        points = actions
        if state is not None:
            state = np.asarray(state, dtype=np.float64).reshape(1, -1)
            if state.shape[1] != actions.shape[1]:
                raise ValueError(f"state has {state.shape[1]} values, the chunk {actions.shape[1]}")
            times = np.concatenate([[obs_time], times])
            points = np.concatenate([state, actions])
        chunk = Chunk(times, points, float(obs_time), float(arrival_time), self.interpolation)
        if self._chunks and arrival_time < self._chunks[-1].arrival_time:
            raise ValueError("chunks must be added in arrival order")
        self.prune(arrival_time)
        self._chunks.append(chunk)
        if self.mode in SWITCH_AT_ARRIVAL:
            self._chunks = [chunk]
        return chunk

    def _weight(self, chunk: Chunk, t: float) -> float:
        return float(np.clip((t - chunk.arrival_time) / self.crossfade_s, 0.0, 1.0))

    def prune(self, now: float) -> None:
        """Forget chunks that no longer contribute at ``now`` or later (call with the current time)."""
        for k in range(len(self._chunks) - 1, 0, -1):
            if self._weight(self._chunks[k], now) >= 1.0:
                self._chunks = self._chunks[k:]
                return

    def sample(self, t: float) -> np.ndarray | None:
        """The target at time ``t`` (None before any chunk). Does not change the executor."""
        if not self._chunks:
            return None
        out = self._chunks[0].at(t)
        for chunk in self._chunks[1:]:
            a = self._weight(chunk, t)
            if a > 0.0:
                out = (1.0 - a) * out + a * chunk.at(t)
        return out

    def committed(self, obs_time: float, horizon: int) -> np.ndarray:
        """(K, D) targets of the current plan at a new chunk's step times obs_time + (i + 1) /
        policy_rate, i < horizon, as far as the newest chunk reaches (K = 0 without one)."""
        if not self._chunks:
            return np.zeros((0, 0))
        times = obs_time + np.arange(1, int(horizon) + 1) / self.policy_rate_hz
        times = times[times <= self._chunks[-1].end_time + 1e-9]
        if not len(times):
            return np.zeros((0, self._chunks[-1].points.shape[1]))
        return np.stack([self.sample(float(t)) for t in times])

    def chunk_age(self, t: float) -> float | None:
        """Seconds since the observation of the newest chunk was taken."""
        return None if not self._chunks else t - self._chunks[-1].obs_time

    def exhausted(self, t: float) -> bool:
        """True when ``t`` is past the last point of the newest chunk (nothing new to execute)."""
        return not self._chunks or t >= self._chunks[-1].end_time
