"""The inference node drives the simulated CRANE-X7 (crane_x7_sim, MuJoCo) over real DDS."""

import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from crane_x7_vla import robot
from crane_x7_vla.policy.loader import load_policy
from crane_x7_vla.ros import msgs

from .conftest import Services, publish_when_matched, wait_for

pytest.importorskip("control_msgs.action", reason="control_msgs fixture: scripts/setup.d/control_msgs.sh")


class Watcher:
    def __init__(self, env):
        from rclpy.node import Node

        self.node = env.add_node(Node("sim_watcher"))
        self.q = None
        self.lock = threading.Lock()
        self.node.create_subscription(JointState, robot.JOINT_STATES_TOPIC, self._on_state, msgs.STATE_QOS)
        self.estop = self.node.create_publisher(Bool, "/emergency_stop", msgs.STATE_QOS)

    def _on_state(self, msg):
        with self.lock:
            self.q = msgs.joint_state_vector(msg)

    def state(self):
        with self.lock:
            return None if self.q is None else self.q.copy()


def test_mean_trajectory_policy_moves_the_simulated_arm_and_estop_stops_it(ros_env, mean_ckpt):
    watcher = Watcher(ros_env)
    sim = ros_env.launch("crane_x7_sim", task="reach", seed=0, camera_width=160, camera_height=120)
    wait_for(lambda: watcher.state() is not None or sim.poll() is not None, 60, "simulated joint states")
    assert sim.poll() is None, sim.stdout.read()
    start = watcher.state()
    goal = load_policy(mean_ckpt).trajectory[-1]
    node = ros_env.launch(
        "vla_inference_node", model_path=str(mean_ckpt), control_rate=30.0, inference_rate=5.0,
        max_joint_velocity=1.0, autostart=False, use_gripper=True,
        camera_names="['wrist', 'primary']",
        camera_topics="['/camera/color/image_raw', '/scene_camera/color/image_raw']",
    )
    assert np.abs(start[:7] - goal[:7]).max() > 0.1

    span = np.abs(start[:7] - goal[:7]).max()

    def progress():
        assert node.poll() is None, node.stdout.read()
        assert sim.poll() is None, sim.stdout.read()
        return 1.0 - np.abs(watcher.state()[:7] - goal[:7]).max() / span

    # The emergency stop must reach the node while the arm moves: the publisher has matched the
    # node's subscription before the arm starts (DDS drops a volatile message sent before that).
    wait_for(lambda: watcher.estop.get_subscription_count() > 0 or node.poll() is not None, 60,
             "the node's /emergency_stop subscription to match")
    client = ros_env.add_node(Services())
    wait_for(lambda: progress() is not None and client.call("start").success, 60, "the node to start (policy loaded)")
    # emergency stop while the arm is moving: it stops where it is, short of the goal
    wait_for(lambda: progress() > 0.3, 60, "the simulated arm to move towards the mean trajectory")
    publish_when_matched(watcher.estop, Bool(data=True))

    def settled():  # the controller finishes the last short (3-period) trajectory
        before = watcher.state()
        time.sleep(0.2)
        return np.abs(watcher.state()[:7] - before[:7]).max() < 1e-4

    # a loaded machine may deliver the stop late: wait for the arm to come to rest first
    wait_for(settled, 10, "the arm to come to rest after the emergency stop")
    q_stop = watcher.state()
    time.sleep(1.0)
    assert np.abs(watcher.state()[:7] - q_stop[:7]).max() < 1e-3
    assert progress() < 0.95
    # reset + start: the policy takes the arm (and the gripper) to the end of the trajectory
    assert client.call("reset").success
    assert client.call("start").success

    def arrived():
        q = watcher.state()
        return progress() > 0 and np.abs(q[:7] - goal[:7]).max() < 0.05 and abs(q[7] - goal[7]) < 0.1

    wait_for(arrived, 60, "the simulated arm and gripper to reach the end of the mean trajectory")
