"""The CRANE-X7 arm as numbers: joint order, limits, poses, controllers and topics.

Every stage (collect, train, deploy) reads the robot from here, so the joint order
written into an episode is the order a policy is trained on and the order the
inference node commands. Numbers come from RT Corporation's public ROS 2 description
and control configuration of the CRANE-X7 (crane_x7_description, crane_x7_control).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROBOT_NAME = "crane_x7"

ARM_JOINTS: tuple[str, ...] = (
    "crane_x7_shoulder_fixed_part_pan_joint",
    "crane_x7_shoulder_revolute_part_tilt_joint",
    "crane_x7_upper_arm_revolute_part_twist_joint",
    "crane_x7_upper_arm_revolute_part_rotate_joint",
    "crane_x7_lower_arm_fixed_part_joint",
    "crane_x7_lower_arm_revolute_part_joint",
    "crane_x7_wrist_joint",
)
GRIPPER_JOINT = "crane_x7_gripper_finger_a_joint"
GRIPPER_MIMIC_JOINT = "crane_x7_gripper_finger_b_joint"

#: The 8 values stored per step (state and action): 7 arm joints, then the gripper.
JOINT_NAMES: tuple[str, ...] = ARM_JOINTS + (GRIPPER_JOINT,)
NUM_ARM_JOINTS = len(ARM_JOINTS)
ACTION_DIM = len(JOINT_NAMES)

_LIMITS_DEG = {
    "crane_x7_shoulder_fixed_part_pan_joint": (-157.0, 157.0),
    "crane_x7_shoulder_revolute_part_tilt_joint": (-90.0, 90.0),
    "crane_x7_upper_arm_revolute_part_twist_joint": (-157.0, 157.0),
    "crane_x7_upper_arm_revolute_part_rotate_joint": (-159.0, 0.001),
    "crane_x7_lower_arm_fixed_part_joint": (-157.0, 157.0),
    "crane_x7_lower_arm_revolute_part_joint": (-90.0, 90.0),
    "crane_x7_wrist_joint": (-167.0, 167.0),
    "crane_x7_gripper_finger_a_joint": (-5.0, 90.0),  # 0 = closed, larger = open
}

#: Position limits in radians, shape (8, 2), in JOINT_NAMES order.
POSITION_LIMITS = np.array([[math.radians(v) for v in _LIMITS_DEG[j]] for j in JOINT_NAMES])
LOWER_LIMITS = POSITION_LIMITS[:, 0].copy()
UPPER_LIMITS = POSITION_LIMITS[:, 1].copy()

MAX_VELOCITY = 4.81710873  # rad/s, every joint (URDF)
MAX_ACCELERATION = 4.4  # rad/s^2, every joint (MoveIt joint_limits.yaml)
VELOCITY_LIMITS = np.full(ACTION_DIM, MAX_VELOCITY)
ACCELERATION_LIMITS = np.full(ACTION_DIM, MAX_ACCELERATION)

GRIPPER_OPEN = math.radians(60.0)
GRIPPER_CLOSED = math.radians(20.0)  # the vendor's "close" example; 0 = fully closed
GRIPPER_RANGE = (LOWER_LIMITS[-1], UPPER_LIMITS[-1])

HOME_POSE = np.array([0.0, 0.3979, 0.0, -2.1994, 0.0563, 0.4817, 0.0])
VERTICAL_POSE = np.zeros(NUM_ARM_JOINTS)


@dataclass(frozen=True)
class ChainLink:
    """One joint of the kinematic chain: origin relative to the previous joint frame."""

    joint: str
    xyz: tuple[float, float, float]
    axis: tuple[float, float, float] | None  # None for a fixed joint
    mass: float  # kg of the child link


# Origins carry no rotation; each joint's frame is its parent's frame translated.
KINEMATIC_CHAIN: tuple[ChainLink, ...] = (
    ChainLink("crane_x7_mounting_plate_top", (0, 0, 0.005), None, 0.388),
    ChainLink(ARM_JOINTS[0], (0, 0, 0.036), (0, 0, 1), 0.253),
    ChainLink(ARM_JOINTS[1], (0, 0, 0.064), (0, -1, 0), 0.136),
    ChainLink(ARM_JOINTS[2], (0, 0, 0.065), (0, 0, 1), 0.321),
    ChainLink(ARM_JOINTS[3], (0, 0, 0.185), (0, -1, 0), 0.222),
    ChainLink(ARM_JOINTS[4], (0, 0, 0.121), (0, 0, 1), 0.207),
    ChainLink(ARM_JOINTS[5], (0, 0, 0.129), (0, -1, 0), 0.14),
    ChainLink(ARM_JOINTS[6], (0, 0, 0.019), (0, 0, 1), 0.121),  # child: gripper base
)
FINGER_A = ChainLink(GRIPPER_JOINT, (-0.012, 0, 0.024), (0, -1, 0), 0.0158)
FINGER_B = ChainLink(GRIPPER_MIMIC_JOINT, (0.012, 0, 0.024), (0, 1, 0), 0.0139)

#: Tool centre point (between the finger pads) on the hand's axis, from the last arm joint (m).
TCP_OFFSET = FINGER_A.xyz[2] + 0.046


def _axis_rotations(axis, angles: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations by `angles` (N,) about the unit `axis` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    s, c = np.sin(angles)[:, None, None], np.cos(angles)[:, None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def tool_centre_point(q: np.ndarray) -> np.ndarray:
    """Forward kinematics of KINEMATIC_CHAIN: arm joints (..., >=7) -> the tool centre
    point (..., 3) in the arm's base frame (m)."""
    q = np.asarray(q, dtype=np.float64)
    flat = q.reshape(-1, q.shape[-1])[:, :NUM_ARM_JOINTS]
    pos = np.zeros((len(flat), 3))
    rot = np.broadcast_to(np.eye(3), (len(flat), 3, 3))
    i = 0
    for link in KINEMATIC_CHAIN:
        pos = pos + rot @ np.asarray(link.xyz, dtype=np.float64)
        if link.axis is not None:
            rot = rot @ _axis_rotations(link.axis, flat[:, i])
            i += 1
    pos = pos + rot @ np.array([0.0, 0.0, TCP_OFFSET])
    return pos.reshape(*q.shape[:-1], 3)


# Hand camera (RealSense D435) on the gripper base link.
HAND_CAMERA_XYZ = (0.0, 0.032, 0.0191)
HAND_CAMERA_RPY_DEG = (-90.0, -90.0, 0.0)

# ros2_control interfaces (crane_x7_control).
ARM_CONTROLLER = "crane_x7_arm_controller"
GRIPPER_CONTROLLER = "crane_x7_gripper_controller"
ARM_TRAJECTORY_TOPIC = f"/{ARM_CONTROLLER}/joint_trajectory"
ARM_FOLLOW_ACTION = f"/{ARM_CONTROLLER}/follow_joint_trajectory"
GRIPPER_ACTION = f"/{GRIPPER_CONTROLLER}/gripper_cmd"
GRIPPER_GOAL_TOLERANCE = 0.1
JOINT_STATES_TOPIC = "/joint_states"
CONTROL_UPDATE_RATE = 200.0  # Hz

#: One documented default; realsense2_camera 4.x doubles the namespace
#: (/camera/camera/color/image_raw). Always a parameter, never hard-coded elsewhere.
DEFAULT_IMAGE_TOPIC = "/camera/color/image_raw"
REALSENSE_4X_IMAGE_TOPIC = "/camera/camera/color/image_raw"
DEFAULT_SERIAL_PORT = "/dev/ttyUSB0"


def clamp_to_limits(q: np.ndarray) -> np.ndarray:
    """Clamp an (..., 8) joint vector joint by joint to the position limits."""
    q = np.asarray(q, dtype=np.float64)
    return np.clip(q, LOWER_LIMITS[: q.shape[-1]], UPPER_LIMITS[: q.shape[-1]])


def within_limits(q: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Boolean mask, per joint, of values inside the limits (with tolerance)."""
    q = np.asarray(q, dtype=np.float64)
    n = q.shape[-1]
    return (q >= LOWER_LIMITS[:n] - tol) & (q <= UPPER_LIMITS[:n] + tol)


def home_state(gripper: float = GRIPPER_OPEN) -> np.ndarray:
    """The 8-value state at the home pose."""
    return np.concatenate([HOME_POSE, [gripper]])


def order_joints(names, positions, *, required=JOINT_NAMES) -> np.ndarray:
    """Reorder (names, positions) from a JointState into JOINT_NAMES order.

    Raises KeyError naming the missing joints, so a message from the wrong arm or a
    partial message is never silently mixed into a state vector.
    """
    lookup = dict(zip(names, positions))
    missing = [j for j in required if j not in lookup]
    if missing:
        raise KeyError(f"joint state lacks {', '.join(missing)} (got {', '.join(names) or 'no joints'})")
    return np.array([lookup[j] for j in required], dtype=np.float64)
