"""rosbag2 recordings written the way ROS 2 writes them (rosbags' writer, CDR serialisation)."""

import numpy as np
import simplejpeg
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from crane_x7_vla import robot

TS = get_typestore(Stores.ROS2_JAZZY)
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
JointState = TS.types["sensor_msgs/msg/JointState"]
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]

RED = (220, 30, 30)
SEGMENTS = ((0.0, 1.0), (3.0, 4.0))  # seconds; a 2 s pause between two demonstrations
T0 = 1_700_000_000_000_000_000


def header(t_ns: int, frame="base_link"):
    return Header(stamp=Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000), frame_id=frame)


def state_at(t_ns: int) -> np.ndarray:
    """Joint positions that encode time, so pairing can be checked."""
    s = (t_ns - T0) / 1e9
    return robot.home_state() + 0.01 * s * np.arange(1, 9)


def picture(t_ns: int, w=32, h=24) -> np.ndarray:
    """RGB: red left half, right half a grey level that changes with time."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = RED
    img[:, w // 2 :] = int(40 + 40 * ((t_ns - T0) / 1e9)) % 256
    return img


def times(rate: float, offset_s: float = 0.0):
    for start, end in SEGMENTS:
        n = int(round((end - start) * rate))
        for k in range(n + 1):
            yield T0 + int((start + k / rate + offset_s) * 1e9)


def write_bag(path, *, storage="mcap", joint_rate=50.0, camera_rate=10.0, split_gripper=False, names=None):
    """/joint_states (JointState), /camera/color/image_raw (bgr8 Image),
    /wrist/image_raw/compressed (JPEG CompressedImage, 3 ms after the main camera)."""
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    names = list(names or robot.JOINT_NAMES)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        joints = writer.add_connection("/joint_states", JointState.__msgtype__, typestore=TS)
        cam = writer.add_connection("/camera/color/image_raw", Image.__msgtype__, typestore=TS)
        wrist = writer.add_connection("/wrist/image_raw/compressed", CompressedImage.__msgtype__, typestore=TS)
        messages = []
        for t in times(joint_rate):
            q = state_at(t)
            parts = [(names[:7], q[:7]), (names[7:], q[7:])] if split_gripper else [(names, q[: len(names)])]
            for part_names, part_q in parts:
                msg = JointState(
                    header=header(t), name=part_names, position=np.asarray(part_q, np.float64),
                    velocity=np.zeros(0), effort=np.zeros(0),
                )
                messages.append((t + 2_000_000, joints, TS.serialize_cdr(msg, JointState.__msgtype__)))
        for t in times(camera_rate):
            rgb = picture(t)
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])
            h, w, _ = bgr.shape
            msg = Image(header=header(t, "camera"), height=h, width=w, encoding="bgr8", is_bigendian=0,
                        step=w * 3, data=bgr.reshape(-1))
            messages.append((t + 5_000_000, cam, TS.serialize_cdr(msg, Image.__msgtype__)))
        for t in times(camera_rate, offset_s=0.003):
            data = simplejpeg.encode_jpeg(picture(t), quality=95, colorspace="RGB")
            msg = CompressedImage(header=header(t, "wrist"), format="jpeg", data=np.frombuffer(data, np.uint8))
            messages.append((t + 5_000_000, wrist, TS.serialize_cdr(msg, CompressedImage.__msgtype__)))
        for received, conn, data in sorted(messages, key=lambda m: m[0]):
            writer.write(conn, received, data)
    return path
