"""crane_x7_sim as a process: the robot's ROS interfaces (joint states with the mimic
finger, trajectories matched by joint name, the GripperCommand action, cameras with
CameraInfo, latched instruction) and its reset / success services."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from crane_x7_vla import robot
from crane_x7_vla.ros import msgs


class Latest:
    def __init__(self, node, msg_type, topic, qos) -> None:
        self.msg = None
        self.count = 0
        self._lock = threading.Lock()
        node.create_subscription(msg_type, topic, self._on, qos)

    def _on(self, msg) -> None:
        with self._lock:
            self.msg, self.count = msg, self.count + 1


@pytest.fixture(scope="module")
def sim(domain_id, client, tmp_path_factory):
    from crane_x7_vla.ros.processes import NodeGroup, ros_env

    group = NodeGroup(ros_env(domain_id), tmp_path_factory.mktemp("sim_logs"))
    group.start("crane_x7_sim", {"task": "reach", "seed": 21, "camera_width": 160, "camera_height": 120})
    yield group
    group.stop_all()


def test_joint_states_cameras_and_instruction(sim, client, wait_for):
    node = client.node
    js = Latest(node, JointState, "/joint_states", msgs.STATE_QOS)
    images = {
        t: Latest(node, Image, t, msgs.SENSOR_QOS) for t in ("/camera/color/image_raw", "/scene_camera/color/image_raw")
    }
    infos = {
        t: Latest(node, CameraInfo, t, msgs.SENSOR_QOS)
        for t in ("/camera/color/camera_info", "/scene_camera/color/camera_info")
    }
    instruction = Latest(node, String, "/instruction", msgs.LATCHED_QOS)
    wait_for(
        lambda: (
            js.msg and instruction.msg and all(i.msg for i in images.values()) and all(i.msg for i in infos.values())
        ),
        60.0,
        "joint states, images, camera info and the instruction",
        sim,
    )
    assert list(js.msg.name) == [*robot.JOINT_NAMES, robot.GRIPPER_MIMIC_JOINT]
    q = msgs.joint_state_vector(js.msg)
    assert np.all(robot.within_limits(q, tol=0.02))
    assert js.msg.position[-1] == js.msg.position[-2]  # finger_b mirrors finger_a
    for msg in images.values():
        assert (msg.msg.width, msg.msg.height, msg.msg.encoding) == (160, 120, "rgb8")
        assert msgs.image_to_rgb(msg.msg).std() > 5
    for info in infos.values():
        assert (info.msg.width, info.msg.height) == (160, 120) and info.msg.k[0] > 0
    assert instruction.msg.data.startswith("reach the ")


def test_trajectory_by_joint_name_and_gripper_action(sim, client, wait_for):
    from control_msgs.action import GripperCommand
    from rclpy.action import ActionClient

    node = client.node
    js = Latest(node, JointState, "/joint_states", msgs.STATE_QOS)
    pub = node.create_publisher(JointTrajectory, robot.ARM_TRAJECTORY_TOPIC, msgs.STATE_QOS)
    target = robot.HOME_POSE + np.array([0.3, -0.2, 0.1, 0.2, 0.0, -0.1, 0.4])
    order = [6, 0, 5, 1, 4, 2, 3]  # joint names in a shuffled order: matched by name
    msg = JointTrajectory(joint_names=[robot.ARM_JOINTS[i] for i in order])
    point = JointTrajectoryPoint(positions=[float(target[i]) for i in order])
    point.time_from_start.sec = 1
    msg.points = [point]
    wait_for(lambda: node.count_subscribers(robot.ARM_TRAJECTORY_TOPIC) > 0, 30.0, "the trajectory subscriber", sim)
    pub.publish(msg)
    wait_for(
        lambda: js.msg is not None and np.abs(msgs.joint_state_vector(js.msg)[:7] - target).max() < 0.03,
        20.0,
        "the arm to reach the trajectory's end",
        sim,
    )

    action = ActionClient(node, GripperCommand, robot.GRIPPER_ACTION)
    assert action.wait_for_server(timeout_sec=30.0)
    goal = GripperCommand.Goal()
    goal.command.position, goal.command.max_effort = 0.3, 5.0
    handle = _done(action.send_goal_async(goal), 30.0)
    assert handle is not None and handle.accepted
    response = _done(handle.get_result_async(), 30.0)
    assert response is not None, "no gripper result within 30 s"
    result = response.result
    assert result.reached_goal and abs(result.position - 0.3) < 0.05
    assert abs(msgs.joint_state_vector(js.msg)[-1] - 0.3) < 0.05
    action.destroy()


def _done(future, wait: float = 10.0):
    import time

    deadline = time.monotonic() + wait
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return future.result() if future.done() else None


def test_reset_uses_the_seed_parameter_and_success_service(sim, client):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request(parameters=[Parameter("seed", value=40).to_parameter_msg()])
    assert client.call(SetParameters, "/crane_x7_sim/set_parameters", req).results[0].successful
    first = json.loads(client.trigger("/crane_x7_sim/reset").message)
    second = json.loads(client.trigger("/crane_x7_sim/reset").message)
    assert (first["seed"], second["seed"]) == (40, 41) and first["task"] == "reach"
    req = SetParameters.Request(parameters=[Parameter("seed", value=40).to_parameter_msg()])
    client.call(SetParameters, "/crane_x7_sim/set_parameters", req)
    again = json.loads(client.trigger("/crane_x7_sim/reset").message)
    assert again["instruction"] == first["instruction"]  # same seed, same scene
    check = client.trigger("/crane_x7_sim/check_success")
    assert check.success is False  # the arm is at home, far from the cube
    assert json.loads(check.message)["seed"] == 40
    started = client.trigger("/crane_x7_sim/start_expert")  # this simulator runs without the expert
    assert started.success is False and "expert:=true" in started.message
