"""MuJoCo model of the CRANE-X7 on a table, generated from the numbers in robot.py.

Geometry is our own: capsules, cylinders and boxes sized to the joint offsets of the
kinematic chain; masses come from the chain. World frame: the arm's mounting plate
stands at the origin on the table top (z = 0) at the table's back edge; the arm
looks along +x, where the objects lie.
"""

from __future__ import annotations

import math
import os

import numpy as np

from crane_x7_vla import robot

# Headless rendering: EGL needs no display. Must be set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

TIMESTEP = 0.002  # s, physics step (500 Hz)
CUBE_HALF = 0.015  # m, cubes are 3 cm
CUBE_MASS = 0.03  # kg
PLATE_RADIUS = 0.055
PLATE_HALF_HEIGHT = 0.005

# Finger geometry (in each finger's joint frame; z runs along the finger).
FINGER_LENGTH = 0.056
PAD_Z = 0.046  # centre of the contact pad along the finger
PAD_HALF = (0.003, 0.011, 0.011)
PAD_TILT = 0.1  # rad: pads are vertical when the finger is 0.1 rad open (a 3 cm grasp)

# Position servo gains per arm joint (N m / rad, N m s / rad) and torque limits (N m).
ARM_KP = (200.0, 200.0, 150.0, 150.0, 80.0, 80.0, 50.0)
ARM_KV = (9.0, 9.0, 6.0, 6.0, 3.5, 3.5, 2.5)  # at or above critical damping
ARM_FORCE = (4.1, 10.6, 4.1, 4.1, 4.1, 4.1, 4.1)  # XM430 (XM540 on the tilt joint)
ARMATURE = 0.02  # reflected rotor inertia of the geared servos
FINGER_KP = 4.0
FINGER_KV = 0.1
# The fingers' end stops: as stiff as the 2 ms step allows. MuJoCo's default (0.02 s) let a finger
# flung open by a fast arm swing pass its 90 degree stop by 0.04 rad, which the episode
# validator rightly refused (a whole demo collection failed on one such step).
LIMIT_SOLREF = f"{2 * TIMESTEP:g} 1"

# Arm link radii for the capsules between consecutive joints.
_LINK_RADIUS = (0.032, 0.03, 0.03, 0.028, 0.027, 0.026, 0.024)
_ARM_DARK = "0.18 0.18 0.2 1"
_ARM_LIGHT = "0.86 0.86 0.84 1"

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.08, 0.06),
    "green": (0.1, 0.7, 0.15),
    "blue": (0.08, 0.2, 0.9),
    "yellow": (0.95, 0.85, 0.05),
}

# The fixed scene camera: above the front edge of the table, looking down at the workspace
# so that the cubes' region fills the picture (a 3 cm cube is ~4 pixels wide at 64x64; from
# the earlier side view, framing the whole arm, it was 2). 39 degrees keeps the wider
# pick_place layouts in view.
PRIMARY_CAMERA_POS = (0.56, -0.10, 0.42)
PRIMARY_CAMERA_LOOKAT = (0.27, 0.0, 0.02)
PRIMARY_CAMERA_FOVY = 39.0
WRIST_CAMERA_FOVY = 58.0  # RealSense D435 colour, 4:3 crop


def _f(*v: float) -> str:
    return " ".join(f"{x:.6g}" for x in v)


def look_at_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> tuple[float, ...]:
    """MuJoCo camera `xyaxes` for a camera at pos looking at target (MuJoCo cameras look along -z)."""
    pos, target, up = (np.asarray(a, dtype=float) for a in (pos, target, up))
    forward = target - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    return tuple(right) + tuple(cam_up)


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF fixed-axis roll-pitch-yaw to a rotation matrix (Rz @ Ry @ Rx)."""
    cr, sr, cp, sp, cy, sy = (
        math.cos(roll),
        math.sin(roll),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
    )
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def hand_camera_xyaxes() -> tuple[float, ...]:
    """The hand camera's MuJoCo orientation from the URDF mount (camera link: x forward, z up)."""
    r = rpy_matrix(*(math.radians(a) for a in robot.HAND_CAMERA_RPY_DEG))
    left, up = r[:, 1], r[:, 2]
    return tuple(-left) + tuple(up)


def _arm_xml() -> str:
    """The nested bodies of the arm, from the mounting plate to the two fingers."""
    chain = robot.KINEMATIC_CHAIN
    plate = chain[0]
    lines = [
        '<body name="base_link" pos="0 0 0">',
        f'  <geom name="base_plate" type="box" size="0.06 0.06 {plate.xyz[2] / 2:.4g}" '
        f'pos="0 0 {plate.xyz[2] / 2:.4g}" rgba={_q(_ARM_DARK)} mass="{plate.mass}" class="arm"/>',
    ]
    moving = chain[1:]
    # The pan joint sits on the fixed shoulder part above the mounting plate top.
    offset = tuple(a + b for a, b in zip(plate.xyz, moving[0].xyz))
    lines.append(
        f'  <geom name="shoulder_fixed" type="cylinder" fromto="0 0 {plate.xyz[2]:.4g} 0 0 {offset[2]:.4g}" '
        f'size="0.04" rgba={_q(_ARM_DARK)} mass="0" class="arm"/>'
    )
    for i, link in enumerate(moving):
        ind = "  " * (i + 1)
        lines.append(f'{ind}<body name="link{i + 1}" pos="{_f(*offset)}" gravcomp="1">')
        lines.append(
            f'{ind}  <joint name="{link.joint}" axis="{_f(*link.axis)}" '
            f'range="{robot.LOWER_LIMITS[i]:.6f} {robot.UPPER_LIMITS[i]:.6f}" class="arm"/>'
        )
        if i + 1 < len(moving):
            offset = moving[i + 1].xyz
            rgba = _ARM_LIGHT if i in (2, 4) else _ARM_DARK
            lines.append(
                f'{ind}  <geom name="link{i + 1}_geom" type="capsule" fromto="0 0 0 0 0 {offset[2]:.4g}" '
                f'size="{_LINK_RADIUS[i]}" rgba={_q(rgba)} mass="{link.mass}" class="arm"/>'
            )
        else:
            lines.extend(_gripper_xml(ind + "  ", link.mass))
    for i in range(len(moving), -1, -1):
        lines.append("  " * i + "</body>")
    return "\n".join(lines)


def _q(s: str) -> str:
    return f'"{s}"'


def _gripper_xml(ind: str, palm_mass: float) -> list[str]:
    """Gripper base (palm, hand camera) and the two fingers, inside the wrist link body."""
    cam_xyz = robot.HAND_CAMERA_XYZ
    fa, fb = robot.FINGER_A, robot.FINGER_B
    out = [
        f'{ind}<geom name="wrist_geom" type="cylinder" fromto="0 0 -0.012 0 0 0.012" size="0.024" '
        f'rgba={_q(_ARM_DARK)} mass="{palm_mass / 2}" class="arm"/>',
        f'{ind}<geom name="palm" type="box" pos="0 0 0.016" size="0.024 0.02 0.01" '
        f'rgba={_q(_ARM_LIGHT)} mass="{palm_mass / 2}" class="arm"/>',
        # RealSense housing behind the lens; visual only.
        f'{ind}<geom name="camera_housing" type="box" pos="{_f(cam_xyz[0], cam_xyz[1] + 0.004, cam_xyz[2] - 0.014)}" '
        f'size="0.045 0.012 0.0125" rgba="0.25 0.25 0.27 1" contype="0" conaffinity="0" mass="0"/>',
        f'{ind}<camera name="wrist" pos="{_f(*cam_xyz)}" xyaxes="{_f(*hand_camera_xyaxes())}" '
        f'fovy="{WRIST_CAMERA_FOVY}"/>',
        f'{ind}<site name="tcp" pos="0 0 {fa.xyz[2] + PAD_Z:.4g}" size="0.004" rgba="1 0 1 0"/>',
    ]
    for name, link, side in (("finger_a", fa, -1.0), ("finger_b", fb, 1.0)):
        # Pads lean back by PAD_TILT so their faces are vertical at a 3 cm grasp.
        tilt = -side * PAD_TILT
        out += [
            f'{ind}<body name="{name}" pos="{_f(*link.xyz)}" gravcomp="1">',
            f'{ind}  <joint name="{link.joint}" axis="{_f(*link.axis)}" '
            f'range="{robot.LOWER_LIMITS[-1]:.6f} {robot.UPPER_LIMITS[-1]:.6f}" class="finger"/>',
            f'{ind}  <geom name="{name}_bar" type="box" pos="{_f(side * 0.004, 0, FINGER_LENGTH / 2)}" '
            f'size="0.003 0.009 {FINGER_LENGTH / 2:.4g}" rgba={_q(_ARM_DARK)} '
            f'mass="{link.mass * 0.7:.4g}" class="arm"/>',
            f'{ind}  <geom name="{name}_pad" type="box" pos="{_f(-side * 0.0, 0, PAD_Z)}" '
            f'euler="0 {tilt:.4g} 0" size="{_f(*PAD_HALF)}" rgba="0.1 0.1 0.1 1" '
            f'mass="{link.mass * 0.3:.4g}" class="pad"/>',
            f'{ind}  <site name="{name}_tip" pos="0 0 {PAD_Z}" size="0.003" rgba="1 0 1 0"/>',
            f"{ind}</body>",
        ]
    return out


def build_mjcf(n_cubes: int, n_plates: int) -> str:
    """The scene as an MJCF string: table, arm, `n_cubes` cubes and `n_plates` plates.

    Objects are named cube0.., plate0..; their colours and poses are set at reset.
    """
    if n_cubes < 1 or n_plates < 0:
        raise ValueError(f"a scene needs at least one cube (got n_cubes={n_cubes}, n_plates={n_plates})")
    xy = look_at_xyaxes(PRIMARY_CAMERA_POS, PRIMARY_CAMERA_LOOKAT)
    actuators = []
    for i, j in enumerate(robot.ARM_JOINTS):
        actuators.append(
            f'<position name="{j}" joint="{j}" kp="{ARM_KP[i]}" kv="{ARM_KV[i]}" '
            f'forcerange="{-ARM_FORCE[i]} {ARM_FORCE[i]}"/>'
        )
    for j in (robot.GRIPPER_JOINT, robot.GRIPPER_MIMIC_JOINT):
        actuators.append(f'<position name="{j}" joint="{j}" kp="{FINGER_KP}" kv="{FINGER_KV}" forcerange="-0.5 0.5"/>')
    objects = []
    for i in range(n_plates):
        objects.append(
            f'<body name="plate{i}" mocap="true" pos="{0.3} {0.2 * i - 0.1} {PLATE_HALF_HEIGHT}">'
            f'<geom name="plate{i}" type="cylinder" size="{PLATE_RADIUS} {PLATE_HALF_HEIGHT}" '
            f'rgba="0.5 0.5 0.5 1" class="object"/></body>'
        )
    for i in range(n_cubes):
        objects.append(
            f'<body name="cube{i}" pos="{0.25} {0.1 * i - 0.1} {CUBE_HALF}">'
            f'<freejoint name="cube{i}"/>'
            f'<geom name="cube{i}" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" '
            f'mass="{CUBE_MASS}" rgba="0.5 0.5 0.5 1" class="object"/></body>'
        )
    return f"""<mujoco model="crane_x7_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="0"/>
    <global offwidth="1280" offheight="960"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.4 0.4 0.4" specular="0.05 0.05 0.05"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.55 0.6 0.66" rgb2="0.2 0.22 0.25"
             width="64" height="64"/>
  </asset>
  <default>
    <default class="arm">
      <joint armature="{ARMATURE}" damping="0.05" limited="true"/>
      <geom contype="2" conaffinity="1" friction="0.8 0.01 0.001"/>
    </default>
    <default class="finger">
      <joint armature="0.002" damping="0.01" limited="true" solreflimit="{LIMIT_SOLREF}"/>
    </default>
    <default class="pad">
      <geom contype="2" conaffinity="1" condim="4" friction="1.5 0.02 0.001" solref="0.01 1"/>
    </default>
    <default class="object">
      <geom contype="1" conaffinity="3" condim="4" friction="1.0 0.02 0.001" solref="0.01 1"/>
    </default>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0.3 -0.3 1.5" dir="-0.2 0.3 -1" diffuse="0.6 0.6 0.6"/>
    <geom name="floor" type="plane" pos="0 0 -0.72" size="2 2 0.05" rgba="0.45 0.42 0.4 1" contype="1" conaffinity="3"/>
    <geom name="table" type="box" pos="0.28 0 -0.02" size="0.36 0.45 0.02" rgba="0.62 0.6 0.58 1" class="object"/>
    <camera name="primary" pos="{_f(*PRIMARY_CAMERA_POS)}" xyaxes="{_f(*xy)}" fovy="{PRIMARY_CAMERA_FOVY}"/>
{_indent(_arm_xml(), 4)}
{_indent(chr(10).join(objects), 4)}
  </worldbody>
  <actuator>
{_indent(chr(10).join(actuators), 4)}
  </actuator>
</mujoco>
"""


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def build_model(n_cubes: int = 3, n_plates: int = 0):
    """Compile the scene into an `mujoco.MjModel`."""
    import mujoco

    return mujoco.MjModel.from_xml_string(build_mjcf(n_cubes, n_plates))
