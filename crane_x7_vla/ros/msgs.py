"""Conversions and QoS profiles shared by the ROS 2 nodes.

* Images: sensor_msgs/Image <-> RGB numpy arrays. Everything inside crane_x7_vla is RGB;
  bgr8/bgra8/rgba8/mono8 messages are converted here, once, so no node can store
  swapped colours (the earlier stack's recordings have red and blue swapped).
* Joint states: sensor_msgs/JointState -> the 8 values in robot.JOINT_NAMES order.
* Time: header stamps <-> integer nanoseconds.
* QoS: sensor data (images, best effort, shallow), state (reliable), latched
  (transient local, for the instruction: a late subscriber still gets it).
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, JointState

from crane_x7_vla import robot
from crane_x7_vla.ros.node_main import ConfigError

#: Images: best effort, keep the newest few (a late frame is worth less than a new one).
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
#: Joint states and commands: reliable, a short queue.
STATE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: The instruction and other "current value" topics: a subscriber that starts later
#: still receives the last message.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC3": 3, "8UC1": 1}


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
_LIST_WORDS = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "texts"}


def _describe_type(default) -> str:
    if isinstance(default, (list, tuple)):
        item = type(default[0]) if default else str
        return f"a list of {_LIST_WORDS.get(item, item.__name__)}" + (
            " such as \"['a', 'b']\"" if item is str else "")
    return _TYPE_WORDS.get(type(default), type(default).__name__)


def _numeric(value, default):
    """`value` as the number type of `default` when it is another number type and converting
    loses nothing (10 -> 10.0, 3.0 -> 3, [1, 2] -> [1.0, 2.0]); else None."""
    if isinstance(default, bool) or isinstance(value, bool):
        return None
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, (list, tuple)) and default and isinstance(value, (list, tuple)) and value:
        kind = type(default[0])
        if all(type(v) is kind for v in value):
            return None
        items = [v if type(v) is kind else _numeric(v, default[0]) for v in value]
        return None if any(v is None for v in items) else items
    return None


def declare(node, name: str, default, description: str, *, read_only: bool = False):
    """Declare a parameter with a description and return its value.

    A number given for a number parameter is taken whatever its spelling (`rate:=10` for a
    float, `seed:=3.0` for an integer). Any other value of the wrong type, from a launch file,
    `--ros-args -p` or a YAML file, raises ConfigError naming the parameter, the value and the
    type it needs (node_main.run prints it as one line and exits with code 2).
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    override = getattr(node, "_parameter_overrides", {}).get(name)
    converted = None if override is None else _numeric(override.value, default)
    try:
        if converted is not None:
            node.declare_parameter(name, converted, descriptor, ignore_override=True)
        else:
            node.declare_parameter(name, default, descriptor)
    except (InvalidParameterTypeException, InvalidParameterValueException):
        given = override.value if override is not None else default
        shown = repr(given)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ConfigError(
            f"parameter '{name}' of {node.get_name()} is {shown}, but it must be {_describe_type(default)} "
            f"(default {default!r}); {description}"
        ) from None
    return node.get_parameter(name).value


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def image_to_rgb(msg: Image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from an Image message (copy), whatever its 8-bit encoding.

    Raises ValueError naming the encoding when it is not an 8-bit colour or mono format.
    """
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ValueError(
            f"image encoding '{enc}' is not supported (use rgb8, bgr8, rgba8, bgra8 or mono8)"
        )
    ch = _CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if step < w * ch or len(msg.data) < h * step:
        raise ValueError(
            f"image of {w}x{h} {enc} holds {len(msg.data)} bytes with step {step}; "
            f"expected at least {h} rows of {w * ch} bytes"
        )
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=h * step).reshape(h, step)
    pixels = buf[:, : w * ch].reshape(h, w, ch)
    if enc in ("bgr8", "bgra8"):
        rgb = pixels[..., 2::-1]
    elif ch == 1:
        rgb = np.repeat(pixels, 3, axis=2)
    else:
        rgb = pixels[..., :3]
    return np.ascontiguousarray(rgb)


def rgb_to_image(rgb: np.ndarray, *, stamp: Time, frame_id: str) -> Image:
    """An rgb8 Image message from an (H, W, 3) uint8 array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    return msg


def pinhole_camera_info(width: int, height: int, fovy_deg: float, *, stamp: Time, frame_id: str) -> CameraInfo:
    """CameraInfo of an ideal pinhole camera (no distortion) with a vertical field of view."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    info = CameraInfo()
    info.header.stamp = stamp
    info.header.frame_id = frame_id
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def joint_state_vector(msg: JointState) -> np.ndarray:
    """The 8 positions of a CRANE-X7 JointState in robot.JOINT_NAMES order.

    Raises KeyError naming missing joints, ValueError for names that belong to no
    CRANE-X7 joint (a message that mixes two robots) or positions/names of unequal length.
    """
    names = list(msg.name)
    if len(msg.position) != len(names):
        raise ValueError(f"joint state has {len(names)} names but {len(msg.position)} positions")
    known = set(robot.JOINT_NAMES) | {robot.GRIPPER_MIMIC_JOINT}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"joint state names joints that are not CRANE-X7 joints: {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise ValueError(f"joint state repeats joint names: {names}")
    return robot.order_joints(names, list(msg.position))


def make_joint_state(positions8, *, stamp: Time, velocities8=None, with_mimic: bool = True) -> JointState:
    """A JointState of the 8 CRANE-X7 values (plus finger_b mirroring finger_a)."""
    q = [float(v) for v in positions8]
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(robot.JOINT_NAMES)
    msg.position = q
    if velocities8 is not None:
        msg.velocity = [float(v) for v in velocities8]
    if with_mimic:
        msg.name.append(robot.GRIPPER_MIMIC_JOINT)
        msg.position.append(q[-1])
        if velocities8 is not None:
            msg.velocity.append(float(velocities8[-1]))
    return msg
