"""SimEnv: the simulated CRANE-X7 on a table, driven like its ros2_control controllers.

The arm follows joint trajectories the way a JointTrajectoryController does: a new
trajectory starts from the current reference, is interpolated linearly between its
points and replaces any trajectory in progress. Every target is clamped to the joint
limits, and the reference never moves faster than robot.MAX_VELOCITY. The gripper
follows a position target with a force limit, like the GripperActionController.

Not thread-safe: call every method from one thread (or hold a lock around them).
"""

from __future__ import annotations

import math
import os

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.sim import model as sim_model
from crane_x7_vla.sim.tasks import Layout, TaskSpec, get_task

CAMERAS = ("primary", "wrist")
#: rad/s^2: how fast the reference may change speed. Steps in the command (a far target
#: sent at once) become smooth ramps instead of jolts; streamed leader motions pass unchanged.
REFERENCE_ACCELERATION = 20.0
_N_ARM = robot.NUM_ARM_JOINTS


def _check_vector(name: str, value, size: int) -> np.ndarray:
    q = np.asarray(value, dtype=np.float64)
    if q.shape != (size,):
        raise ValueError(f"{name} must hold {size} values, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name} contains NaN or infinite values: {q.tolist()}")
    return q


class SimEnv:
    """A MuJoCo CRANE-X7 with a seeded tabletop task (see SIM_API.md for the contract)."""

    def __init__(self, task: str = "reach", seed: int = 0, camera_size: tuple[int, int] = (320, 240),
                 cameras: tuple[str, ...] = CAMERAS, antialias: bool = False):
        """antialias: 4x multisampling; smoother edges but ~3x slower with software EGL."""
        import mujoco

        self._mj = mujoco
        self.spec: TaskSpec = get_task(task)
        self.task = self.spec.name
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the simulator has {list(CAMERAS)}")
        self.cameras = tuple(cameras)
        w, h = (int(v) for v in camera_size)
        if not (16 <= w <= 1280 and 16 <= h <= 960):
            raise ValueError(f"camera_size must be (width, height) within 16..1280 x 16..960, got {camera_size}")
        self.camera_size = (w, h)
        self.model = sim_model.build_model(self.spec.n_cubes, self.spec.n_plates)
        self.model.vis.quality.offsamples = 4 if antialias else 0
        self.data = mujoco.MjData(self.model)
        m = self.model
        joints = [m.joint(j) for j in robot.ARM_JOINTS + (robot.GRIPPER_JOINT, robot.GRIPPER_MIMIC_JOINT)]
        self._qadr = np.array([j.qposadr[0] for j in joints])
        self._dadr = np.array([j.dofadr[0] for j in joints])
        self._act = np.array([m.actuator(j).id for j in robot.ARM_JOINTS + (robot.GRIPPER_JOINT,
                                                                           robot.GRIPPER_MIMIC_JOINT)])
        self._kv_over_kp = np.array([-m.actuator_biasprm[a, 2] / m.actuator_gainprm[a, 0] for a in self._act])
        self._cube_qadr = [m.joint(f"cube{i}").qposadr[0] for i in range(self.spec.n_cubes)]
        self._cube_dadr = [m.joint(f"cube{i}").dofadr[0] for i in range(self.spec.n_cubes)]
        self._cube_geom = [m.geom(f"cube{i}").id for i in range(self.spec.n_cubes)]
        self._plate_mocap = [m.body(f"plate{i}").mocapid[0] for i in range(self.spec.n_plates)]
        self._plate_geom = [m.geom(f"plate{i}").id for i in range(self.spec.n_plates)]
        self._finger_geoms = {m.geom(n).id for n in ("finger_a_bar", "finger_a_pad", "finger_b_bar", "finger_b_pad")}
        self._tip_sites = [m.site("finger_a_tip").id, m.site("finger_b_tip").id]
        scenery = {0, *(m.geom_bodyid[g] for g in self._cube_geom + self._plate_geom)}
        self._robot_geoms = {g for g in range(m.ngeom) if m.geom_bodyid[g] not in scenery}
        self._renderers: dict[tuple[int, int], object] = {}
        self._episode = 0
        self.seed = int(seed)
        self.reset(seed)

    # ----------------------------------------------------------------- episode
    def reset(self, seed: int | None = None) -> None:
        """New episode: robot at home, objects drawn from `seed` (None: the next seed)."""
        if seed is None:
            seed = self.seed + 1 if self._episode else self.seed
        self.seed = int(seed)
        self._episode += 1
        rng = np.random.default_rng(self.seed)
        self.layout: Layout = self.spec.sample(rng)
        self.instruction = self.spec.instruction(self.layout)
        m, d = self.model, self.data
        self._mj.mj_resetData(m, d)
        for i, colour in enumerate(self.layout.cube_colours):
            m.geom_rgba[self._cube_geom[i], :3] = sim_model.COLOURS[colour]
            (x, y), yaw = self.layout.cube_xy[i], self.layout.cube_yaw[i]
            d.qpos[self._cube_qadr[i]:self._cube_qadr[i] + 7] = [
                x, y, sim_model.CUBE_HALF, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        for i, colour in enumerate(self.layout.plate_colours):
            m.geom_rgba[self._plate_geom[i], :3] = sim_model.COLOURS[colour]
            d.mocap_pos[self._plate_mocap[i]] = [*self.layout.plate_xy[i], sim_model.PLATE_HALF_HEIGHT]
        q0 = robot.clamp_to_limits(np.concatenate([robot.HOME_POSE + self.layout.arm_offset, [robot.GRIPPER_OPEN]]))
        d.qpos[self._qadr] = np.concatenate([q0, q0[-1:]])
        self._arm_ref = q0[:_N_ARM].copy()
        self._grip_ref = float(q0[-1])
        self._grip_target = float(q0[-1])
        self._arm_vel_ref = np.zeros(_N_ARM)
        self._grip_vel_ref = 0.0
        self._target_time = 0.0
        self._traj: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._grasped = False
        self._set_gripper_force(5.0)
        self._apply_controls(np.zeros(_N_ARM), 0.0)
        self._mj.mj_forward(m, d)

    @property
    def time(self) -> float:
        return float(self.data.time)

    # ------------------------------------------------------------------ state
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qadr[:8]].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._dadr[:8]].copy()

    def arm_reference(self) -> np.ndarray:
        """The controller's current position reference (7 arm joints)."""
        return self._arm_ref.copy()

    def place_cube(self, i: int, position, yaw: float = 0.0) -> None:
        """Put cube i at a world position (m) with a yaw (rad), at rest (for tests and perturbations)."""
        position = _check_vector("cube position", position, 3)
        a, v = self._cube_qadr[i], self._cube_dadr[i]
        self.data.qpos[a:a + 7] = [*position, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        self.data.qvel[v:v + 6] = 0.0
        self._mj.mj_forward(self.model, self.data)

    def cube_position(self, i: int) -> np.ndarray:
        return self.data.qpos[self._cube_qadr[i]:self._cube_qadr[i] + 3].copy()

    def cube_quat(self, i: int) -> np.ndarray:
        return self.data.qpos[self._cube_qadr[i] + 3:self._cube_qadr[i] + 7].copy()

    def cube_speed(self, i: int) -> float:
        return float(np.linalg.norm(self.data.qvel[self._cube_dadr[i]:self._cube_dadr[i] + 3]))

    def fingertip_centre(self) -> np.ndarray:
        """Midpoint of the two finger pads, in world coordinates (m)."""
        return self.data.site_xpos[self._tip_sites].mean(axis=0)

    def gripper_touches_cube(self, i: int) -> bool:
        cube = self._cube_geom[i]
        d = self.data
        for k in range(d.ncon):
            g1, g2 = d.contact.geom1[k], d.contact.geom2[k]
            if (g1 == cube and g2 in self._finger_geoms) or (g2 == cube and g1 in self._finger_geoms):
                return True
        return False

    def arm_touches_scene(self) -> bool:
        """Whether any part of the arm touches the table, a cube or a plate (after a step or pose_arm)."""
        d = self.data
        for k in range(d.ncon):
            inside = (d.contact.geom1[k] in self._robot_geoms) + (d.contact.geom2[k] in self._robot_geoms)
            if inside == 1:
                return True
        return False

    def success(self) -> bool:
        return self.spec.success(self)

    def distance_to_goal(self) -> float:
        """The task's distance from success (m), see TaskSpec.distance."""
        return self.spec.distance(self)

    def state_summary(self) -> dict:
        """Plain-Python description of the scene (object poses, target, tool) for experts and reports."""
        lay = self.layout
        cubes = [{"name": f"cube{i}", "colour": c, "position": self.cube_position(i).tolist(),
                  "quat": self.cube_quat(i).tolist(), "yaw": _yaw(self.cube_quat(i))}
                 for i, c in enumerate(lay.cube_colours)]
        plates = [{"name": f"plate{i}", "colour": c,
                   "position": [*map(float, lay.plate_xy[i]), 2 * sim_model.PLATE_HALF_HEIGHT]}
                  for i, c in enumerate(lay.plate_colours)]
        return {
            "task": self.task, "seed": self.seed, "instruction": self.instruction, "time": self.time,
            "joint_positions": self.joint_positions().tolist(),
            "fingertip_centre": self.fingertip_centre().tolist(),
            "cubes": cubes, "plates": plates,
            "target_cube": lay.target_cube, "target_plate": lay.target_plate,
            "gripper_touches_target": self.gripper_touches_cube(lay.target_cube),
            "success": self.success(),
            "grasped": self.grasped,
            "distance_to_goal_m": round(self.distance_to_goal(), 4),
        }

    # --------------------------------------------------------------- commands
    def set_arm_trajectory(self, points) -> None:
        """Follow [(time_from_start s, 7 positions), ...] from the current reference, replacing any trajectory."""
        points = list(points)
        if not points:
            raise ValueError("arm trajectory has no points")
        times, targets = [], []
        for k, point in enumerate(points):
            try:
                t, q = point
            except (TypeError, ValueError):
                raise ValueError(f"trajectory point {k} must be (time_from_start, positions)") from None
            t = float(t)
            if not math.isfinite(t) or t < 0 or (times and t < times[-1]):
                raise ValueError(f"trajectory point {k}: time_from_start {t} must be finite, >= 0 and not "
                                 f"before the previous point's")
            times.append(t)
            targets.append(robot.clamp_to_limits(_check_vector(f"trajectory point {k} positions", q, _N_ARM)))
        self._traj = (self.time, self._arm_ref.copy(), np.array(times), np.array(targets))

    def set_arm_target(self, q7) -> None:
        """Move to one arm pose as fast as the velocity limit allows."""
        self.set_arm_trajectory([(0.0, q7)])

    def set_gripper(self, position: float, max_effort: float = 5.0) -> None:
        """finger_a position target (rad, finger_b mirrors it) with a grip force limit (N at the pads)."""
        position = float(position)
        if not math.isfinite(position):
            raise ValueError(f"gripper position must be a finite number of radians, got {position}")
        self._grip_target = float(np.clip(position, *robot.GRIPPER_RANGE))
        self._set_gripper_force(max_effort)

    def _set_gripper_force(self, max_effort: float) -> None:
        effort = float(max_effort)
        if not math.isfinite(effort) or effort <= 0:
            effort = 10.0  # like the GripperActionController, 0 means "no explicit limit"
        torque = min(effort, 20.0) * sim_model.PAD_Z
        for a in self._act[_N_ARM:]:
            self.model.actuator_forcerange[a] = (-torque, torque)

    # ------------------------------------------------------------- stepping
    def step(self, dt: float) -> None:
        """Advance the simulation by dt seconds (in physics steps of model.TIMESTEP)."""
        dt = float(dt)
        if not math.isfinite(dt) or dt < 0:
            raise ValueError(f"step dt must be a finite, non-negative number of seconds, got {dt}")
        h = self.model.opt.timestep
        # Accumulate requested time so steps that are not multiples of h do not drift.
        self._target_time += dt
        while self.data.time + 0.5 * h <= self._target_time:
            self._update_references(h)
            self._mj.mj_step(self.model, self.data)
        if self.spec.n_plates and not self._grasped:
            self._grasped = self.spec.lifted(self)

    @property
    def grasped(self) -> bool | None:
        """pick_place: whether the fingers have held the named cube off the table at any step of
        this episode (the grasp half of the task); None for tasks without a grasp."""
        return self._grasped if self.spec.n_plates else None

    def _desired_arm(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Trajectory position and velocity at time t (linear interpolation between points)."""
        if self._traj is None:
            return self._arm_ref, np.zeros(_N_ARM)
        t0, q0, times, targets = self._traj
        tau = t - t0
        if tau >= times[-1]:
            return targets[-1], np.zeros(_N_ARM)
        k = int(np.searchsorted(times, tau, side="right"))
        ta, qa = (0.0, q0) if k == 0 else (times[k - 1], targets[k - 1])
        tb, qb = times[k], targets[k]
        if tb <= ta:
            return qb, np.zeros(_N_ARM)
        return qa + (tau - ta) / (tb - ta) * (qb - qa), (qb - qa) / (tb - ta)

    def _update_references(self, h: float) -> None:
        desired, desired_vel = self._desired_arm(self.data.time + h)
        self._arm_ref, self._arm_vel_ref = _track(self._arm_ref, self._arm_vel_ref, desired, desired_vel, h)
        g, gv = _track(np.array([self._grip_ref]), np.array([self._grip_vel_ref]),
                       np.array([self._grip_target]), np.zeros(1), h)
        self._grip_ref, self._grip_vel_ref = float(g[0]), float(gv[0])
        self._apply_controls(self._arm_vel_ref, self._grip_vel_ref)

    def _apply_controls(self, arm_vel: np.ndarray, grip_vel: float) -> None:
        # ctrl = q_ref + (kv/kp) q_dot_ref turns the servo's damping into velocity feed-forward.
        ref = np.concatenate([self._arm_ref, [self._grip_ref, self._grip_ref]])
        vel = np.concatenate([arm_vel, [grip_vel, grip_vel]])
        self.data.ctrl[self._act] = ref + self._kv_over_kp * vel

    # ------------------------------------------------------------- rendering
    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB image from "primary" or "wrist" (default size: camera_size)."""
        if camera not in self.cameras:
            raise ValueError(f"unknown camera {camera!r}; this simulator renders {list(self.cameras)}")
        size = (int(width or self.camera_size[0]), int(height or self.camera_size[1]))
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._make_renderer(size)
            self._renderers[size] = renderer
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()

    def _make_renderer(self, size: tuple[int, int]):
        from mujoco import gl_context

        backend = getattr(gl_context.GLContext, "__module__", "")
        if backend.endswith("glfw") and not os.environ.get("DISPLAY"):
            raise RuntimeError(
                "MuJoCo chose its on-screen (GLFW) renderer and there is no display: mujoco was imported "
                "before crane_x7_vla.sim without MUJOCO_GL set. Run with MUJOCO_GL=egl in the environment, "
                "or import crane_x7_vla.sim before mujoco.")
        return self._mj.Renderer(self.model, height=size[1], width=size[0])

    def pose_arm(self, q7) -> None:
        """Put the arm at joint positions q7 (clamped to the limits), at rest, holding there
        (for rendering scenes with the arm in view)."""
        q = robot.clamp_to_limits(np.concatenate([_check_vector("arm pose", q7, _N_ARM), [self._grip_ref]]))
        self.data.qpos[self._qadr[:_N_ARM]] = q[:_N_ARM]
        self.data.qvel[self._dadr[:_N_ARM]] = 0.0
        self._arm_ref = q[:_N_ARM].copy()
        self._arm_vel_ref = np.zeros(_N_ARM)
        self._traj = None
        self._mj.mj_forward(self.model, self.data)

    def project(self, camera: str, point, width: int | None = None, height: int | None = None) -> np.ndarray:
        """Pixel (column, row) where a world point appears in `camera`'s image (pinhole model)."""
        w = int(width or self.camera_size[0])
        h = int(height or self.camera_size[1])
        cam = self.model.camera(camera).id
        rot = self.data.cam_xmat[cam].reshape(3, 3)
        p = rot.T @ (np.asarray(point, dtype=float) - self.data.cam_xpos[cam])
        if p[2] >= 0:
            raise ValueError(f"point {list(point)} is behind camera {camera!r}")
        f = 0.5 * h / math.tan(math.radians(self.model.cam_fovy[cam]) / 2)
        return np.array([w / 2 + f * p[0] / -p[2], h / 2 - f * p[1] / -p[2]])

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _track(ref, vel, desired, desired_vel, h: float):
    """One step of the servo reference towards a (moving) desired position.

    Speed never exceeds robot.MAX_VELOCITY and changes by at most REFERENCE_ACCELERATION;
    the reference brakes in time to stop on a target without overshooting it.
    """
    err = desired - ref
    mag = np.abs(err)
    correction = np.sign(err) * np.minimum(np.sqrt(2.0 * REFERENCE_ACCELERATION * mag), 0.5 * mag / h)
    want = np.clip(np.clip(desired_vel, -robot.MAX_VELOCITY, robot.MAX_VELOCITY) + correction,
                   -robot.MAX_VELOCITY, robot.MAX_VELOCITY)
    dv = REFERENCE_ACCELERATION * h
    vel = vel + np.clip(want - vel, -dv, dv)
    return ref + vel * h, vel


def _yaw(quat) -> float:
    w, x, y, z = quat
    return float(math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
