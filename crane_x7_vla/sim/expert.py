"""ScriptedExpert: stands in for the person moving the leader arm.

It plans the task as a chain of segments (move above the cube, descend, close, lift,
carry, lower, release, retreat), solves each segment's end pose with IK from the
simulator state when the segment begins, and plays it as a minimum-jerk joint motion.
A segment may start before the one before it has ended (`overlap`): the two motions
add up, as a person's do, and the hand passes its via point without stopping. A reach
is one such flowing motion: with a stop above the cube, the picture of the arm resting
there was followed by "stay" in some demonstrations and by a slow start in others, and
a policy that sees one picture at a time learned to creep down from there.
Each episode draws its own speed, via-point offsets, approach heights and short
pauses, and a smooth low-amplitude wobble is laid over every motion, so no two
demonstrations are the same. From a recovery start (the hand already a few cm from the
named cube: collect --start-near) the approach is a short, low hop. A segment only ends
once the follower has caught up (or a short wait ran out), and a grasp that did not lift
the cube is retried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.sim.ik import ArmIK
from crane_x7_vla.sim.model import CUBE_HALF, PAD_TILT, PLATE_HALF_HEIGHT

GRASP_OPENING = PAD_TILT  # finger angle (rad) at which the pads hold a 3 cm cube
LEADER_CLOSED = 0.0  # leader gripper fully closed; the cube stops the follower's fingers
_N = robot.NUM_ARM_JOINTS
NEAR_START = 0.15  # m, fingertips to the named cube: closer than this at the start is a recovery start


@dataclass
class _Segment:
    name: str
    duration: float
    goal: callable  # () -> (q7, gripper): solved when the segment starts
    wait_arm: bool = True  # wait for the follower arm to arrive before moving on
    pause: float = 0.0  # hold after the segment, seconds
    overlap: float = 0.0  # share of this segment still to run when the next one starts
    start_q: np.ndarray | None = None
    end_q: np.ndarray | None = None
    start_g: float = 0.0
    end_g: float = 0.0
    t0: float = 0.0
    prior: "_Segment | None" = None  # the overlapped segment still running underneath
    wobble: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10 - 15 * s + 6 * s * s)


class ScriptedExpert:
    """Produces LEADER joint targets (8,) over time that solve the env's current task."""

    def __init__(self, env, rng: np.random.Generator | None = None, *, max_speed: float = 1.6):
        self.env = env
        self.rng = rng if rng is not None else np.random.default_rng(env.seed)
        self.max_speed = float(min(max_speed, 0.8 * robot.MAX_VELOCITY))
        self.ik = ArmIK(env.model)
        self._ready = self._solve_ready()
        self.reset()

    # ------------------------------------------------------------- planning
    def _solve_ready(self) -> np.ndarray:
        res = self.ik.solve([0.27, 0.0, 0.14], math.pi, robot.HOME_POSE, GRASP_OPENING)
        return res.q

    def reset(self) -> None:
        """Plan a fresh demonstration for the env's current episode."""
        rng = self.rng
        self.speed = rng.uniform(0.75, 1.25)  # this demonstrator's tempo
        self.done = False
        self.failed = False
        self.retries = 0
        self._success_since: float | None = None
        summary = self.env.state_summary()
        self._cube = summary["target_cube"]
        self._plate = summary["target_plate"]
        self._segments: list[_Segment] = []
        self._index = -1
        self._plan()

    def _plan(self) -> None:
        rng = self.rng
        if self.env.task == "reach":
            via_h = rng.uniform(0.07, 0.13)
            approach = 1.4
            if self._starts_near_cube():  # a recovery start: a short hop over, not a high arc
                via_h, approach = rng.uniform(0.04, 0.07), 0.9
            jitter = rng.uniform(-0.015, 0.015, size=2)
            end_off = np.array([*rng.uniform(-0.008, 0.008, size=2), rng.uniform(0.012, 0.022)])
            self._segments = [
                _Segment("approach", approach, lambda: self._above_cube(via_h, jitter, robot.GRIPPER_OPEN),
                         wait_arm=False, overlap=rng.uniform(0.25, 0.45)),
                _Segment("reach", 0.9, lambda: self._at_cube(end_off, robot.GRIPPER_OPEN, robot.GRIPPER_OPEN)),
            ]
        else:
            self._segments = self._pick_segments() + self._place_segments()
        self._first_pause = rng.uniform(0.0, 0.3)
        self._started = False  # the motion starts at the first target() call

    def _starts_near_cube(self) -> bool:
        """Whether the fingertips start within NEAR_START of the named cube (collect --start-near)."""
        cube, _ = self._cube_state()
        return bool(np.linalg.norm(self.env.fingertip_centre() - cube) < NEAR_START)

    def _begin(self, t: float) -> None:
        self._last_q = self.env.joint_positions()[:_N]
        self._last_g = float(self.env.joint_positions()[-1])
        self._start_segment(0, t, pause_first=self._first_pause)
        self._started = True

    def _pick_segments(self) -> list[_Segment]:
        rng = self.rng
        pre_h = rng.uniform(0.07, 0.11)
        jitter = rng.uniform(-0.012, 0.012, size=2)
        grasp_off = np.array([*rng.uniform(-0.003, 0.003, size=2), rng.uniform(0.002, 0.006)])
        lift_h = rng.uniform(0.09, 0.13)
        return [
            _Segment("above cube", 1.5, lambda: self._above_cube(pre_h, jitter, robot.GRIPPER_OPEN),
                     pause=self._maybe_pause()),
            _Segment("descend", 1.0, lambda: self._at_cube(grasp_off, robot.GRIPPER_OPEN)),
            _Segment("close", 0.6, lambda: (self._last_q, LEADER_CLOSED), pause=0.25),
            _Segment("lift", 0.9, lambda: self._lift(lift_h), pause=self._maybe_pause()),
        ]

    def _place_segments(self) -> list[_Segment]:
        rng = self.rng
        carry_h = rng.uniform(0.09, 0.13)
        drop = rng.uniform(0.004, 0.01)
        off = rng.uniform(-0.01, 0.01, size=2)
        return [
            _Segment("carry", 1.6, lambda: self._above_plate(carry_h, off), pause=self._maybe_pause()),
            _Segment("lower", 1.0, lambda: self._above_plate(2 * PLATE_HALF_HEIGHT + CUBE_HALF + drop, off,
                                                             from_cube=True)),
            _Segment("release", 0.5, lambda: (self._last_q, robot.GRIPPER_OPEN), pause=0.2),
            _Segment("retreat", 0.8, lambda: self._lift(rng.uniform(0.08, 0.12), robot.GRIPPER_OPEN)),
        ]

    def _maybe_pause(self) -> float:
        return float(self.rng.uniform(0.1, 0.35)) if self.rng.random() < 0.3 else 0.0

    # ------------------------------------------------------------ goals (IK)
    def _cube_state(self) -> tuple[np.ndarray, float]:
        cube = self.env.state_summary()["cubes"][self._cube]
        return np.array(cube["position"]), float(cube["yaw"])

    def _grasp_yaw(self, cube_xy, cube_yaw: float) -> float:
        """Finger direction matching the cube's faces, closest to the arm's natural wrist angle."""
        natural = math.atan2(cube_xy[1], cube_xy[0]) + math.pi
        cands = [cube_yaw + k * math.pi / 2 for k in range(-4, 5)]
        return min(cands, key=lambda a: abs(math.remainder(a - natural, 2 * math.pi)))

    def _solve(self, pos, yaw: float, opening: float = GRASP_OPENING) -> np.ndarray:
        """Arm joints putting the pad midpoint (at finger angle `opening`) at pos, pointing down."""
        rest = self._ready.copy()
        rest[0] = math.atan2(pos[1], pos[0])
        # Start from the ready posture turned towards the target, not from the current pose:
        # from the current pose the solver lands in whichever of the redundant arm's
        # configurations is nearest, and neighbouring targets got entirely different ones
        # (base more than 1 rad from the target's bearing, elbow flipped: 7 of 40 reach
        # demonstrations).
        # Demonstrations must map similar scenes to similar joint motions to be learnable.
        res = self.ik.solve(pos, yaw, rest, opening, rest)
        if not res.ok:  # a second try from the current pose
            alt = self.ik.solve(pos, yaw, self._last_q, opening, rest)
            if alt.position_error < res.position_error:
                res = alt
        return res.q

    def _above_cube(self, height: float, jitter, gripper: float):
        pos, yaw = self._cube_state()
        self._yaw = self._grasp_yaw(pos, yaw)
        target = np.array([pos[0] + jitter[0], pos[1] + jitter[1], pos[2] + height])
        return self._solve(target, self._yaw), gripper

    def _at_cube(self, offset, gripper: float, opening: float = GRASP_OPENING):
        pos, yaw = self._cube_state()
        self._yaw = self._grasp_yaw(pos, yaw)
        return self._solve(pos + offset, self._yaw, opening), gripper

    def _lift(self, height: float, gripper: float = LEADER_CLOSED):
        tip, _ = self.ik.forward(self._last_q, GRASP_OPENING)
        target = np.array([tip[0], tip[1], height])
        return self._solve(target, self._yaw), gripper

    def _above_plate(self, height: float, offset, from_cube: bool = False):
        plate = np.array(self.env.state_summary()["plates"][self._plate]["position"])
        target = np.array([plate[0] + offset[0], plate[1] + offset[1], height])
        if from_cube:  # the cube may sit off-centre between the pads: place the cube, not the pads
            tip = self.env.fingertip_centre()
            cube, _ = self._cube_state()
            target -= cube - tip
        return self._solve(target, self._yaw), LEADER_CLOSED

    # ----------------------------------------------------------- execution
    def _start_segment(self, index: int, t: float, pause_first: float = 0.0,
                       prior: _Segment | None = None) -> None:
        self._index = index
        seg = self._segments[index]
        seg.start_q, seg.start_g = self._last_q.copy(), self._last_g
        seg.prior = prior
        q, g = seg.goal()
        seg.end_q, seg.end_g = robot.clamp_to_limits(np.asarray(q, dtype=float)), float(g)
        distance = float(np.abs(seg.end_q - seg.start_q).max())
        # Minimum-jerk peak speed is 1.875 * distance / duration: keep it under max_speed.
        duration = max(seg.duration / self.speed * self.rng.uniform(0.85, 1.15),
                       1.875 * distance / (self.max_speed * self.speed), 0.2)
        seg.duration = duration
        seg.t0 = t + pause_first
        amp = self.rng.uniform(0.0, 0.012) * min(1.0, distance / 0.3)
        seg.wobble = np.stack([self.rng.normal(0, amp, _N), self.rng.uniform(0.5, 1.5, _N),
                               self.rng.uniform(0, 2 * math.pi, _N)], axis=1)

    def _sample(self, seg: _Segment, t: float) -> tuple[np.ndarray, float]:
        if seg.prior is not None:  # an overlapped motion: this one's displacement rides on the prior's
            if t >= seg.prior.t0 + seg.prior.duration:
                seg.prior = None
            else:
                q0, g0 = self._sample(seg.prior, t)
                seg_q, seg_g = self._sample_own(seg, t)
                return q0 + seg_q - seg.start_q, g0 + seg_g - seg.start_g
        return self._sample_own(seg, t)

    def _sample_own(self, seg: _Segment, t: float) -> tuple[np.ndarray, float]:
        s = (t - seg.t0) / seg.duration
        a = _min_jerk(s)
        q = seg.start_q + a * (seg.end_q - seg.start_q)
        if 0.0 < s < 1.0:  # hand tremor/path variation, zero at both ends
            amp, freq, phase = seg.wobble.T
            q = q + amp * math.sin(math.pi * s) * np.sin(2 * math.pi * freq * s + phase)
        g = seg.start_g + a * (seg.end_g - seg.start_g)
        return q, g

    def target(self, t: float | None = None) -> np.ndarray:
        """Leader joint positions (7 arm + gripper) to follow at time t (default: the env's time)."""
        t = self.env.time if t is None else float(t)
        if not self._started:
            self._begin(t)
        self._check_success(t)
        seg = self._segments[self._index]
        q, g = self._sample(seg, t)
        if t >= seg.t0 + seg.duration * (1.0 - seg.overlap) + seg.pause and self._arrived(seg, t):
            self._last_q, self._last_g = seg.end_q.copy(), seg.end_g
            nxt = self._next_index(seg)
            if nxt is not None:
                self._start_segment(nxt, t, prior=seg if seg.overlap > 0 else None)
                seg = self._segments[self._index]
                q, g = self._sample(seg, t)
            elif t > seg.t0 + seg.duration + seg.pause + 2.0 and not self.done:
                self.failed = True  # plan finished but the task is not solved
        out = np.concatenate([robot.clamp_to_limits(q), [np.clip(g, *robot.GRIPPER_RANGE)]])
        return out

    def _arrived(self, seg: _Segment, t: float) -> bool:
        if not seg.wait_arm:
            return True
        err = np.abs(self.env.joint_positions()[:_N] - seg.end_q).max()
        return err < 0.02 or t > seg.t0 + seg.duration + seg.pause + 1.0

    def _next_index(self, seg: _Segment) -> int | None:
        if seg.name == "lift" and not self._holding_cube():
            # The grasp missed: open, go back above the cube and try again.
            self.retries += 1
            if self.retries > 2:
                self.failed = True
                return None
            self._segments = [_Segment("reopen", 0.4, lambda: (self._last_q, robot.GRIPPER_OPEN))]
            self._segments += self._pick_segments() + self._place_segments()
            return 0
        if self._index + 1 < len(self._segments):
            return self._index + 1
        return None

    def _holding_cube(self) -> bool:
        cube, _ = self._cube_state()
        return bool(cube[2] > CUBE_HALF + 0.03 and self.env.gripper_touches_cube(self._cube))

    def _check_success(self, t: float) -> None:
        if self.env.success():
            if self._success_since is None:
                self._success_since = t
            elif t - self._success_since >= 0.3 and self._index == len(self._segments) - 1:
                self.done = True
        else:
            self._success_since = None


def rollout(env, expert: ScriptedExpert, *, control_hz: float = 50.0, timeout: float = 30.0,
            on_step=None) -> bool:
    """Run the expert on env in-process, as the teleop relay would drive the follower.

    Every control period the leader target becomes a one-point trajectory reached one
    period later plus a gripper command. Returns the task's success at the end.
    """
    dt = 1.0 / control_hz
    start = env.time
    while not expert.done and not expert.failed and env.time - start < timeout:
        q = expert.target()
        env.set_arm_trajectory([(dt, q[:_N])])
        env.set_gripper(q[_N])
        env.step(dt)
        if on_step is not None:
            on_step(env, q)
    return env.success()
