"""Shared by the deployment benchmarks: a checkpoint, a stand-in robot and the real node.

The node runs as its console script in its own process and ROS domain; this process
publishes joint states (100 Hz) and camera images, and records every trajectory the node
publishes (with its arrival time) and the node's JSON diagnostics.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

VENV_BIN = Path(sys.executable).parent


def baseline_checkpoint(horizon: int = 10) -> Path:
    """A mean-trajectory checkpoint built from synthetic episodes (no model time)."""
    from crane_x7_vla.episode.synthetic import write_synthetic_dataset
    from crane_x7_vla.policy.baselines import MeanTrajectoryPolicy

    root = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    write_synthetic_dataset(root / "data", episodes=3, steps=40, fps=10.0, cameras={"primary": (320, 240)})
    return MeanTrajectoryPolicy.from_dataset(root / "data", horizon=horizon).save(root / "mean")


class Session:
    """rclpy in this process (own domain) + the inference node as a subprocess."""

    def __init__(self, image_size=(640, 480), camera_rate=30.0):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.domain = random.randint(201, 230)
        os.environ["ROS_DOMAIN_ID"] = str(self.domain)
        rclpy.init(domain_id=self.domain)
        self.rclpy = rclpy
        self.node = _StandIn(image_size, camera_rate)
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        self.proc = None

    def start_node(self, **params):
        args = [str(VENV_BIN / "vla_inference_node"), "--ros-args"]
        for k, v in params.items():
            args += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_running(self, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vla_inference_node exited:\n{self.proc.stdout.read()}")
            if self.node.diagnostics and self.node.diagnostics[-1]["mode"] == "running" and self.node.arrivals:
                return
            time.sleep(0.05)
        raise RuntimeError("vla_inference_node did not start commanding in time")

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown()


class _StandIn:
    def __new__(cls, image_size, camera_rate):
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from crane_x7_vla import robot
        from crane_x7_vla.ros import msgs

        class StandIn(Node):
            def __init__(self):
                super().__init__("bench_robot")
                self.q = robot.home_state()
                self.arrivals: list[float] = []
                self.diagnostics: list[dict] = []
                w, h = image_size
                yy, xx = np.mgrid[0:h, 0:w]
                self.image = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90)], -1).astype(np.uint8)
                self.state_pub = self.create_publisher(JointState, robot.JOINT_STATES_TOPIC, msgs.STATE_QOS)
                self.image_pub = self.create_publisher(Image, robot.DEFAULT_IMAGE_TOPIC, msgs.SENSOR_QOS)
                self.create_subscription(JointTrajectory, robot.ARM_TRAJECTORY_TOPIC, self._on_traj, msgs.STATE_QOS)
                self.create_subscription(String, "/vla_inference_node/diagnostics",
                                         lambda m: self.diagnostics.append(json.loads(m.data)), 10)
                self.create_timer(0.01, self._state)
                self.create_timer(1.0 / camera_rate, self._camera)

            def _on_traj(self, msg):
                self.arrivals.append(time.monotonic())
                self.q[:7] = msg.points[0].positions

            def _state(self):
                self.state_pub.publish(msgs.make_joint_state(self.q, stamp=self.get_clock().now().to_msg()))

            def _camera(self):
                self.image_pub.publish(msgs.rgb_to_image(self.image, stamp=self.get_clock().now().to_msg(),
                                                         frame_id="camera"))

        return StandIn()


def percentiles(values) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max()), "n": int(arr.size)}


def write_json(path, data) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")
