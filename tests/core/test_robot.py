import math

import numpy as np
import pytest

from crane_x7_vla import robot


def test_joint_order_and_limits():
    assert len(robot.JOINT_NAMES) == 8 and robot.JOINT_NAMES[-1] == "crane_x7_gripper_finger_a_joint"
    assert robot.JOINT_NAMES[0] == "crane_x7_shoulder_fixed_part_pan_joint"
    assert robot.UPPER_LIMITS[3] == pytest.approx(math.radians(0.001))
    assert robot.LOWER_LIMITS[6] == pytest.approx(math.radians(-167))
    assert np.all(robot.within_limits(robot.home_state()))
    assert robot.ARM_TRAJECTORY_TOPIC == "/crane_x7_arm_controller/joint_trajectory"
    assert robot.GRIPPER_ACTION == "/crane_x7_gripper_controller/gripper_cmd"


def test_clamp_is_joint_by_joint():
    q = robot.home_state()
    q[1] = 3.0
    out = robot.clamp_to_limits(q)
    assert out[1] == pytest.approx(math.pi / 2)
    np.testing.assert_allclose(np.delete(out, 1), np.delete(q, 1))


def test_order_joints_refuses_partial_messages():
    names = list(reversed(robot.JOINT_NAMES))
    values = list(range(8))
    ordered = robot.order_joints(names, values)
    assert ordered.tolist() == list(reversed(values))
    with pytest.raises(KeyError, match="crane_x7_wrist_joint"):
        robot.order_joints([n for n in names if n != "crane_x7_wrist_joint"], values[:7])
