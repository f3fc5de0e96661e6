"""The MuJoCo model matches the robot description in robot.py."""

import math

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.sim import TASKS
from crane_x7_vla.sim.model import build_mjcf, build_model, hand_camera_xyaxes


@pytest.fixture(scope="module")
def model():
    return build_model(n_cubes=2, n_plates=2)


def test_joint_order_and_limits_match_robot(model):
    names = [model.joint(i).name for i in range(model.njnt) if model.jnt_type[i] != 0]  # not free joints
    assert names == list(robot.JOINT_NAMES) + [robot.GRIPPER_MIMIC_JOINT]
    for i, name in enumerate(robot.JOINT_NAMES):
        lo, hi = model.jnt_range[model.joint(name).id]
        assert lo == pytest.approx(robot.LOWER_LIMITS[i], abs=1e-6)
        assert hi == pytest.approx(robot.UPPER_LIMITS[i], abs=1e-6)
        assert model.jnt_limited[model.joint(name).id]
    lo_b, hi_b = model.jnt_range[model.joint(robot.GRIPPER_MIMIC_JOINT).id]
    assert (lo_b, hi_b) == pytest.approx((robot.LOWER_LIMITS[-1], robot.UPPER_LIMITS[-1]), abs=1e-6)


def test_chain_geometry_and_masses(model):
    import mujoco

    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)  # all joints at zero: the arm stands vertical
    expected_z = np.cumsum([link.xyz[2] for link in robot.KINEMATIC_CHAIN])
    for i, name in enumerate(robot.ARM_JOINTS):
        anchor = data.xanchor[model.joint(name).id]
        assert anchor == pytest.approx([0, 0, expected_z[i + 1]], abs=1e-9), name
        axis = data.xaxis[model.joint(name).id]
        assert axis == pytest.approx(robot.KINEMATIC_CHAIN[i + 1].axis, abs=1e-9), name
        assert model.body_mass[model.joint(name).bodyid] == pytest.approx(robot.KINEMATIC_CHAIN[i + 1].mass)
    for link in (robot.FINGER_A, robot.FINGER_B):
        jid = model.joint(link.joint).id
        assert data.xanchor[jid] == pytest.approx(np.array(link.xyz) + [0, 0, expected_z[-1]], abs=1e-9)
        assert model.body_mass[model.jnt_bodyid[jid]] == pytest.approx(link.mass)
    cam = model.camera("wrist").id
    assert data.cam_xpos[cam] == pytest.approx(np.array(robot.HAND_CAMERA_XYZ) + [0, 0, expected_z[-1]], abs=1e-9)


def test_hand_camera_looks_along_the_fingers():
    # MuJoCo cameras look along -z = x_axis x y_axis negated; the URDF mount points the lens along the fingers (+z).
    xy = np.array(hand_camera_xyaxes()).reshape(2, 3)
    view = -np.cross(xy[0], xy[1])
    assert view == pytest.approx([0, 0, 1], abs=1e-9)


def test_actuators_position_controlled_and_rendering_settings():
    xml = build_mjcf(3, 0)
    assert '<quality shadowsize="0"/>' in xml
    assert "mesh" not in xml  # our own primitive shapes only
    m = build_model(3, 0)
    assert m.nu == 9
    for name in robot.JOINT_NAMES + (robot.GRIPPER_MIMIC_JOINT,):
        act = m.actuator(name)
        assert m.actuator_trnid[act.id, 0] == m.joint(name).id
        assert act.gainprm[0] > 0 and act.biasprm[1] == -act.gainprm[0]  # position servo


def test_task_specs_and_bad_inputs():
    assert {"reach", "pick_place"} <= set(TASKS)
    with pytest.raises(ValueError, match="at least one cube"):
        build_mjcf(0, 0)
    assert math.isclose(robot.MAX_VELOCITY, 4.81710873)
