"""crane_x7_sim: the MuJoCo CRANE-X7 behind the real robot's ROS 2 interfaces.

Same interfaces as crane_x7_control (ros2_control) on the robot:

    /joint_states                              sensor_msgs/JointState (7 arm joints, finger_a, finger_b mimic)
    /crane_x7_arm_controller/joint_trajectory  trajectory_msgs/JointTrajectory (joints matched by name;
                                               interpolated from the current reference like a
                                               JointTrajectoryController, replacing the one in progress)
    /crane_x7_gripper_controller/gripper_cmd   control_msgs/action/GripperCommand

plus the cameras (sensor_msgs/Image rgb8 + CameraInfo; the hand camera on
/camera/color/image_raw like the RealSense, the scene camera on
/scene_camera/color/image_raw) and the simulation's own interfaces:

    /instruction              std_msgs/String, transient local: the episode's instruction
    ~/success                 std_msgs/Bool: the task's success check, `success_rate` Hz
    ~/check_success           std_srvs/Trigger: success = the check now, message = JSON state (with
                              distance_to_goal_m, how far from success: see TaskSpec.distance;
                              grasped, pick_place: the named cube was held off the table)
    ~/reset                   std_srvs/Trigger: new episode with the `seed` parameter (then seed += 1),
                              switching to the `task` parameter's task; message = JSON
                              {task, seed, instruction, start_state (the 8 joint positions),
                              start ("home", or "near cube" for a recovery start: `start_near`),
                              stamp_ns (the node clock's stamp of the new scene)}
    ~/start_expert            std_srvs/Trigger: with `expert_waits_for_start`, the expert moves
                              `expert_start_delay` s after this call instead of after the reset
    ~/step                    std_msgs/Header (with `step_rate`): the recording instants, see below

Physics runs in its own thread paced to wall time (`control_hz` steps of 1/control_hz s,
catching up when late), `real_time_factor` times faster than real time if asked; camera,
success and leader rates count simulated seconds. Every header stamp comes from the node
clock (wall time) so the logger pairs all streams on one time base; with
`publish_clock:=true` the node instead publishes the simulated time on /clock (like
Gazebo) and stamps with it, and the other nodes run with `use_sim_time:=true`.

Lockstep with a recorder (`step_rate` > 0, with `publish_clock`): every 1/step_rate simulated
seconds the node renders every camera at that instant, publishes the instant's stamp on ~/step
and waits until the node publishing on `step_ack_topic` (the data logger's ~/recorded) answers
with that stamp before the simulated time goes on; while waiting it sends the step again
every 0.2 s, with the instant's joint state and frames, for a recorder that joined late or
lost a frame (images are best effort). The recording then holds one step per instant, at
its rate in simulated time, however long the recorder takes: the simulation slows down
instead. Without a node on `step_ack_topic` nothing waits; an answer missing for
`step_timeout` wall-clock seconds is logged, counted (`step_timeouts` in ~/check_success's
JSON) and the simulation goes on.

The same lockstep paces the simulator to the inference node in an evaluation (`step_rate` =
the node's control rate, `step_ack_topic` = the node's ~/commanded, the node's `step_topic` =
this node's ~/step): the node answers each instant once it has published that instant's
command, saying so in the answer's frame_id (`arm=1 gripper=N`: a trajectory stamped with
the instant went out, and N gripper goals so far); the simulated time then waits until that
trajectory and those gripper goals have reached the simulation too, so every command acts
from the instant it was computed for, however slow the node or the machine.

Episode timing in simulated time (~/check_success's JSON): `commanded_s`, the simulated
seconds since the first stamped trajectory after the reset (the inference node's first
command of the episode), and `solved_after_s`, when the task's check first held after that
(checked at every physics step), or null.

With `expert:=true` the node also runs the scripted expert (crane_x7_vla.sim.ScriptedExpert)
and publishes its LEADER joint states on `leader_joint_states_topic`. The expert reads the
scene (object poses) the way the human demonstrator looks at it, which only this process
knows, so it lives here; it commands nothing itself: the teleop relay turns its leader
joint states into follower commands exactly as for the real leader arm. Until the expert
moves, its leader rests at the episode's start pose (a person holding the leader arm where
the follower starts): the relay then keeps the follower there, instead of following the
last leader state of the previous episode (the follower is put back by the reset; the
relay knows nothing of it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time

import numpy as np
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from crane_x7_vla import robot
from crane_x7_vla.ros import msgs
from crane_x7_vla.ros.node_main import ConfigError, run

GRIPPER_STALL_TIME = 0.3  # s without finger motion while short of the goal = stalled
GRIPPER_GOAL_TIMEOUT = 5.0


def _info_topic(image_topic: str) -> str:
    """CameraInfo topic beside an image topic (…/image_raw -> …/camera_info)."""
    base = image_topic.rsplit("/", 1)[0] if "/" in image_topic.strip("/") else ""
    return f"{base}/camera_info" if base else "camera_info"


class SimNode(Node):
    def __init__(self, *, expert_default: bool = False, **kwargs) -> None:
        super().__init__("crane_x7_sim", **kwargs)
        p = lambda *a: msgs.declare(self, *a)  # noqa: E731
        self.task = p("task", "reach", "Task of the next reset (see crane_x7_vla.sim.TASKS)")
        p("seed", 0, "Seed of the next reset (it then increases by one)")
        self.control_hz = float(p("control_hz", 100.0, "Physics/control loop rate (Hz), also the /joint_states rate"))
        self.camera_rate = float(p("camera_rate", 30.0, "Camera frame rate (Hz)"))
        width = int(p("camera_width", 320, "Camera image width (pixels)"))
        height = int(p("camera_height", 240, "Camera image height (pixels)"))
        self.camera_names = list(
            p("cameras", ["wrist", "primary"], "Simulated cameras to publish: 'wrist' (hand camera), 'primary' (scene)")
        )
        self.camera_topics = list(
            p(
                "camera_topics",
                [robot.DEFAULT_IMAGE_TOPIC, "/scene_camera/color/image_raw"],
                "Image topic of each camera, same order as cameras",
            )
        )
        self.camera_frames = list(
            p(
                "camera_frames",
                ["camera_color_optical_frame", "scene_camera_optical_frame"],
                "frame_id of each camera's images, same order as cameras",
            )
        )
        self.joint_states_topic = p("joint_states_topic", robot.JOINT_STATES_TOPIC, "Follower JointState topic")
        self.trajectory_topic = p("trajectory_topic", robot.ARM_TRAJECTORY_TOPIC, "Arm JointTrajectory command topic")
        self.gripper_action_name = p("gripper_action", robot.GRIPPER_ACTION, "GripperCommand action name")
        self.instruction_topic = p(
            "instruction_topic", "/instruction", "Topic of the episode's instruction (std_msgs/String, transient local)"
        )
        self.success_rate = float(p("success_rate", 10.0, "Rate of the ~/success topic (Hz)"))
        self.expert_enabled = bool(
            p("expert", expert_default, "Run the scripted expert and publish LEADER joint states")
        )
        self.leader_topic = p(
            "leader_joint_states_topic", "/leader/joint_states", "Where the expert publishes leader joint states"
        )
        self.expert_rate = float(p("expert_rate", 50.0, "Leader joint state rate of the expert (Hz)"))
        self.expert_start_delay = float(p("expert_start_delay", 0.5, "Seconds after a reset before the expert moves"))
        self.expert_waits_for_start = bool(
            p(
                "expert_waits_for_start",
                False,
                "With the expert on: after a reset, hold still until ~/start_expert is called (data collection calls "
                "it once the logger records, so every episode begins with the arm at rest, as the policy will see it)",
            )
        )
        self.reset_quiet = float(
            p(
                "reset_quiet",
                0.8,
                "With the expert on: seconds the leader is silent BEFORE the scene resets, "
                "longer than the relay's leader_timeout, so the relay has stopped following "
                "when the follower is put back home (a real arm never jumps like that)",
            )
        )
        self.expert_max_speed = float(p("expert_max_speed", 1.6, "Fastest joint speed of the expert (rad/s)"))
        self.start_near = float(
            p(
                "start_near",
                0.0,
                "Share 0..1 of resets that start with the hand a few cm from a cube, drawn from "
                "the seed (recovery demonstrations: collect --sim --start-near); 0 = all at home",
            )
        )
        self.real_time_factor = float(
            p(
                "real_time_factor",
                1.0,
                "Simulated seconds per wall-clock second (above 1 needs publish_clock and "
                "use_sim_time on the other nodes)",
            )
        )
        self.publish_clock = bool(p("publish_clock", False, "Publish the simulated time on /clock and stamp with it"))
        self.step_rate = float(
            p(
                "step_rate",
                0.0,
                "Recording instants per simulated second (Hz) published on ~/step, each waited on "
                "until step_ack_topic answers (lockstep with the data logger; needs "
                "publish_clock); 0 = off",
            )
        )
        self.step_ack_topic = p(
            "step_ack_topic",
            "/data_logger/recorded",
            "std_msgs/Header topic whose stamps say up to which ~/step instant the recorder has recorded",
        )
        self.step_timeout = float(
            p("step_timeout", 10.0, "Wall-clock seconds to wait for a step's answer before going on (logged)")
        )
        self._check_config(width, height)

        self._lock = threading.RLock()
        self._env = None
        self._expert = None
        self._expert_start = 0.0
        self._start_state = None
        self._expert_state = "idle"
        self._camera_size = (width, height)
        self._gripper_seq = 0
        self._reset_request: tuple | None = None
        self._reset_done = threading.Event()
        self._reset_result: dict | Exception | None = None
        self._ik = None  # ArmIK of the current simulator, for recovery starts
        self.stats = {
            "control_steps": 0,
            "frames": 0,
            "t0": time.monotonic(),
            "steps": 0,
            "step_wait_s": 0.0,
            "step_timeouts": 0,
        }
        self._acked = threading.Condition()
        self._acked_ns = -1  # newest ~/step stamp the recorder answered
        self._acked_needs: dict = {}  # what the answer to that stamp says was sent: arm (0/1), gripper (count)
        self._traj_ns = -1  # newest stamp of a received trajectory
        self._gripper_lag = 0  # gripper goals an answer counted that never arrived (after a timeout)
        self._episode_stamp_ns = 0  # stamp of the current episode's reset
        self._commanded_ns: int | None = None  # simulated time of the episode's first stamped command
        self._solved_ns: int | None = None  # simulated time its success check first held after that

        group = ReentrantCallbackGroup()
        self._js_pub = self.create_publisher(JointState, self.joint_states_topic, msgs.STATE_QOS)
        self._img_pubs = [self.create_publisher(Image, t, msgs.SENSOR_QOS) for t in self.camera_topics]
        self._info_pubs = [
            self.create_publisher(CameraInfo, _info_topic(t), msgs.SENSOR_QOS) for t in self.camera_topics
        ]
        self._instr_pub = self.create_publisher(String, self.instruction_topic, msgs.LATCHED_QOS)
        self._success_pub = self.create_publisher(Bool, "~/success", 10)
        self._clock_pub = None
        if self.publish_clock:
            from rosgraph_msgs.msg import Clock

            self._clock_msg = Clock
            self._clock_pub = self.create_publisher(Clock, "/clock", 10)
        self._sim_ns = time.time_ns()  # the simulated clock: starts at the wall time, advances per physics step
        self._leader_pub = (
            self.create_publisher(JointState, self.leader_topic, msgs.STATE_QOS) if self.expert_enabled else None
        )
        self._expert_pub = (
            self.create_publisher(String, "~/expert_status", msgs.LATCHED_QOS) if self.expert_enabled else None
        )
        self.create_subscription(
            JointTrajectory,
            self.trajectory_topic,
            self._on_trajectory,
            msgs.STATE_QOS,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._step_pub = self._ack_sub = None
        if self.step_rate > 0:
            from std_msgs.msg import Header

            self._header_type = Header
            self._step_pub = self.create_publisher(Header, "~/step", msgs.STATE_QOS)
            self._ack_sub = self.create_subscription(
                Header,
                self.step_ack_topic,
                self._on_step_ack,
                msgs.STATE_QOS,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=group)
        self.create_service(Trigger, "~/check_success", self._on_check, callback_group=group)
        self.create_service(Trigger, "~/start_expert", self._on_start_expert, callback_group=group)
        self._action_server = self._make_gripper_server(group)

        if self.real_time_factor > 1.0:
            self._pin_to_one_core()
        self._running = True
        self._gripper_goals_running = 0
        # Ctrl-C / SIGTERM invalidates the context at once: stop publishing from the thread first.
        self.context.on_shutdown(self._stop_loop)
        self._thread = threading.Thread(target=self._loop, name="sim-loop", daemon=True)
        self._thread.start()
        result = self.reset()  # first episode, from the parameters
        self.get_logger().info(
            f"simulated CRANE-X7 ready: task {result['task']!r}, seed {result['seed']}, "
            f"{self.control_hz:g} Hz control, cameras "
            f"{', '.join(f'{c} -> {t}' for c, t in zip(self.camera_names, self.camera_topics))}"
            f"{', expert -> ' + self.leader_topic if self.expert_enabled else ''}"
        )

    def _pin_to_one_core(self) -> None:
        """Faster than real time the physics thread and the executor thread hand the GIL to
        each other hundreds of times a second; on two cores every hand-off is a cross-core
        wake-up and the simulation fell to about 1/7 of real time (measured: 20-30 s per
        3.3 s reach episode at real_time_factor 5; 0.6 s when the process keeps to one core)."""
        if not hasattr(os, "sched_setaffinity"):
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[-1]})
            self.get_logger().info(f"real_time_factor {self.real_time_factor:g}: simulator kept to CPU {cpus[-1]}")

    def _check_config(self, width: int, height: int) -> None:
        from crane_x7_vla.sim import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"parameter 'task' is {self.task!r}; the simulator knows {sorted(TASKS)}")
        for name in (
            "control_hz",
            "camera_rate",
            "success_rate",
            "expert_rate",
            "expert_max_speed",
            "real_time_factor",
            "step_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"parameter '{name}' must be positive, got {getattr(self, name)}")
        if self.step_rate < 0 or self.step_rate > self.control_hz:
            raise ConfigError(
                f"parameter 'step_rate' must be 0 (off) or up to control_hz ({self.control_hz:g}), got {self.step_rate}"
            )
        if self.step_rate > 0 and not self.publish_clock:
            raise ConfigError(
                "step_rate needs publish_clock:=true (and use_sim_time:=true on the other nodes): "
                "the simulated time pauses while the recorder records"
            )
        if not 0.0 <= self.start_near <= 1.0:
            raise ConfigError(f"parameter 'start_near' is a share of the resets, 0..1; got {self.start_near}")
        if not (len(self.camera_names) == len(self.camera_topics) <= len(self.camera_frames)):
            raise ConfigError(
                f"cameras ({len(self.camera_names)}), camera_topics ({len(self.camera_topics)}) and "
                f"camera_frames ({len(self.camera_frames)}) must name one entry per camera"
            )
        unknown = [c for c in self.camera_names if c not in ("primary", "wrist")]
        if unknown:
            raise ConfigError(f"parameter 'cameras' names {unknown}; the simulator has 'primary' and 'wrist'")
        if not (16 <= width <= 1280 and 16 <= height <= 960):
            raise ConfigError(f"camera size {width}x{height} is outside 16..1280 x 16..960")
        if self.real_time_factor != 1.0 and not self.publish_clock:
            raise ConfigError(
                f"real_time_factor {self.real_time_factor:g} needs publish_clock:=true (and "
                "use_sim_time:=true on the other nodes): wall-clock stamps would not match the motion"
            )

    def _make_gripper_server(self, group):
        try:
            from control_msgs.action import GripperCommand
        except ImportError as exc:
            raise ConfigError(
                "control_msgs is not installed: on the robot PC source your ROS 2 install; in this "
                "repository run scripts/setup.d/control_msgs.sh"
            ) from exc
        from rclpy.action import ActionServer, CancelResponse, GoalResponse

        self._gripper_type = GripperCommand
        return ActionServer(
            self,
            GripperCommand,
            self.gripper_action_name,
            execute_callback=self._execute_gripper,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda handle: CancelResponse.ACCEPT,
            callback_group=group,
        )

    # -- episodes -------------------------------------------------------------------------
    def reset(self) -> dict:
        """Ask the sim thread for a new episode (task and seed from the parameters); wait for it."""
        task = self.get_parameter("task").value
        seed = int(self.get_parameter("seed").value)
        if self._expert is not None:
            with self._lock:
                self._expert = None  # the leader goes silent
                self._set_expert_state("resetting")
            self._sleep_simulated(self.reset_quiet)
        self._reset_done.clear()
        with self._lock:
            self._reset_request = (task, seed)
        if not self._reset_done.wait(30.0):
            raise RuntimeError("the simulation thread did not reset within 30 s")
        if isinstance(self._reset_result, Exception):
            raise self._reset_result
        self.set_parameters([Parameter("seed", value=seed + 1)])
        return self._reset_result

    def _sleep_simulated(self, seconds: float) -> None:
        """Wait until `seconds` of simulated time have passed (however slowly the simulation runs),
        at most 30 wall-clock seconds."""
        until = self._sim_ns + int(seconds * 1e9)
        deadline = time.monotonic() + 30.0
        while self._sim_ns < until and self._running and time.monotonic() < deadline:
            time.sleep(0.005)

    def _do_reset(self, task: str, seed: int) -> dict:
        from crane_x7_vla.sim import ScriptedExpert, SimEnv
        from crane_x7_vla.sim.poses import recovery_start, start_hand_near_cube

        if self._env is None or self._env.task != task:
            if self._env is not None:
                self._env.close()
            self._env = SimEnv(task=task, seed=seed, camera_size=self._camera_size, cameras=tuple(self.camera_names))
            self._ik = None
        else:
            self._env.reset(seed)
        env = self._env
        start = "home"
        rng = recovery_start(seed, self.start_near)
        if rng is not None:
            from crane_x7_vla.sim.ik import ArmIK

            self._ik = self._ik or ArmIK(env.model)
            if start_hand_near_cube(env, self._ik, rng):
                start = "near cube"
        if self.expert_enabled:
            self._expert = ScriptedExpert(env, rng=np.random.default_rng([seed, 7]), max_speed=self.expert_max_speed)
            self._expert_start = math.inf if self.expert_waits_for_start else env.time + self.expert_start_delay
            self._set_expert_state("waiting")
        self._instr_pub.publish(String(data=env.instruction))
        self._start_state = env.joint_positions().copy()
        stamp_ns = msgs.stamp_to_ns(self._stamp())
        self._episode_stamp_ns, self._commanded_ns, self._solved_ns = stamp_ns, None, None
        result = {
            "task": env.task,
            "seed": env.seed,
            "instruction": env.instruction,
            "start_state": [round(float(v), 6) for v in self._start_state],
            "start": start,
            "stamp_ns": stamp_ns,
        }
        self.get_logger().info(f"reset: {json.dumps(result)}")
        return result

    def _set_expert_state(self, state: str) -> None:
        if state != self._expert_state:
            self._expert_state = state
            self._expert_pub.publish(String(data=state))

    def _on_reset(self, request, response):
        try:
            response.message = json.dumps(self.reset())
            response.success = True
        except Exception as exc:
            response.success, response.message = False, f"reset failed: {exc}"
            self.get_logger().error(response.message)
        return response

    def _on_start_expert(self, request, response):
        with self._lock:
            if self._expert is None:
                response.success = False
                response.message = (
                    "no expert to start: run the simulator with expert:=true and reset it first"
                    if not self.expert_enabled
                    else "no episode yet: call ~/reset first"
                )
                return response
            self._expert_start = min(self._expert_start, self._env.time + self.expert_start_delay)
            response.success = True
            response.message = f"the expert moves in {self.expert_start_delay:g} simulated s"
        return response

    def _on_check(self, request, response):
        with self._lock:
            env = self._env
            response.success = bool(env.success())
            commanded, solved = self._commanded_ns, self._solved_ns
            response.message = json.dumps(
                {
                    "task": env.task,
                    "seed": env.seed,
                    "instruction": env.instruction,
                    "time": env.time,
                    "expert": self._expert_state,
                    "distance_to_goal_m": round(env.distance_to_goal(), 4),
                    "grasped": env.grasped,
                    "commanded_s": None if commanded is None else (self._sim_ns - commanded) * 1e-9,
                    "solved_after_s": None if solved is None else (solved - commanded) * 1e-9,
                    "steps": self.stats["steps"],
                    "step_timeouts": self.stats["step_timeouts"],
                    "step_wait_s": round(self.stats["step_wait_s"], 3),
                }
            )
        return response

    # -- commands -------------------------------------------------------------------------
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            self._apply_trajectory(msg)
        finally:
            stamp_ns = msgs.stamp_to_ns(msg.header.stamp)
            if stamp_ns:
                with self._lock:
                    if self._commanded_ns is None and stamp_ns >= self._episode_stamp_ns:
                        self._commanded_ns = self._sim_ns
                with self._acked:
                    self._traj_ns = max(self._traj_ns, stamp_ns)
                    self._acked.notify_all()

    def _apply_trajectory(self, msg: JointTrajectory) -> None:
        names = list(msg.joint_names)
        unknown = [n for n in names if n not in robot.ARM_JOINTS]
        missing = [n for n in robot.ARM_JOINTS if n not in names]
        if unknown or missing or len(set(names)) != len(names):
            self.get_logger().warning(
                f"rejected a trajectory: it must name the 7 arm joints once each "
                f"(unknown: {unknown or 'none'}, missing: {missing or 'none'})",
                throttle_duration_sec=2.0,
            )
            return
        order = [names.index(j) for j in robot.ARM_JOINTS]
        points = []
        for k, pt in enumerate(msg.points):
            if len(pt.positions) != len(names):
                self.get_logger().warning(
                    f"rejected a trajectory: point {k} has {len(pt.positions)} positions for {len(names)} joints",
                    throttle_duration_sec=2.0,
                )
                return
            t = pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9
            points.append((t, np.array([pt.positions[i] for i in order])))
        with self._lock:
            env = self._env
            try:
                # An empty trajectory stops the arm where its reference is (like the JTC).
                env.set_arm_trajectory(points or [(0.0, env.arm_reference())])
            except ValueError as exc:
                self.get_logger().warning(f"rejected a trajectory: {exc}", throttle_duration_sec=2.0)

    def _execute_gripper(self, goal_handle):
        with self._lock:
            self._gripper_goals_running += 1
        try:
            return self._run_gripper_goal(goal_handle)
        finally:
            with self._lock:
                self._gripper_goals_running -= 1

    def _run_gripper_goal(self, goal_handle):
        cmd = goal_handle.request.command
        result = self._gripper_type.Result()
        with self._lock:
            self._gripper_seq += 1
            seq = self._gripper_seq
            try:
                self._env.set_gripper(cmd.position, cmd.max_effort)
            except ValueError as exc:
                self.get_logger().warning(f"rejected a gripper goal: {exc}")
                goal_handle.abort()
                return result
            finally:
                with self._acked:
                    self._acked.notify_all()
            target = float(np.clip(cmd.position, *robot.GRIPPER_RANGE))
        # Stall and time-out count simulated seconds: a slowed simulation moves the fingers slowly.
        start = last_move = self._sim_ns * 1e-9
        last_pos = None
        feedback = self._gripper_type.Feedback()
        while True:
            time.sleep(0.02)
            with self._lock:
                pos = float(self._env.joint_positions()[-1])
                preempted = seq != self._gripper_seq
            result.position = feedback.position = pos
            now = self._sim_ns * 1e-9
            if last_pos is None or abs(pos - last_pos) > 1e-3:
                last_move, last_pos = now, pos
            if not self._running:
                # The node is shutting down (on Ctrl-C its ROS context is already gone): the
                # goal ends here; its status can no longer be published.
                with contextlib.suppress(RCLError):
                    goal_handle.abort()
                return result
            if preempted:
                goal_handle.abort()
                return result
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                return result
            if abs(pos - target) < robot.GRIPPER_GOAL_TOLERANCE * 0.2:
                result.reached_goal = True
                goal_handle.succeed()
                return result
            if now - last_move > GRIPPER_STALL_TIME or now - start > GRIPPER_GOAL_TIMEOUT:
                # Holding an object: the fingers stop short of the goal.
                result.stalled = now - last_move > GRIPPER_STALL_TIME
                goal_handle.abort()
                return result
            feedback.stalled = False
            goal_handle.publish_feedback(feedback)

    # -- the simulation thread -------------------------------------------------------------
    def _stop_loop(self) -> None:
        self._running = False

    def _loop(self) -> None:
        try:
            self._run_loop()
        except Exception as exc:
            if self.context.ok():
                # A simulator without physics must not look alive to the other nodes.
                self.get_logger().fatal(f"simulation loop failed, exiting: {exc!r}")
                os._exit(3)
        finally:
            if self._env is not None:
                self._env.close()  # renderers belong to this thread's GL context

    def _stamp(self):
        if self._clock_pub is None:
            return self.get_clock().now().to_msg()
        return msgs.ns_to_stamp(self._sim_ns)

    def _on_step_ack(self, msg) -> None:
        stamp_ns = msgs.stamp_to_ns(msg.stamp)
        needs = {}
        for word in msg.frame_id.split():  # "arm=1 gripper=3" from the inference node; "" from the logger
            key, _, value = word.partition("=")
            if key in ("arm", "gripper") and value.isdigit():
                needs[key] = int(value)
        with self._acked:
            if stamp_ns >= self._acked_ns:
                self._acked_ns, self._acked_needs = stamp_ns, needs
            self._acked.notify_all()

    def _answered(self, stamp_ns: int) -> bool:
        """Whether the step at stamp_ns is answered and what the answer says was sent has arrived:
        the trajectory stamped with that instant, and as many gripper goals. Caller holds _acked."""
        if self._acked_ns < stamp_ns:
            return False
        if self._acked_needs.get("arm") and self._traj_ns < stamp_ns:
            return False
        return self._gripper_seq + self._gripper_lag >= self._acked_needs.get("gripper", 0)

    def _await_step(self, stamp, data: list) -> None:
        """Publish a recording instant on ~/step and wait until the recorder answers it. While
        waiting, the step goes out again every 0.2 s with the instant's `data` ((publisher,
        message) pairs: its joint state and frames), for a recorder that joined late or lost a
        best-effort frame."""
        stamp_ns = msgs.stamp_to_ns(stamp)
        step = self._header_type(stamp=stamp, frame_id="")
        self._step_pub.publish(step)
        self.stats["steps"] += 1
        if self._ack_sub.get_publisher_count() == 0:
            return  # no recorder: nothing to wait for
        t0 = time.monotonic()
        resend = t0 + 0.2
        with self._acked:
            while not self._answered(stamp_ns) and self._running:
                now = time.monotonic()
                if now - t0 > self.step_timeout:
                    self.stats["step_timeouts"] += 1
                    # goals counted but lost would hold every later step: count from here on
                    self._gripper_lag = max(self._gripper_lag, self._acked_needs.get("gripper", 0) - self._gripper_seq)
                    self.get_logger().warning(
                        f"no answer on {self.step_ack_topic} to the step at {stamp_ns * 1e-9:.3f} s within "
                        f"{self.step_timeout:g} s; going on",
                        throttle_duration_sec=5.0,
                    )
                    break
                if now >= resend:
                    for pub, msg in data:
                        pub.publish(msg)
                    self._step_pub.publish(step)
                    resend = now + 0.2
                self._acked.wait(0.02)
        self.stats["step_wait_s"] += time.monotonic() - t0

    def _run_loop(self) -> None:
        period = 1.0 / self.control_hz
        period_ns = int(round(period * 1e9))
        wall_period = period / self.real_time_factor
        next_tick = time.monotonic()
        next_frame = next_success = next_leader = 0.0  # simulated seconds since the loop started
        start_ns = self._sim_ns
        step_ns = int(round(1e9 / self.step_rate)) if self.step_rate > 0 else 0
        next_step_ns = start_ns
        while self._running:
            with self._lock:
                request, self._reset_request = self._reset_request, None
            if request is not None:
                try:
                    with self._lock:
                        self._reset_result = self._do_reset(*request)
                except Exception as exc:
                    self._reset_result = exc
                self._reset_done.set()
                next_tick = time.monotonic()
            env = self._env
            if env is None:
                time.sleep(0.005)
                continue
            with self._lock:
                env.step(period)
                self._sim_ns += period_ns
                sim_s = (self._sim_ns - start_ns) * 1e-9
                q, v = env.joint_positions(), env.joint_velocities()
                leader = None
                if self._expert is not None and sim_s >= next_leader:
                    if env.time >= self._expert_start:
                        leader = self._expert.target()
                        state = "failed" if self._expert.failed else "done" if self._expert.done else "running"
                        self._set_expert_state(state)
                    else:  # waiting: the leader rests at the start pose
                        leader = self._start_state
                    next_leader = sim_s + 1.0 / self.expert_rate - 1e-9
                success = env.success() if sim_s >= next_success else None
                if self._commanded_ns is not None and self._solved_ns is None and self._sim_ns > self._commanded_ns:
                    if success if success is not None else env.success():
                        self._solved_ns = self._sim_ns
            self.stats["control_steps"] += 1
            stamp = self._stamp()
            if self._clock_pub is not None:
                self._clock_pub.publish(self._clock_msg(clock=stamp))
            joint_state = msgs.make_joint_state(q, velocities8=v, stamp=stamp)
            self._js_pub.publish(joint_state)
            if leader is not None:
                self._leader_pub.publish(msgs.make_joint_state(leader, stamp=stamp))
            if success is not None:
                self._success_pub.publish(Bool(data=bool(success)))
                next_success = sim_s + 1.0 / self.success_rate - 1e-9
            if step_ns and self._sim_ns >= next_step_ns:
                # A recording instant: frames of this very instant, then wait for the recorder.
                frames = self._publish_frames(env)
                next_frame = sim_s + 1.0 / self.camera_rate
                self._await_step(stamp, [(self._js_pub, joint_state), *frames])
                while next_step_ns <= self._sim_ns:
                    next_step_ns += step_ns
                next_tick = time.monotonic()  # the wait is not time to catch up on
            elif sim_s >= next_frame:
                self._publish_frames(env)
                next_frame = max(next_frame + 1.0 / self.camera_rate, sim_s)
            next_tick += wall_period
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -5 * wall_period:
                next_tick = time.monotonic()  # too far behind: slow down instead of bursting

    def _publish_frames(self, env) -> list:
        """Render and publish every camera; returns the (publisher, Image) pairs."""
        sent = []
        for i, cam in enumerate(self.camera_names):
            with self._lock:
                rgb = env.render(cam)
                fovy = float(env.model.cam_fovy[env.model.camera(cam).id])
            stamp = self._stamp()
            frame = self.camera_frames[i]
            image = msgs.rgb_to_image(rgb, stamp=stamp, frame_id=frame)
            self._img_pubs[i].publish(image)
            self._info_pubs[i].publish(
                msgs.pinhole_camera_info(rgb.shape[1], rgb.shape[0], fovy, stamp=stamp, frame_id=frame)
            )
            self.stats["frames"] += 1
            sent.append((self._img_pubs[i], image))
        return sent

    def close(self) -> None:
        self._running = False
        self._thread.join(5.0)
        deadline = time.monotonic() + 1.0  # gripper goals see _running and end within a tick
        while self._gripper_goals_running and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.monotonic() - self.stats["t0"]
        if elapsed > 0:
            steps = (
                f", {self.stats['steps']} recording steps, {self.stats['step_wait_s']:.1f} s waiting for "
                f"the recorder, {self.stats['step_timeouts']} unanswered"
                if self._step_pub is not None
                else ""
            )
            self.get_logger().info(
                f"control loop {self.stats['control_steps'] / elapsed:.1f} Hz, "
                f"{self.stats['frames'] / elapsed / max(len(self.camera_names), 1):.1f} frames/s per camera{steps}"
            )


def main(argv=None) -> int:
    return run(SimNode, argv, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
