"""Message conversions: every encoding ends as RGB, padded rows are cut, joint states are
ordered by name and a message mixing robots is refused."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState

from crane_x7_vla import robot
from crane_x7_vla.ros import msgs


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    padded = np.zeros((h, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    return Image(height=h, width=w, encoding=encoding, step=padded.shape[1], data=padded.tobytes())


def test_rgb_round_trip_and_bgr_with_padded_rows():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    stamp = msgs.ns_to_stamp(1_500_000_123)
    msg = msgs.rgb_to_image(rgb, stamp=stamp, frame_id="cam")
    assert msg.encoding == "rgb8" and msg.step == 21 and msgs.stamp_to_ns(msg.header.stamp) == 1_500_000_123
    np.testing.assert_array_equal(msgs.image_to_rgb(msg), rgb)
    np.testing.assert_array_equal(msgs.image_to_rgb(_image(rgb[..., ::-1], "bgr8", pad=3)), rgb)
    bgra = np.concatenate([rgb[..., ::-1], np.full((5, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(msgs.image_to_rgb(_image(bgra, "bgra8")), rgb)
    mono = rgb[..., 0]
    np.testing.assert_array_equal(msgs.image_to_rgb(_image(mono, "mono8", pad=1)), np.repeat(mono[..., None], 3, 2))


def test_bad_images_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="encoding '16UC1'"):
        msgs.image_to_rgb(Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)))
    with pytest.raises(ValueError, match="expected at least 2 rows"):
        msgs.image_to_rgb(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(6)))


def test_joint_state_ordering_and_rejections():
    q = np.arange(8) * 0.1
    shuffled = [7, 3, 0, 5, 1, 6, 2, 4]
    msg = JointState(
        name=[robot.JOINT_NAMES[i] for i in shuffled] + [robot.GRIPPER_MIMIC_JOINT],
        position=[float(q[i]) for i in shuffled] + [0.7],
    )
    np.testing.assert_allclose(msgs.joint_state_vector(msg), q)
    with pytest.raises(KeyError, match="crane_x7_wrist_joint"):
        msgs.joint_state_vector(
            JointState(name=list(robot.JOINT_NAMES[:6]) + [robot.GRIPPER_JOINT], position=[0.0] * 7)
        )
    with pytest.raises(ValueError, match="not CRANE-X7 joints: leader_wrist"):
        msgs.joint_state_vector(JointState(name=[*robot.JOINT_NAMES, "leader_wrist"], position=[0.0] * 9))
    with pytest.raises(ValueError, match="8 names but 7 positions"):
        msgs.joint_state_vector(JointState(name=list(robot.JOINT_NAMES), position=[0.0] * 7))
    out = msgs.make_joint_state(q, stamp=msgs.ns_to_stamp(5))
    assert out.name[-1] == robot.GRIPPER_MIMIC_JOINT and out.position[-1] == out.position[-2]


def test_pinhole_camera_info():
    info = msgs.pinhole_camera_info(640, 480, 90.0, stamp=msgs.ns_to_stamp(0), frame_id="cam")
    assert info.k[0] == pytest.approx(240.0) and info.k[2] == pytest.approx(319.5) and info.k[5] == pytest.approx(239.5)
