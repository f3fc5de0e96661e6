"""Real DDS tests of the inference node: the node runs as its console script; this process
plays the robot (joint states from an arm that follows the commands, camera images) and
watches what the node publishes. Each test gets its own ROS domain, so tests running at the
same time on this machine never hear each other.

Commands are told apart by when the node PUBLISHED them (the DDS source time stamp, this
host's wall clock) and counted by the writer's sequence numbers, never by when this process
got round to receiving them: on a busy machine a starved test process receives a burst of
late messages at once, and a keep-last queue may drop some. A message published once (the
emergency stop) is sent only after the publisher has matched the node's subscription: DDS
delivers nothing to a subscription that it has not yet discovered."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from crane_x7_vla import robot
from crane_x7_vla.episode.synthetic import write_synthetic_dataset
from crane_x7_vla.policy.baselines import MeanTrajectoryPolicy
from crane_x7_vla.ros import msgs
from crane_x7_vla.ros.processes import pick_domain_id, release_domain_id
from crane_x7_vla.ros.processes import ros_env as node_env

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def mean_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ros_deploy")
    write_synthetic_dataset(root / "data", episodes=3, steps=30, fps=10.0)
    return MeanTrajectoryPolicy.from_dataset(root / "data", horizon=8).save(root / "mean")


class Services(Node):
    """Clients of the inference node's Trigger services."""

    def __init__(self, name="test_services"):
        super().__init__(name)
        self.triggers = {n: self.create_client(Trigger, f"/vla_inference_node/{n}")
                         for n in ("start", "pause", "estop", "reset")}

    def call(self, name, timeout=10.0):
        client = self.triggers[name]
        assert client.wait_for_service(timeout_sec=timeout), f"service ~/{name} not available"
        fut = client.call_async(Trigger.Request())
        end = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.01)
        assert fut.done(), f"service ~/{name} did not answer"
        return fut.result()


class Received:
    """A trajectory command: when it was published (ns, wall clock), its writer sequence number."""

    __slots__ = ("published_ns", "seq", "msg")

    def __init__(self, published_ns: int, seq: int, msg: JointTrajectory):
        self.published_ns, self.seq, self.msg = published_ns, seq, msg


def now_ns() -> int:
    """This host's wall clock, the clock of the DDS source time stamps."""
    return time.time_ns()


def publish_when_matched(publisher, msg, timeout=30.0):
    """Publish once the publisher has matched a subscription (a volatile message sent before
    that reaches nobody)."""
    wait_for(lambda: publisher.get_subscription_count() > 0, timeout,
             f"a subscription of {publisher.topic_name} to match")
    publisher.publish(msg)


class Robot(Services):
    """Joint states of an arm that follows the first point of each trajectory (100 Hz), images."""

    def __init__(self, start=None, image_topic=robot.DEFAULT_IMAGE_TOPIC):
        super().__init__("test_robot")
        self.q = robot.home_state() if start is None else np.array(start, dtype=float)
        self.lock = threading.Lock()
        self.trajectories: list[Received] = []
        self.diagnostics = []
        self.send_images = True
        self.image_stamp_offset = 0.0  # seconds added to each image's stamp (negative: older)
        self.target = None
        self.target_time = 0.0
        self.state_pub = self.create_publisher(JointState, robot.JOINT_STATES_TOPIC, msgs.STATE_QOS)
        self.image_pub = self.create_publisher(Image, image_topic, msgs.SENSOR_QOS)
        self.estop_pub = self.create_publisher(Bool, "/emergency_stop", msgs.STATE_QOS)
        self.instruction_pub = self.create_publisher(String, "/vla_inference_node/instruction", msgs.LATCHED_QOS)
        self.create_subscription(JointTrajectory, robot.ARM_TRAJECTORY_TOPIC, self._on_traj, msgs.STATE_QOS)
        self.create_subscription(String, "/vla_inference_node/diagnostics", self._on_diag, 10)
        self.create_timer(0.01, self._step)
        self.create_timer(1 / 15, self._image)

    def _on_traj(self, msg, info):
        with self.lock:
            self.trajectories.append(Received(info["source_timestamp"], info["publication_sequence_number"], msg))
            pt = msg.points[0]
            self.target = np.array(pt.positions)
            self.target_time = pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9

    def _on_diag(self, msg):
        import json
        self.diagnostics.append(json.loads(msg.data))

    def _step(self):
        with self.lock:
            if self.target is not None:
                # reach the first point in its time_from_start, like a trajectory controller
                frac = min(1.0, 0.01 / max(self.target_time, 0.01))
                self.q[:7] += frac * (self.target - self.q[:7])
                self.target_time = max(0.0, self.target_time - 0.01)
            q = self.q.copy()
        self.state_pub.publish(msgs.make_joint_state(q, stamp=self.get_clock().now().to_msg()))

    def _image(self):
        if self.send_images:
            img = np.full((96, 128, 3), 120, np.uint8)
            stamp = msgs.ns_to_stamp(self.get_clock().now().nanoseconds + int(self.image_stamp_offset * 1e9))
            self.image_pub.publish(msgs.rgb_to_image(img, stamp=stamp, frame_id="camera"))

    def at_rest(self) -> bool:
        """Whether the arm has reached the last command it received (or never got one)."""
        with self.lock:
            return self.target is None or bool(np.abs(self.q[:7] - self.target).max() < 1e-12)

    def traj_since(self, t_ns):
        """Commands the node published at or after `t_ns` (now_ns() clock)."""
        with self.lock:
            return [r for r in self.trajectories if r.published_ns >= t_ns]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def ros_env(monkeypatch):
    domain = pick_domain_id()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    env = node_env(domain)  # the nodes' environment as `crane-x7-vla eval` starts them
    rclpy.init(domain_id=domain)
    procs = []
    nodes = []
    executor = MultiThreadedExecutor(num_threads=2)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    class Env:
        def robot(self, **kwargs):
            node = Robot(**kwargs)
            executor.add_node(node)
            nodes.append(node)
            return node

        def add_node(self, node):
            executor.add_node(node)
            nodes.append(node)
            return node

        def launch(self, executable, **params):
            args = [str(VENV_BIN / executable), "--ros-args"]
            for k, v in params.items():
                if isinstance(v, bool):
                    v = str(v).lower()
                args += ["-p", f"{k}:={v}"]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            procs.append(proc)
            return proc

    yield Env()
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    executor.shutdown()
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown()
    release_domain_id(domain)
