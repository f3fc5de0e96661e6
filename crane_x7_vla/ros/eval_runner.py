"""eval_runner: closed-loop episodes of the inference node on the simulated CRANE-X7.

For each held-out seed: pause the inference node, set the simulator's `seed` parameter
(first_seed + episode index) and reset it (`~/reset` of crane_x7_sim), hand the episode's
instruction to the inference node, start it, and wait for the task's success check or
the time limit. Writes one JSON with the outcome of every episode (seed, success, time
to success, how far from the goal it ended, safety-filter interventions) and the
first/last scene frames as .npy.

Started by `crane-x7-vla eval`; parameters:
    sim_node, inference_node   node names (default crane_x7_sim, vla_inference_node)
    episodes                   number of episodes
    first_seed                 seed of the first episode (-1: the simulator's own count)
    episode_timeout            seconds per episode
    results_path               JSON output
    frames_dir                 where first/last frames go ("" = none)
    scene_image_topic          camera the frames are taken from
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from crane_x7_vla.ros import msgs


class EvalRunner(Node):
    def __init__(self) -> None:
        super().__init__("eval_runner")
        p = lambda *a: msgs.declare(self, *a)  # noqa: E731
        self.sim = p("sim_node", "crane_x7_sim", "Name of the simulator node")
        self.inference = p("inference_node", "vla_inference_node", "Name of the inference node")
        self.episodes = int(p("episodes", 20, "Number of episodes"))
        self.first_seed = int(p("first_seed", -1, "Seed of the first episode, then one more each (-1: the "
                                "simulator's own count, which its start-up scene has already used)"))
        self.timeout = float(p("episode_timeout", 20.0, "Seconds per episode before it counts as a failure"))
        self.results_path = Path(p("results_path", "eval_results.json", "Where the JSON of outcomes goes"))
        frames = p("frames_dir", "", "Folder for first/last scene frames (.npy); empty = none")
        self.frames_dir = Path(frames) if frames else None
        scene_topic = p("scene_image_topic", "/scene_camera/color/image_raw", "Camera for the frames")
        self._success = False
        self._success_lock = threading.Lock()
        self._scene: Image | None = None
        self._diag: dict = {}
        self.create_subscription(Bool, f"/{self.sim}/success", self._on_success, 10)
        self.create_subscription(Image, scene_topic, self._on_scene, msgs.SENSOR_QOS)
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

    def _on_diag(self, msg: String) -> None:
        try:
            self._diag = json.loads(msg.data)
        except json.JSONDecodeError:
            pass

    def call(self, name: str, timeout: float = 30.0) -> Trigger.Response:
        return self._call(self._trigger_clients[name], Trigger.Request(), timeout)

    def set_seed(self, seed: int) -> None:
        request = SetParameters.Request(parameters=[Parameter("seed", value=seed).to_parameter_msg()])
        result = self._call(self._params_client, request, 30.0).results[0]
        if not result.successful:
            raise RuntimeError(f"could not set the simulator's seed to {seed}: {result.reason}")

    def _call(self, client, request, timeout: float):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"service {client.srv_name} did not appear within {timeout:.0f} s")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
            time.sleep(0.01)
        return future.result()

    def _interventions(self) -> dict:
        return dict(self._diag.get("interventions", {}))

    def _frame(self, label: str, index: int) -> None:
        if self.frames_dir is None or self._scene is None:
            return
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.frames_dir / f"episode_{index:03d}_{label}.npy", msgs.image_to_rgb(self._scene))

    def wait_until_ready(self, timeout: float = 180.0) -> None:
        """The policy loads in the inference node's worker: retry ~/start until it agrees."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            response = self.call("start")
            if response.success:
                self.call("pause")
                return
            last = response.message
            time.sleep(0.5)
        raise RuntimeError(f"the inference node never became ready: {last}")

    def run_episodes(self) -> list[dict]:
        self.wait_until_ready()
        outcomes = []
        for index in range(self.episodes):
            self.call("pause")
            if self.first_seed >= 0:
                self.set_seed(self.first_seed + index)
            reset = self.call("reset")
            if not reset.success:
                raise RuntimeError(f"simulator reset failed: {reset.message}")
            info = json.loads(reset.message)
            self._instruction_pub.publish(String(data=info["instruction"]))
            time.sleep(0.5)  # fresh images and joint states of the new scene reach the node
            with self._success_lock:
                self._success = False
            self._frame("first", index)
            before = self._interventions()
            inferences_before = int(self._diag.get("counts", {}).get("inferences", 0))
            start = self.call("start")
            if not start.success:
                raise RuntimeError(f"inference node refused to start: {start.message}")
            t0 = time.monotonic()
            solved_at = None
            while time.monotonic() - t0 < self.timeout:
                with self._success_lock:
                    if self._success:
                        solved_at = time.monotonic() - t0
                        break
                time.sleep(0.02)
            duration = time.monotonic() - t0
            self.call("pause")
            check = json.loads(self.call("check").message)
            time.sleep(0.3)  # the last diagnostics of the episode
            after = self._interventions()
            self._frame("last", index)
            outcome = {
                "seed": int(info["seed"]),
                "instruction": info["instruction"],
                "success": solved_at is not None,
                "time_to_success": solved_at,
                "duration": duration,
                "final_distance_m": check.get("distance_to_goal_m"),
                "interventions": {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in after},
                # policy calls in the episode and the node's latency percentiles (its recent window)
                "inferences": int(self._diag.get("counts", {}).get("inferences", 0)) - inferences_before,
                "latency_ms": self._diag.get("latency_ms", {}),
            }
            outcomes.append(outcome)
            self.get_logger().info(
                f"episode {index + 1}/{self.episodes} seed {outcome['seed']}: "
                f"{'success in %.1f s' % solved_at if solved_at is not None else 'failed'}, "
                f"{outcome['final_distance_m']} m from the goal at the end"
            )
            self.results_path.write_text(json.dumps(outcomes, indent=2))
        return outcomes


def main(argv=None) -> int:
    rclpy.init(args=argv)
    node = EvalRunner()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    code = 0
    try:
        node.run_episodes()
    except KeyboardInterrupt:
        code = 130
    except RuntimeError as exc:
        node.get_logger().error(str(exc))
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
