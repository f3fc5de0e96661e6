"""eval_runner: closed-loop episodes of the inference node on the simulated CRANE-X7.

For each held-out seed: pause the inference node, set the simulator's `seed` parameter
(first_seed + episode index) and reset it (`~/reset` of crane_x7_sim), hand the episode's
instruction to the inference node, wait until joint states and scene frames of the new
scene flow and the node reports the instruction, start it, and wait for the task's success
check or the time limit; then pause it and wait for its diagnostics of the pause, whose
counters close the episode. Writes one JSON with the outcome of every episode (seed,
success, time to success, how far from the goal it ended, safety-filter interventions,
policy calls and commands per second the node achieved, in the episode's own time and per
wall-clock second, and lockstep waits that ran out) and the first/last scene frames as .npy.

Time is the simulator's (run with use_sim_time:=true beside a simulator that publishes
/clock): the time limit counts simulated seconds from the node's first command of the
episode, and success and its time are the simulator's own record (~/check_success's
`commanded_s` and `solved_after_s`), so a busy machine changes how long an episode takes,
not its outcome.

Started by `crane-x7-vla eval`; parameters:
    sim_node, inference_node   node names (default crane_x7_sim, vla_inference_node)
    episodes                   number of episodes
    first_seed                 seed of the first episode (-1: the simulator's own count)
    episode_timeout            seconds per episode (simulated seconds on the simulator's clock)
    results_path               JSON output
    frames_dir                 where first/last frames go ("" = none)
    scene_image_topic          camera the frames are taken from
    service_timeout            seconds a service may take to appear and to answer
    clock_timeout              wall-clock seconds the simulated clock may stand still in an episode

A failure ends the runner with exit code 1 and one error line in its log naming the node or
service (`crane-x7-vla eval` shows that line).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from crane_x7_vla import robot
from crane_x7_vla.ros import msgs
from crane_x7_vla.ros.background_node import wait_for_reply
from crane_x7_vla.ros.node_main import ConfigError

RESEND_AFTER = 5.0  # s without an answer before a request that may be repeated is sent again
SCENE_SETTLE = 0.2  # s of joint states and frames of the new scene before the node starts


class EvalRunner(Node):
    def __init__(self) -> None:
        super().__init__("eval_runner")
        p = lambda *a: msgs.declare(self, *a)  # noqa: E731
        self.sim = p("sim_node", "crane_x7_sim", "Name of the simulator node")
        self.inference = p("inference_node", "vla_inference_node", "Name of the inference node")
        self.episodes = int(p("episodes", 20, "Number of episodes"))
        self.first_seed = int(
            p(
                "first_seed",
                -1,
                "Seed of the first episode, then one more each (-1: the "
                "simulator's own count, which its start-up scene has already used)",
            )
        )
        self.timeout = float(p("episode_timeout", 20.0, "Seconds per episode before it counts as a failure"))
        self.results_path = Path(p("results_path", "eval_results.json", "Where the JSON of outcomes goes"))
        frames = p("frames_dir", "", "Folder for first/last scene frames (.npy); empty = none")
        self.frames_dir = Path(frames) if frames else None
        scene_topic = p("scene_image_topic", "/scene_camera/color/image_raw", "Camera for the frames")
        self.service_timeout = float(
            p(
                "service_timeout",
                30.0,
                "Seconds a service of the simulator or the inference node may take to appear and to answer",
            )
        )
        self.clock_timeout = float(
            p(
                "clock_timeout",
                180.0,
                "Wall-clock seconds the simulated clock may stand "
                "still during an episode before the evaluation ends with an error",
            )
        )
        self._success = False
        self._success_lock = threading.Lock()
        self._scene: Image | None = None
        self._joint_stamp = 0  # ns of the newest /joint_states
        self._diag: dict = {}
        self._diag_count = 0
        self.create_subscription(Bool, f"/{self.sim}/success", self._on_success, 10)
        self.create_subscription(Image, scene_topic, self._on_scene, msgs.SENSOR_QOS)
        self.create_subscription(JointState, robot.JOINT_STATES_TOPIC, self._on_joints, msgs.STATE_QOS)
        self.create_subscription(String, f"/{self.inference}/diagnostics", self._on_diag, 10)
        self._instruction_pub = self.create_publisher(String, f"/{self.inference}/instruction", msgs.LATCHED_QOS)
        self._trigger_clients = {
            name: self.create_client(Trigger, srv)
            for name, srv in (
                ("reset", f"/{self.sim}/reset"),
                ("check", f"/{self.sim}/check_success"),
                ("start", f"/{self.inference}/start"),
                ("pause", f"/{self.inference}/pause"),
            )
        }
        self._params_client = self.create_client(SetParameters, f"/{self.sim}/set_parameters")

    def _on_success(self, msg: Bool) -> None:
        with self._success_lock:
            self._success = bool(msg.data)

    def _on_scene(self, msg: Image) -> None:
        self._scene = msg

    def _on_joints(self, msg: JointState) -> None:
        self._joint_stamp = msgs.stamp_to_ns(msg.header.stamp)

    def _on_diag(self, msg: String) -> None:
        try:
            self._diag = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        self._diag_count += 1

    def _wait(self, predicate, timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{failure} within {timeout:g} s")
            time.sleep(0.02)

    def wait_for_scene(self, reset_ns: int, instruction: str, timeout: float = 30.0) -> None:
        """Until joint states and scene frames of the new scene have flowed for SCENE_SETTLE s
        (the inference node gets them the same way) and the node reports the instruction."""
        fresh = reset_ns + int(SCENE_SETTLE * 1e9)
        self._wait(
            lambda: (
                self._joint_stamp >= fresh
                and self._scene is not None
                and msgs.stamp_to_ns(self._scene.header.stamp) >= fresh
            ),
            timeout,
            f"/{self.sim} sent no joint states and scene frames of the new scene",
        )
        self._wait(
            lambda: self._diag.get("instruction") == instruction,
            timeout,
            f"/{self.inference} did not report the instruction {instruction!r}",
        )

    def diagnostics_after_pause(self, timeout: float = 30.0) -> dict:
        """The node's first diagnostics made after the pause: its counters are the episode's last."""
        seen = self._diag_count
        self._wait(
            lambda: self._diag_count > seen and self._diag.get("mode") != "running",
            timeout,
            f"/{self.inference} published no diagnostics after the pause",
        )
        return self._diag

    def call(self, name: str) -> Trigger.Response:
        # pause and check may be asked twice; reset and start may not
        repeatable = name in ("pause", "check")
        return self._call(
            self._trigger_clients[name],
            Trigger.Request(),
            self.service_timeout,
            resend_after=RESEND_AFTER if repeatable else None,
        )

    def set_seed(self, seed: int) -> None:
        request = SetParameters.Request(parameters=[Parameter("seed", value=seed).to_parameter_msg()])
        result = self._call(self._params_client, request, self.service_timeout, resend_after=RESEND_AFTER).results[0]
        if not result.successful:
            raise RuntimeError(f"could not set the simulator's seed to {seed}: {result.reason}")

    def _call(self, client, request, timeout: float, resend_after: float | None = None):
        """Call a service and wait for the answer; a request that may be repeated is sent again
        after `resend_after` s without one."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(
                f"service {client.srv_name} did not appear within {timeout:.0f} s: "
                f"is its node running in ROS domain {self.context.get_domain_id()}?"
            )
        return wait_for_reply(
            client,
            request,
            time.monotonic() + timeout,
            resend_after=resend_after,
            late=lambda: RuntimeError(f"service {client.srv_name} did not answer within {timeout:.0f} s"),
        )

    def _interventions(self) -> dict:
        return dict(self._diag.get("interventions", {}))

    def _frame(self, label: str, index: int) -> None:
        if self.frames_dir is None or self._scene is None:
            return
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.frames_dir / f"episode_{index:03d}_{label}.npy", msgs.image_to_rgb(self._scene))

    def wait_until_ready(self, timeout: float = 180.0) -> None:
        """The policy loads in the inference node's worker: retry ~/start until it agrees; a node
        whose diagnostics say the policy could not be loaded ends the evaluation at once."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            response = self.call("start")
            if response.success:
                self.call("pause")
                return
            last = response.message
            if self._diag.get("mode") == "error":
                raise RuntimeError(f"/{self.inference} could not load its policy: {self._diag.get('detail', last)}")
            time.sleep(0.5)
        raise RuntimeError(f"/{self.inference} did not become ready within {timeout:g} s: {last}")

    def _sim_now(self) -> int:
        return self.get_clock().now().nanoseconds

    def wait_simulated(self, until_ns: int) -> None:
        """Until the success flag is up or the clock reaches until_ns; an error naming the
        simulator when its clock stands still for clock_timeout wall-clock seconds."""
        last, moved = self._sim_now(), time.monotonic()
        while True:
            with self._success_lock:
                if self._success:
                    return
            now = self._sim_now()
            if now >= until_ns:
                return
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > self.clock_timeout:
                raise RuntimeError(f"the clock of /{self.sim} stood still for {self.clock_timeout:g} s in an episode")
            time.sleep(0.02)

    def run_episode(self, index: int) -> dict:
        self.call("pause")
        if self.first_seed >= 0:
            self.set_seed(self.first_seed + index)
        reset = self.call("reset")
        if not reset.success:
            raise RuntimeError(f"simulator reset failed: {reset.message}")
        info = json.loads(reset.message)
        reset_ns = int(info.get("stamp_ns") or self._sim_now())
        self._instruction_pub.publish(String(data=info["instruction"]))
        self.wait_for_scene(reset_ns, info["instruction"])
        with self._success_lock:
            self._success = False
        self._frame("first", index)
        before = self._interventions()
        counts_before = dict(self._diag.get("counts", {}))
        sim_before = json.loads(self.call("check").message)
        start = self.call("start")
        if not start.success:
            raise RuntimeError(f"inference node refused to start: {start.message}")
        t0 = time.monotonic()
        sim0 = self._sim_now()
        limit_ns = int(self.timeout * 1e9)
        until = sim0 + limit_ns
        while True:
            self.wait_simulated(until)
            check = json.loads(self.call("check").message)
            solved, commanded = check.get("solved_after_s"), check.get("commanded_s")
            if solved is not None:
                break
            if commanded is None:  # no stamped command (a node not in lockstep): the runner's clock decides
                if self._sim_now() >= sim0 + limit_ns:
                    break
            elif commanded >= self.timeout:
                break
            else:  # the node's first command came after sim0: wait for the rest of its time
                until = max(until, self._sim_now()) + int((self.timeout - commanded) * 1e9)
            with self._success_lock:
                self._success = False  # a flag of the previous scene, or one not confirmed above
        wall = time.monotonic() - t0
        self.call("pause")
        after_check = json.loads(self.call("check").message)
        diag = self.diagnostics_after_pause()
        counts = diag.get("counts", {})
        after = self._interventions()
        self._frame("last", index)
        done = {
            k: int(counts.get(k, 0)) - int(counts_before.get(k, 0))
            for k in ("inferences", "commands", "lockstep_input_timeouts")
        }
        success = solved is not None and solved <= self.timeout
        # the episode's own length: the node's ticks from its start to its pause (simulated
        # seconds in lockstep); the simulator's count when the node does not say
        duration = diag.get("running_s") or commanded or wall
        missed = int(after_check.get("step_timeouts", 0)) - int(sim_before.get("step_timeouts", 0))
        return {
            "seed": int(info["seed"]),
            "instruction": info["instruction"],
            "success": success,
            "time_to_success": round(solved, 4) if success else None,
            "duration": round(duration, 4),
            "final_distance_m": check.get("distance_to_goal_m"),
            "grasped": after_check.get("grasped"),
            "interventions": {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in after},
            # policy calls in the episode and the node's latency percentiles (its recent window)
            "inferences": done["inferences"],
            "latency_ms": self._diag.get("latency_ms", {}),
            # what the node achieved in this episode (its parameters ask for inference_rate and
            # control_rate), in the episode's time and per wall-clock second: a busy machine shows
            # in the second
            "inference_hz": round(done["inferences"] / duration, 2) if duration > 0 else None,
            "control_hz": round(done["commands"] / duration, 2) if duration > 0 else None,
            "wall_duration": round(wall, 3),
            "inference_hz_wall": round(done["inferences"] / wall, 2) if wall > 0 else None,
            "control_hz_wall": round(done["commands"] / wall, 2) if wall > 0 else None,
            "lockstep_timeouts": missed + done["lockstep_input_timeouts"],
        }

    def run_episodes(self) -> list[dict]:
        self.wait_until_ready()
        outcomes = []
        for index in range(self.episodes):
            outcome = self.run_episode(index)
            outcomes.append(outcome)
            solved_at = outcome["time_to_success"]
            self.get_logger().info(
                f"episode {index + 1}/{self.episodes} seed {outcome['seed']}: "
                f"{'success in %.2f s' % solved_at if solved_at is not None else 'failed'}, "
                f"{outcome['final_distance_m']} m from the goal at the end, {outcome['inference_hz']} policy calls/s, "
                f"{outcome['control_hz']} commands/s ({outcome['inference_hz_wall']} and {outcome['control_hz_wall']} "
                f"per wall-clock second, {outcome['wall_duration']:.1f} s), "
                f"{outcome['lockstep_timeouts']} lockstep waits ran out"
            )
            self.results_path.write_text(json.dumps(outcomes, indent=2))
        return outcomes


def main(argv=None) -> int:
    rclpy.init(args=argv)
    try:
        node = EvalRunner()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    code = 0
    try:
        node.run_episodes()
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # one line in the log, read by `crane-x7-vla eval`
        text = " ".join(str(exc).split()) or type(exc).__name__
        node.get_logger().error(text if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {text}")
        code = 1
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)  # a spin thread still inside rcl at exit aborts the process
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
