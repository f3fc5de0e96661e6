"""vla_inference_node: a trained policy drives the CRANE-X7.

    camera image(s) + /joint_states + instruction
        -> policy (local checkpoint or a remote policy server) in a worker thread
        -> action chunks, executed at control_rate (interpolated, cross-faded at seams)
        -> SafetyFilter (limits, velocity/acceleration, NaN, stale inputs, emergency stop)
        -> /crane_x7_arm_controller/joint_trajectory   (trajectory_msgs/JointTrajectory)
        -> /crane_x7_gripper_controller/gripper_cmd    (control_msgs/action/GripperCommand)

Control: the node starts PAUSED unless ``autostart`` is true. Services ``~/start``,
``~/pause``, ``~/estop`` and ``~/reset`` (std_srvs/Trigger); the emergency-stop topic
(std_msgs/Bool, ``estop_topic``) latches a stop on ``true``. After an emergency stop no
command is published until ``~/reset``, which leaves the node paused: call ``~/start``.
The instruction can be changed at run time on ``~/instruction`` (std_msgs/String, latched).
Diagnostics: diagnostic_msgs/DiagnosticArray on /diagnostics and the same figures as JSON
(std_msgs/String) on ``~/diagnostics``, once per second.

Model inference never runs in a ROS callback: a worker thread loads the policy and runs it
at ``inference_rate``, each call on a frame of the first camera that has just arrived (it waits
for the next one once the period is up, at most one period; ``wait_for_frame``), so the
picture is as young as the transport allows; callbacks only store the newest messages, and
the control timer only samples the executor and publishes, so a slow model never blocks them.

Lockstep with a simulator (``step_topic``, e.g. /crane_x7_sim/step, with ``use_sim_time``;
off by default, so a robot never sees it): the node then keeps no time of its own. Each
instant the simulator publishes on ``step_topic`` is one control tick at that simulated time:
the node waits for the joint state (and, at an inference instant, the frames) stamped with
that instant, calls the policy there (every 1/inference_rate simulated seconds), publishes the
instant's command stamped with it, and answers on ``~/commanded`` (std_msgs/Header: the
instant; frame_id ``arm=1 gripper=N``, whether a trajectory went out and how many gripper goals
so far). The simulator holds its time until the answer and those commands have arrived, so
the closed loop runs the same whatever the machine's load; only its wall-clock pace changes.
Inputs missing for ``step_input_timeout`` wall-clock seconds are counted
(``lockstep_input_timeouts`` in the diagnostics) and the tick goes on with what it has.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from crane_x7_vla import robot
from crane_x7_vla.policy.executor import INTERPOLATIONS, MODES, ChunkExecutor
from crane_x7_vla.policy.safety import SafetyFilter, fresh, message_age
from crane_x7_vla.ros import msgs
from crane_x7_vla.ros.node_main import ConfigError, run

WINDOW = 200  # latency samples kept for percentiles


def _duration(seconds: float) -> Duration:
    secs = int(seconds)
    return Duration(sec=secs, nanosec=int(round((seconds - secs) * 1e9)))


def _percentiles(values) -> dict:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "n": int(arr.size),
    }


class CameraInput:
    """The newest frame of one camera: the message, when it arrived, when it was taken."""

    def __init__(self, name: str, topic: str):
        self.name, self.topic = name, topic
        self.msg: Image | None = None
        self.capture_time = 0.0  # monotonic seconds
        self.recv_time = 0.0
        self.rejected = 0
        self.stale = 0  # frames stamped older than stale_timeout or in the future: not used


class InferenceNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("vla_inference_node", **kwargs)
        p = lambda *a: msgs.declare(self, *a)  # noqa: E731
        self.model_path = p("model_path", "", "Checkpoint directory (policy_config.json + weights)")
        self.policy_server = p(
            "policy_server", "", "Remote policy server URL, e.g. ws://gpu-host:8000 (instead of model_path)"
        )
        self.policy_token = p("policy_token", "", "Token for the policy server (empty: none)")
        self.instruction = p("instruction", "", "Language instruction (empty: the checkpoint's default)")
        self.device = p("device", "", "Device for the model (cpu, cuda, cuda:0; empty: the backend's choice)")
        self.cpu_threads = int(
            p(
                "cpu_threads",
                0,
                "CPU threads of a PyTorch (openvla) model on the CPU; 0 = one per "
                "core. 1 where a simulator or other heavy nodes share the CPU (other backends "
                "choose their own)",
            )
        )
        self.image_topic = p("image_topic", robot.DEFAULT_IMAGE_TOPIC, "Image topic of the policy's first camera")
        self.joint_states_topic = p("joint_states_topic", robot.JOINT_STATES_TOPIC, "Follower arm JointState topic")
        self.trajectory_topic = p(
            "trajectory_topic", robot.ARM_TRAJECTORY_TOPIC, "Arm controller JointTrajectory topic"
        )
        self.gripper_action_name = p("gripper_action", robot.GRIPPER_ACTION, "Gripper controller GripperCommand action")
        self.control_rate = float(p("control_rate", 30.0, "Commands per second (Hz)"))
        self.inference_rate = float(p("inference_rate", 5.0, "Policy calls per second at most (Hz)"))
        self.max_velocity = float(p("max_joint_velocity", 1.0, "Largest joint speed commanded (rad/s)"))
        self.max_acceleration = float(
            p("max_joint_acceleration", robot.MAX_ACCELERATION, "Largest joint acceleration commanded (rad/s^2)")
        )
        self.stale_timeout = float(
            p(
                "stale_timeout",
                0.5,
                "Hold when the image or joint state is older than this or stamped in the future (s)",
            )
        )
        self.dry_run = bool(p("dry_run", False, "Compute commands but publish them on ~/dry_run/joint_trajectory only"))
        self.autostart = bool(p("autostart", False, "Start moving once inputs arrive (else wait for ~/start)"))
        self.blend = p(
            "blend",
            "crossfade",
            "Chunk blending: crossfade, replace, or rtc (real-time chunking: a local openpi policy samples each "
            "chunk guided by the actions committed during its measured inference delay, then cross-fades the "
            "millimetres left)",
        )
        self.wait_for_frame = bool(
            p(
                "wait_for_frame",
                True,
                "Each policy call waits for the next frame of the policy's first camera once its period is up (at "
                "most one period), so the picture is as young as the transport allows; false: the newest frame at once",
            )
        )
        self.interpolation = p(
            "interpolation",
            "linear",
            "Between a chunk's points: linear, or bspline (a cubic B-spline: continuous velocity and acceleration, "
            "no overshoot, at rest on the last point one policy step after it)",
        )
        self.crossfade_time = float(p("crossfade_time", 0.2, "Cross-fade duration between chunks (s)"))
        self.control_priority = int(
            p(
                "control_priority",
                0,
                "SCHED_FIFO priority (1-99) of the control thread; 0 = normal scheduling (needs CAP_SYS_NICE / rtprio)",
            )
        )
        self.lookahead_points = int(
            p("lookahead_points", 3, "Points per published trajectory (one control period apart)")
        )
        self.use_gripper = bool(p("use_gripper", True, "Send GripperCommand goals"))
        self.gripper_deadband = float(p("gripper_deadband", 0.02, "New gripper goal only after this change (rad)"))
        self.gripper_rate = float(p("gripper_rate", 5.0, "Most gripper goals per second"))
        self.gripper_max_effort = float(p("gripper_max_effort", 5.0, "max_effort of gripper goals"))
        self.estop_topic = p("estop_topic", "/emergency_stop", "std_msgs/Bool topic: true latches an emergency stop")
        self.expected_statistics = p(
            "expected_statistics",
            "",
            "Dataset dir or dataset_statistics.json the checkpoint must match (empty: no check)",
        )
        self.camera_names = list(
            p(
                "camera_names",
                [""],
                "Camera names with their own topic (with camera_topics); "
                "the checkpoint's first camera defaults to image_topic",
            )
        )
        self.camera_topics = list(p("camera_topics", [""], "Image topic of each entry of camera_names, same order"))
        self.step_topic = p(
            "step_topic",
            "",
            "Simulator instants (std_msgs/Header) to run in lockstep with, e.g. "
            "/crane_x7_sim/step; needs use_sim_time. Empty (the default): the node's own timing",
        )
        self.step_input_timeout = float(
            p(
                "step_input_timeout",
                5.0,
                "Lockstep: wall-clock seconds to wait for the "
                "inputs stamped with an instant before going on without them",
            )
        )
        self._check_config()
        self.lockstep = bool(self.step_topic)

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._new_frame = threading.Event()  # set by each frame of the policy's first camera
        self.policy = None
        self.policy_config: dict | None = None
        self.status = "loading"
        self.status_detail = ""
        self.running = False
        self.start_time = 0.0
        self.cameras: dict[str, CameraInput] = {}
        self.state: np.ndarray | None = None
        self.state_time = 0.0
        self.state_rejected = 0
        self.state_stale = 0
        self.filter = SafetyFilter(
            max_velocity=self.max_velocity, max_acceleration=self.max_acceleration, stale_timeout=self.stale_timeout
        )
        self.executor_: ChunkExecutor | None = None
        self.timing = {
            k: deque(maxlen=WINDOW)
            for k in (
                "image_delivery_ms",  # camera stamp -> this node's callback (transport, decoding, executor)
                "image_wait_ms",
                "preprocess_ms",
                "model_ms",
                "postprocess_ms",
                "publish_ms",
                "image_to_command_ms",
                "inference_ms",
            )
        }
        self.counts = {
            "inferences": 0,
            "inference_errors": 0,
            "rejected_chunks": 0,
            "commands": 0,
            "hold_commands": 0,
            "gripper_goals": 0,
            "lockstep_input_timeouts": 0,
            "control_overruns": 0,  # ticks that ended after the next tick's deadline
            "control_slots_missed": 0,
        }
        self._inputs_cv = threading.Condition(self._lock)  # lockstep: an input arrived
        self._state_ns = 0  # stamp of the newest joint state (lockstep)
        self._steps: deque = deque()  # lockstep: instants (ns) not yet handled
        self._steps_cv = threading.Condition()
        self._last_step_ns = -1
        self._last_answer = None
        self._start_pending = False
        self._next_inference = 0.0
        self._last_command_time: float | None = None  # node time of the newest command
        self._pending_chunk: tuple[float, float] | None = None  # (capture time, arrival time)
        self._tick_times: deque = deque(maxlen=WINDOW)
        self._tick_late: deque = deque(maxlen=WINDOW)  # ms each control tick started after its deadline
        self._delays: deque = deque(maxlen=5)  # rtc: the latest inference delays (capture -> arrival, s)
        self._last_goal_pos: float | None = None
        self._last_goal_time = 0.0

        self._inputs = ReentrantCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(
            JointState, self.joint_states_topic, self._on_joint_state, msgs.STATE_QOS, callback_group=self._inputs
        )
        self.create_subscription(
            String, "~/instruction", self._on_instruction, msgs.LATCHED_QOS, callback_group=self._inputs
        )
        self.create_subscription(
            Bool, self.estop_topic, self._on_estop_topic, msgs.STATE_QOS, callback_group=self._service_group
        )
        topic = "~/dry_run/joint_trajectory" if self.dry_run else self.trajectory_topic
        self._traj_pub = self.create_publisher(JointTrajectory, topic, msgs.STATE_QOS)
        self._diag_json = self.create_publisher(String, "~/diagnostics", 10)
        if self.lockstep:
            from std_msgs.msg import Header

            self._header_type = Header
            self._answer_pub = self.create_publisher(Header, "~/commanded", msgs.STATE_QOS)
            self.create_subscription(
                Header, self.step_topic, self._on_step, msgs.STATE_QOS, callback_group=self._inputs
            )
        self._diag_pub = self._make_diagnostics_publisher()
        for name, fn in (
            ("~/start", self._srv_start),
            ("~/pause", self._srv_pause),
            ("~/estop", self._srv_estop),
            ("~/reset", self._srv_reset),
        ):
            self.create_service(Trigger, name, fn, callback_group=self._service_group)
        self._gripper = None
        if self.use_gripper and not self.dry_run:
            from rclpy.action import ActionClient

            self._gripper_type = _load_gripper_action()
            self._gripper = ActionClient(
                self, self._gripper_type, self.gripper_action_name, callback_group=self._service_group
            )
        if self.model_path:
            self._read_local_config()  # fast checks now; the weights load in the worker
        # The control loop has its own thread with absolute deadlines: executor scheduling (a
        # Python wait-set per callback) would add its latency to every command period.
        self._control_thread = threading.Thread(
            target=self._lockstep_main if self.lockstep else self._control_main, name="vla-control", daemon=True
        )
        self._control_thread.start()
        self.create_timer(1.0, self._publish_diagnostics, callback_group=self._service_group)
        self._worker = threading.Thread(target=self._worker_main, name="vla-inference", daemon=True)
        self._worker.start()
        source = self.model_path or self.policy_server
        self.get_logger().info(
            f"policy {source}; commands -> {self.resolve_topic_name(topic)} at {self.control_rate:g} Hz, "
            f"inference at most {self.inference_rate:g} Hz, max {self.max_velocity:g} rad/s"
            f"{' (DRY RUN)' if self.dry_run else ''}; {'autostart' if self.autostart else 'paused: call ~/start'}"
            f"{'; in lockstep with ' + self.step_topic if self.lockstep else ''}"
        )

    # --- configuration -----------------------------------------------------------------------
    def _check_config(self) -> None:
        if bool(self.model_path) == bool(self.policy_server):
            raise ConfigError(
                "set exactly one of model_path (a checkpoint directory) or policy_server (ws://host:port)"
            )
        for name in (
            "control_rate",
            "inference_rate",
            "max_velocity",
            "max_acceleration",
            "stale_timeout",
            "crossfade_time",
            "gripper_rate",
        ):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"parameter '{name}' must be a positive number, got {value}")
        if self.max_velocity > robot.MAX_VELOCITY:
            raise ConfigError(
                f"max_joint_velocity {self.max_velocity} is above the CRANE-X7's limit {robot.MAX_VELOCITY:.3f} rad/s"
            )
        if self.max_acceleration > robot.MAX_ACCELERATION:
            raise ConfigError(
                f"max_joint_acceleration {self.max_acceleration} is above the CRANE-X7's limit "
                f"{robot.MAX_ACCELERATION} rad/s^2"
            )
        if self.blend not in MODES:
            raise ConfigError(f"parameter 'blend' must be one of {', '.join(MODES)} (got '{self.blend}')")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"parameter 'interpolation' must be one of {', '.join(INTERPOLATIONS)} "
                              f"(got '{self.interpolation}')")
        if self.blend == "rtc" and self.policy_server:
            raise ConfigError(
                "parameter 'blend' rtc guides the sampling of a local policy: give model_path (an openpi "
                "checkpoint) instead of policy_server"
            )
        self.camera_names = [c for c in self.camera_names if c]
        self.camera_topics = [t for t in self.camera_topics if t]
        if len(self.camera_names) != len(self.camera_topics):
            raise ConfigError(
                f"camera_names has {len(self.camera_names)} entries but camera_topics has "
                f"{len(self.camera_topics)}: give one topic per camera"
            )
        if self.lookahead_points < 1:
            raise ConfigError("parameter 'lookahead_points' must be at least 1")
        if self.step_topic and not self.get_parameter("use_sim_time").value:
            raise ConfigError(
                "step_topic needs use_sim_time:=true: in lockstep the node runs on the simulator's /clock"
            )
        if not np.isfinite(self.step_input_timeout) or self.step_input_timeout <= 0:
            raise ConfigError(
                f"parameter 'step_input_timeout' must be a positive number, got {self.step_input_timeout}"
            )
        from crane_x7_vla.policy.devices import DeviceError, check_device

        try:
            check_device(self.device, parameter="parameter 'device'")
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None

    def _expected_fingerprint(self) -> str | None:
        if not self.expected_statistics:
            return None
        from crane_x7_vla.checkpoint_contract import fingerprint_of

        return fingerprint_of(self.expected_statistics)

    def _read_local_config(self) -> None:
        from crane_x7_vla.checkpoint_contract import load_policy_config

        # a checkpoint that does not fit is a CheckpointError, a ConfigError: the node stops naming it
        config = load_policy_config(self.model_path, expected_fingerprint=self._expected_fingerprint())
        self._configure(config)

    def _configure(self, config: dict) -> None:
        """Set up camera inputs and the executor for a policy's config."""
        cameras = list(config.get("cameras") or [])
        if self.blend == "rtc" and config.get("backend") != "openpi":
            raise ConfigError(
                f"parameter 'blend' rtc needs a policy that samples its chunks by flow matching (an openpi "
                f"checkpoint); {self.model_path} is {config.get('backend')}: use blend crossfade"
            )
        with self._lock:
            self.policy_config = config
            if not self.instruction:
                self.instruction = config.get("default_instruction", "") or ""
            self.executor_ = ChunkExecutor(
                float(config["control_rate_hz"]), crossfade_s=self.crossfade_time, mode=self.blend,
                interpolation=self.interpolation,
            )
        topics = dict(zip(self.camera_names, self.camera_topics))
        missing = [c for c in cameras[1:] if c not in topics]
        if missing:
            raise ConfigError(
                f"the policy needs camera(s) {', '.join(missing)} besides '{cameras[0]}' (on image_topic): "
                f"name their topics, e.g. -p camera_names:=\"['{missing[0]}']\" "
                f"-p camera_topics:=\"['/{missing[0]}_camera/color/image_raw']\""
            )
        for i, cam in enumerate(cameras):
            if cam in self.cameras:
                continue
            topic = topics.get(cam, self.image_topic)
            inp = CameraInput(cam, topic)
            self.cameras[cam] = inp
            self.create_subscription(
                Image, topic, lambda m, inp=inp: self._on_image(inp, m), msgs.SENSOR_QOS, callback_group=self._inputs
            )
            self.get_logger().info(f"camera '{cam}' <- {self.resolve_topic_name(topic)}")

    def _load_policy(self):
        if self.model_path:
            from crane_x7_vla.policy.loader import load_policy

            return load_policy(
                self.model_path,
                self.device or None,
                expected_fingerprint=self._expected_fingerprint(),
                cpu_threads=self.cpu_threads,
            )
        from crane_x7_vla.policy.client import RemotePolicy

        return RemotePolicy(
            self.policy_server, token=self.policy_token or None, expected_fingerprint=self._expected_fingerprint()
        )

    # --- inputs -------------------------------------------------------------------------------------
    def _now(self) -> float:
        """The node's time base (s): the monotonic clock, or in lockstep the simulated time."""
        if self.lockstep:
            return self.get_clock().now().nanoseconds * 1e-9
        return time.monotonic()

    def _arrival_age(self, stamp, what: str) -> float | None:
        """Age (s) of a message's stamp on the node clock, or None (logged) when it is stale:
        older than stale_timeout or stamped in the future. An unset stamp counts from arrival."""
        age = message_age(self.get_clock().now().nanoseconds, msgs.stamp_to_ns(stamp))
        if fresh(age, self.stale_timeout):
            return age
        self.get_logger().warning(
            f"ignored {what} stamped {age:+.3f} s from the node clock (usable: 0 to stale_timeout "
            f"{self.stale_timeout:g} s old); check that its clock matches this node's",
            throttle_duration_sec=5.0,
        )
        return None

    def _on_image(self, inp: CameraInput, msg: Image) -> None:
        if self.lockstep:  # taken at its stamp, on the simulated clock; the tick judges its age
            with self._lock:
                inp.msg, inp.recv_time = msg, self._now()
                inp.capture_time = msgs.stamp_to_ns(msg.header.stamp) * 1e-9
                self._inputs_cv.notify_all()
            return
        now = time.monotonic()
        age = self._arrival_age(msg.header.stamp, f"a frame of camera '{inp.name}' on {inp.topic}")
        with self._lock:
            if age is None:
                inp.stale += 1
                return
            inp.msg, inp.recv_time, inp.capture_time = msg, now, now - age
        self.timing["image_delivery_ms"].append(age * 1e3)
        if inp is next(iter(self.cameras.values())):
            self._new_frame.set()

    def _on_joint_state(self, msg: JointState) -> None:
        now = time.monotonic()
        try:
            q = msgs.joint_state_vector(msg)
        except (KeyError, ValueError) as exc:
            self.state_rejected += 1
            self.get_logger().warning(
                f"ignored a joint state on {self.joint_states_topic}: {exc}", throttle_duration_sec=5.0
            )
            return
        if self.lockstep:
            with self._lock:
                self._state_ns = msgs.stamp_to_ns(msg.header.stamp)
                self.state, self.state_time = q, self._state_ns * 1e-9
                self._inputs_cv.notify_all()
            return
        age = self._arrival_age(msg.header.stamp, f"a joint state on {self.joint_states_topic}")
        with self._lock:
            if age is None:
                self.state_stale += 1
                return
            self.state, self.state_time = q, now - age

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self.instruction = msg.data
        self.get_logger().info(f"instruction: '{msg.data}'")

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self.emergency_stop(f"{self.estop_topic} = true")

    # --- control services ---------------------------------------------------------------------------
    def emergency_stop(self, reason: str) -> None:
        with self._lock:
            already = self.filter.estopped
            self.running = False
            if self.filter.initialized:
                self.filter.emergency_stop(reason)
                if not already:
                    self._publish_arm([self.filter.last_command])  # freeze where the arm was commanded
            else:
                self.filter.emergency_stop(reason)
            if self.executor_ is not None:
                self.executor_.clear()
        if not already:
            self.get_logger().error(f"EMERGENCY STOP ({reason}): no commands until ~/reset")

    def start(self) -> tuple[bool, str]:
        with self._lock:
            if self.filter.estopped:
                return False, "emergency stop is latched: call ~/reset first"
            if self.status != "ready":
                return (
                    False,
                    f"policy not ready ({self.status}{': ' + self.status_detail if self.status_detail else ''})",
                )
            if self.state is None:
                return False, f"no joint state on {self.joint_states_topic} yet"
            self.filter.reset(self.state)
            self.executor_.clear()
            self.start_time = self._now()
            self._last_command_time = None
            self._start_pending = self.lockstep  # the episode begins at the next instant
            self._last_goal_pos = None
            reset = getattr(self.policy, "reset", None)
            if reset is not None:
                reset()
            self.running = True
        self._wake.set()
        return True, "started"

    def pause(self) -> None:
        with self._lock:
            if self.running and self.filter.initialized:
                self._publish_arm([self.filter.last_command])
            self.running = False
            if self.executor_ is not None:
                self.executor_.clear()

    def _srv_start(self, request, response):
        response.success, response.message = self.start()
        return response

    def _srv_pause(self, request, response):
        self.pause()
        response.success, response.message = True, "paused"
        return response

    def _srv_estop(self, request, response):
        self.emergency_stop("~/estop service")
        response.success, response.message = True, "emergency stop latched"
        return response

    def _srv_reset(self, request, response):
        with self._lock:
            if self.state is None:
                response.success, response.message = False, "no joint state: cannot restart from the measured pose"
                return response
            self.filter.release(self.state)
            self.running = False
        self.get_logger().info("emergency stop released; paused (call ~/start)")
        response.success, response.message = True, "released; paused until ~/start"
        return response

    # --- inference worker ----------------------------------------------------------------------------
    def _worker_main(self) -> None:
        while not self._stop.is_set() and self.policy is None:
            try:
                policy = self._load_policy()
            except Exception as exc:  # noqa: BLE001 - reported, then retried (remote) or final (local)
                self.status, self.status_detail = "error", str(exc)
                self.get_logger().error(f"cannot load the policy: {exc}")
                if self.model_path:
                    return
                self._stop.wait(2.0)
                continue
            if self.policy_config is None or self.policy_server:
                self._configure(policy.config)
            if self.model_path:  # the first real call should not also be the one that compiles the model
                self._warm_up(policy)
            self.policy = policy
            self.status, self.status_detail = "ready", ""
            self.get_logger().info(
                f"policy ready ({policy.config.get('backend')}, cameras "
                f"{list(policy.config.get('cameras') or [])}, "
                f"{policy.config.get('control_rate_hz')} Hz)"
            )
            if self.autostart:
                self._autostart_wait()
        if self.lockstep:
            return  # the lockstep thread calls the policy at the simulator's instants
        period = 1.0 / self.inference_rate
        next_time = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_time - time.monotonic()))
            self._wake.clear()
            next_time = max(next_time + period, time.monotonic())
            if self.wait_for_frame:
                self._new_frame.clear()
                self._new_frame.wait(period)  # the next frame, not one up to a camera period old
            if self._stop.is_set():
                break
            try:
                self._infer_once()
            except Exception as exc:  # noqa: BLE001 - a failed call must not end inference
                self.counts["inference_errors"] += 1
                self.get_logger().error(f"inference failed: {exc}", throttle_duration_sec=2.0)

    def _warm_up(self, policy) -> None:
        from crane_x7_vla.policy.loader import warm_up

        self.status, self.status_detail = "loading", "warm-up prediction"
        try:
            seconds = warm_up(policy)
            self.get_logger().info(f"warm-up prediction: {seconds:.2f} s")
            if self.blend == "rtc":  # the guided sampler is a program of its own: compile it now too
                self.get_logger().info(f"warm-up guided prediction: {self._warm_up_guided(policy):.2f} s")
        except Exception as exc:  # noqa: BLE001 - real observations get their own errors
            self.get_logger().warning(f"the warm-up prediction failed ({exc}); going on")

    @staticmethod
    def _warm_up_guided(policy) -> float:
        """One guided prediction (real-time chunking) on a blank picture at the home pose; its seconds."""
        from crane_x7_vla.policy.loader import warm_up

        horizon = int(policy.metadata.get("action_horizon") or 1)
        return warm_up(policy, committed_actions=np.tile(robot.home_state(), (horizon, 1)), delay_steps=1)

    def _autostart_wait(self) -> None:
        while not self._stop.is_set():
            ok, why = self.start()
            if ok:
                self.get_logger().info("autostart: running")
                return
            self.get_logger().info(f"autostart waiting: {why}", throttle_duration_sec=5.0)
            self._stop.wait(0.1)

    def _snapshot(self, now: float | None = None):
        """The newest inputs if they are complete and fresh at `now` (default: the node's time), else None."""
        now = self._now() if now is None else now
        with self._lock:
            if not self.running or self.state is None or not fresh(now - self.state_time, self.stale_timeout):
                return None
            frames = {}
            for name, inp in self.cameras.items():
                if inp.msg is None or not fresh(now - inp.capture_time, self.stale_timeout):
                    return None
                frames[name] = (inp.msg, inp.capture_time)
            return frames, self.state.copy(), self.instruction, self.start_time

    def _infer_once(self, now: float | None = None) -> None:
        """One policy call on the newest inputs; `now` (lockstep) is the instant the chunk counts
        as computed at, else the node's clock when it arrives."""
        snap = self._snapshot(now)
        if snap is None:
            return
        frames, state, instruction, start_time = snap
        t0 = time.perf_counter()
        images = {}
        for name, (msg, _) in frames.items():
            try:
                images[name] = msgs.image_to_rgb(msg)
            except ValueError as exc:
                self.cameras[name].rejected += 1
                self.get_logger().error(f"camera '{name}': {exc}", throttle_duration_sec=5.0)
                return
        capture = min((c for _, c in frames.values()), default=self._now() if now is None else now)
        obs = {
            "images": images,
            "state": state,
            "instruction": instruction,
            "episode_time": max(0.0, capture - start_time),
        }
        if self.blend == "rtc":
            obs.update(self._committed(capture))
        t1 = time.perf_counter()
        actions = self.policy.predict(obs)
        t2 = time.perf_counter()
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]
        inner = getattr(self.policy, "last_timing", None) or {}
        # A remote policy says which observation its reply answers (None: it cannot say).
        answered = getattr(self.policy, "last_observation_time", None)
        if answered is not None and answered != obs["episode_time"]:
            self.counts["rejected_chunks"] += 1
            self.get_logger().warning(
                f"rejected an action chunk that answers the observation taken at {answered:.3f} s, not the one "
                f"sent at {obs['episode_time']:.3f} s; holding",
                throttle_duration_sec=2.0,
            )
            return
        if actions.ndim != 2 or actions.shape[1] != robot.ACTION_DIM or not np.all(np.isfinite(actions)):
            self.counts["rejected_chunks"] += 1
            self.get_logger().warning(
                f"rejected an action chunk of shape {actions.shape} "
                f"{'with NaN/inf' if actions.size and not np.all(np.isfinite(actions)) else ''}; holding",
                throttle_duration_sec=2.0,
            )
            return
        with self._lock:
            if not self.running or start_time != self.start_time:
                return  # paused or restarted while the model ran
            arrival = self._now() if now is None else now
            self.executor_.add_chunk(actions, capture, arrival, state=state)
            self._pending_chunk = (capture, arrival)
            self._delays.append(arrival - capture)
        t3 = time.perf_counter()
        self.counts["inferences"] += 1
        self.timing["image_wait_ms"].append(max(0.0, arrival - capture - (t3 - t0)) * 1e3)
        model_ms = (t2 - t1) * 1e3
        pre_ms = (t1 - t0) * 1e3
        if "preprocess_ms" in inner and "model_ms" in inner:
            pre_ms += float(inner["preprocess_ms"])
            model_ms = float(inner["model_ms"])
        self.timing["preprocess_ms"].append(pre_ms)
        self.timing["model_ms"].append(model_ms)
        self.timing["postprocess_ms"].append((t3 - t2) * 1e3 + float(inner.get("postprocess_ms", 0.0)))
        self.timing["inference_ms"].append((t3 - t0) * 1e3)

    def _committed(self, capture: float) -> dict:
        """Real-time chunking's inputs for a chunk observed at `capture`: the executor's targets
        at its step times (`committed_actions`) and how many of them run before it arrives
        (`delay_steps`: the largest of the latest measured capture -> arrival delays, in policy
        steps, rounded up); nothing before the first chunk."""
        with self._lock:
            if self.executor_ is None or not self.executor_.has_chunk:
                return {}
            horizon = int((self.policy_config or {}).get("action_space", {}).get("horizon", 1))
            committed = self.executor_.committed(capture, horizon)
            rate = self.executor_.policy_rate_hz
        if not len(committed):
            return {}
        delay = max(self._delays, default=0.0)
        return {"committed_actions": committed, "delay_steps": int(np.ceil(delay * rate - 1e-9))}

    # --- control loop ---------------------------------------------------------------------------------
    def _control_main(self) -> None:
        """The control loop: a thread of its own, driven by no ROS executor and no callback group,
        that never waits on inference, image decoding or the callbacks beyond the short holds of
        `_lock` (inputs stored, a chunk handed over). Ticks fall on a fixed grid of absolute
        deadlines; when whole periods were lost (the thread was not scheduled), their slots are
        given up rather than published back to back."""
        # a thread waiting for Python's interpreter lock gets it after at most this long (the
        # default 5 ms would be added to a tick whenever another thread is running Python code)
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        if self.control_priority > 0:
            try:
                os.sched_setscheduler(
                    threading.get_native_id(), os.SCHED_FIFO, os.sched_param(min(self.control_priority, 99))
                )
                self.get_logger().info(f"control thread: SCHED_FIFO priority {min(self.control_priority, 99)}")
            except (PermissionError, OSError, AttributeError) as exc:
                self.get_logger().warning(
                    f"control thread keeps normal scheduling (SCHED_FIFO refused: {exc}); "
                    "allow rtprio for this user to use control_priority"
                )
        period = 1.0 / self.control_rate
        next_time = time.monotonic() + period
        while not self._stop.is_set():
            while not self._stop.is_set():
                delay = next_time - time.monotonic()
                if delay <= 0:
                    break
                if delay > 0.002:
                    self._stop.wait(delay - 0.001)
                else:
                    time.sleep(delay)
            if self._stop.is_set():
                break
            late = time.monotonic() - next_time
            if late >= period:  # whole periods lost: their slots are given up, not published in a burst
                missed = int(late // period)
                self.counts["control_slots_missed"] += missed
                next_time += period * missed
                late -= period * missed
            self._tick_late.append(late * 1e3)
            try:
                self._control_tick()
            except Exception as exc:  # noqa: BLE001 - reported; the next period tries again
                self.get_logger().error(f"control tick failed: {exc}", throttle_duration_sec=2.0)
            next_time += period
            self.counts["control_overruns"] += int(time.monotonic() > next_time)

    def _control_tick(self, now: float | None = None, stamp_ns: int | None = None) -> bool:
        """One command at `now` (default: the monotonic clock), stamped stamp_ns (lockstep: the
        simulator's instant, exact); whether a trajectory went out."""
        stamp = None if stamp_ns is None else msgs.ns_to_stamp(stamp_ns)
        now = time.monotonic() if now is None else now
        self._tick_times.append(now)
        dt = 1.0 / self.control_rate
        with self._lock:
            if not self.running or self.state is None or self.executor_ is None:
                return False
            state_age = now - self.state_time
            image_age = max((now - c.capture_time for c in self.cameras.values()), default=0.0)
            self.executor_.prune(now)
            target = self.executor_.sample(now + dt)
            result = self.filter.step(target, dt, image_age=image_age, state_age=state_age)
            points = [result.command]
            if not result.held and self.lookahead_points > 1:
                ahead = [self.executor_.sample(now + k * dt) for k in range(2, self.lookahead_points + 1)]
                points.extend(self.filter.preview(ahead, dt))
            self._publish_arm(points, stamp)
            self.counts["commands"] += 1
            self._last_command_time = now
            if result.held:
                self.counts["hold_commands"] += 1
            pending, self._pending_chunk = self._pending_chunk, None
            gripper = float(result.command[-1])
        done = time.monotonic() if stamp_ns is None else now
        if pending is not None:
            self.timing["publish_ms"].append((done - pending[1]) * 1e3)
            self.timing["image_to_command_ms"].append((done - pending[0]) * 1e3)
        if self._gripper is not None and not result.held:
            self._send_gripper(gripper, now)
        return True

    # --- lockstep with a simulator ----------------------------------------------------------------------
    def _on_step(self, msg) -> None:
        with self._steps_cv:
            self._steps.append(msgs.stamp_to_ns(msg.stamp))
            self._steps_cv.notify()

    def _lockstep_main(self) -> None:
        while not self._stop.is_set():
            with self._steps_cv:
                if not self._steps:
                    self._steps_cv.wait(0.1)
                    continue
                t_ns = self._steps.popleft()
            if t_ns <= self._last_step_ns:  # the simulator sent it again: it may not have our answer
                if t_ns == self._last_step_ns and self._last_answer is not None:
                    self._answer_pub.publish(self._last_answer)
                continue
            try:
                arm = self._lockstep_tick(t_ns)
            except Exception as exc:  # noqa: BLE001 - reported; the instant is still answered
                arm = False
                self.get_logger().error(f"control tick failed: {exc}", throttle_duration_sec=2.0)
            self._last_step_ns = t_ns
            self._last_answer = self._header_type(
                stamp=msgs.ns_to_stamp(t_ns), frame_id=f"arm={int(arm)} gripper={self.counts['gripper_goals']}"
            )
            self._answer_pub.publish(self._last_answer)

    def _lockstep_tick(self, t_ns: int) -> bool:
        """The control tick (and, when due, the policy call) of the simulated instant t_ns."""
        t = t_ns * 1e-9
        with self._lock:
            if not self.running or self.policy is None:
                return False
            if self._start_pending:  # the episode's first instant: everything starts here
                self._start_pending = False
                self._inputs_ready(t_ns, frames=False)
                if self.state is not None:
                    self.filter.reset(self.state)
                self.executor_.clear()
                self.start_time = self._next_inference = t
                reset = getattr(self.policy, "reset", None)
                if reset is not None:
                    reset()
            infer = t >= self._next_inference - 1e-6
            if not self._inputs_ready(t_ns, frames=infer):
                self.counts["lockstep_input_timeouts"] += 1
                self.get_logger().warning(
                    f"lockstep: no joint state{' and frames' if infer else ''} stamped {t:.3f} s within "
                    f"{self.step_input_timeout:g} s; the tick goes on without them",
                    throttle_duration_sec=5.0,
                )
        if infer:
            while self._next_inference <= t + 1e-6:
                self._next_inference += 1.0 / self.inference_rate
            try:
                self._infer_once(now=t)
            except Exception as exc:  # noqa: BLE001 - a failed call must not end inference
                self.counts["inference_errors"] += 1
                self.get_logger().error(f"inference failed: {exc}", throttle_duration_sec=2.0)
        return self._control_tick(now=t, stamp_ns=t_ns)

    def _inputs_ready(self, t_ns: int, *, frames: bool) -> bool:
        """Wait (holding the node lock's condition) until the joint state, and the frames when asked,
        stamped t_ns or later have arrived; False after step_input_timeout wall-clock seconds."""

        def ready():
            if self._state_ns < t_ns:
                return False
            return not frames or all(
                c.msg is not None and c.capture_time * 1e9 >= t_ns - 1000 for c in self.cameras.values()
            )

        deadline = time.monotonic() + self.step_input_timeout
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return False
            self._inputs_cv.wait(min(left, 0.1))
        return True

    def _publish_arm(self, points, stamp=None) -> None:
        dt = 1.0 / self.control_rate
        msg = JointTrajectory()  # zero stamp: the controller starts it on arrival
        if stamp is not None:  # lockstep: the instant it was computed for (the simulated time now)
            msg.header.stamp = stamp
        msg.joint_names = list(robot.ARM_JOINTS)
        for k, q in enumerate(points, start=1):
            pt = JointTrajectoryPoint()
            pt.positions = [float(v) for v in q[: robot.NUM_ARM_JOINTS]]
            pt.time_from_start = _duration(k * dt)
            msg.points.append(pt)
        self._traj_pub.publish(msg)

    def _send_gripper(self, position: float, now: float) -> None:
        if self._last_goal_pos is not None and abs(position - self._last_goal_pos) < self.gripper_deadband:
            return
        if now - self._last_goal_time < 1.0 / self.gripper_rate:
            return
        if not self._gripper.server_is_ready():
            self.get_logger().warning(
                f"gripper action server {self.gripper_action_name} is not available", throttle_duration_sec=5.0
            )
            return
        goal = self._gripper_type.Goal()
        goal.command.position = position
        goal.command.max_effort = self.gripper_max_effort
        self._gripper.send_goal_async(goal)
        self._last_goal_pos, self._last_goal_time = position, now
        self.counts["gripper_goals"] += 1

    # --- diagnostics --------------------------------------------------------------------------------
    def _make_diagnostics_publisher(self):
        try:
            from diagnostic_msgs.msg import DiagnosticArray
        except ImportError:
            return None
        return self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def diagnostics(self) -> dict:
        now = self._now()
        with self._lock:
            ticks = list(self._tick_times)
            mode = (
                "emergency_stop"
                if self.filter.estopped
                else "running"
                if self.running
                else "paused"
                if self.status == "ready"
                else self.status
            )
            data = {
                "mode": mode,
                "detail": self.filter.estop_reason or self.status_detail,
                "instruction": self.instruction,
                "policy": self.model_path or self.policy_server,
                "chunk_age_s": None
                if self.executor_ is None or self.executor_.chunk_age(now) is None
                else round(self.executor_.chunk_age(now), 4),
                "image_age_s": {
                    n: (round(now - c.capture_time, 4) if c.msg is not None else None) for n, c in self.cameras.items()
                },
                "joint_state_age_s": round(now - self.state_time, 4) if self.state is not None else None,
                # from the start to the newest command, on the node's clock (simulated in lockstep)
                "running_s": None
                if self._last_command_time is None
                else round(self._last_command_time - self.start_time + 1.0 / self.control_rate, 4),
                "interventions": self.filter.interventions,
                "counts": dict(
                    self.counts,
                    state_rejected=self.state_rejected,
                    state_stale=self.state_stale,
                    images_rejected={n: c.rejected for n, c in self.cameras.items()},
                    images_stale={n: c.stale for n, c in self.cameras.items()},
                ),
                "latency_ms": {k: list(v) for k, v in self.timing.items()},
                "control_period_ms": ticks,
                "control_late_ms": list(self._tick_late),
            }
        # the percentiles outside the lock, which the control tick takes
        data["latency_ms"] = {k: _percentiles(v) for k, v in data["latency_ms"].items()}
        data["control_period_ms"] = _percentiles(list(np.diff(np.asarray(ticks)) * 1e3) if len(ticks) > 2 else [])
        data["control_late_ms"] = _percentiles(data["control_late_ms"])
        return data

    def _publish_diagnostics(self) -> None:
        data = self.diagnostics()
        self._diag_json.publish(String(data=json.dumps(data)))
        if self._diag_pub is None:
            return
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        level = {
            "running": DiagnosticStatus.OK,
            "paused": DiagnosticStatus.OK,
            "loading": DiagnosticStatus.WARN,
            "emergency_stop": DiagnosticStatus.ERROR,
        }.get(data["mode"], DiagnosticStatus.ERROR)
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: vla inference",
            message=data["mode"] + (f" ({data['detail']})" if data["detail"] else ""),
            hardware_id=robot.ROBOT_NAME,
        )
        flat = {"chunk_age_s": data["chunk_age_s"], "joint_state_age_s": data["joint_state_age_s"]}
        flat.update({f"intervention.{k}": v for k, v in data["interventions"].items()})
        flat.update({f"latency.{k}.p50": v.get("p50") for k, v in data["latency_ms"].items()})
        flat.update({f"latency.{k}.p99": v.get("p99") for k, v in data["latency_ms"].items()})
        flat.update({f"count.{k}": v for k, v in self.counts.items()})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in flat.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._new_frame.set()
        self._worker.join(timeout=5.0)
        self._control_thread.join(timeout=2.0)
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()


def _load_gripper_action():
    try:
        from control_msgs.action import GripperCommand
    except ImportError as exc:
        raise ConfigError(
            "control_msgs is not installed, so gripper commands cannot be sent. On the robot PC source "
            "your ROS 2 install (it provides control_msgs); in this repository run "
            "scripts/setup.d/control_msgs.sh; or start the node with -p use_gripper:=false"
        ) from exc
    return GripperCommand


def main(argv=None) -> int:
    sys.setswitchinterval(0.001)  # threads waiting for the interpreter lock get it within ~1 ms
    return run(InferenceNode, argv, threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
