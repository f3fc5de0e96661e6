"""rosbag2 import from bags written with real ROS 2 CDR serialisation (MCAP and sqlite3)."""

import argparse
import json

import numpy as np
import pytest

from crane_x7_vla.cli.dataset import register_conversions
from crane_x7_vla.episode import jpeg, list_episodes, load_episode
from crane_x7_vla.episode.bag import BagImportOptions, import_bag, parse_image_topic
from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.episode.validate import validate_dataset

from .bagfixture import RED, T0, picture, state_at, write_bag

CAMERAS = {"primary": "/camera/color/image_raw", "wrist": "/wrist/image_raw/compressed"}


def options(**kw):
    base = dict(instruction="pick up the red cube", image_topics=dict(CAMERAS))
    base.update(kw)
    return BagImportOptions(**base)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_import_pairs_splits_and_fixes_bgr(tmp_path, storage):
    bag = write_bag(tmp_path / "bag", storage=storage)
    summary = import_bag(bag, tmp_path / "episodes", options(), progress=False)
    assert len(summary["episodes"]) == 2  # split at the 2 s pause
    assert summary["steps"] == 22 and summary["fps"] == 10.0
    refs = list_episodes(tmp_path / "episodes")
    assert len(refs) == 2
    count, problems = validate_dataset(tmp_path / "episodes")
    assert (count, problems) == (2, [])
    for ref, segment_start in zip(refs, (0.0, 3.0)):
        ep = load_episode(ref.path)
        assert len(ep) == 11
        assert ep.instruction == "pick up the red cube"
        assert ep.meta.cameras["primary"].topic == "/camera/color/image_raw"
        assert (ep.meta.cameras["primary"].width, ep.meta.cameras["primary"].height) == (32, 24)
        expected_t = T0 + (segment_start * 1e9 + np.arange(11) * 1e8).astype(np.int64)
        # Steps follow the main camera's header stamps; each gets the joint state stamped at the same time.
        np.testing.assert_array_equal(ep.timestamp_ns, expected_t)
        np.testing.assert_allclose(ep.proprio, np.stack([state_at(int(t)) for t in expected_t]), atol=1e-6)
        np.testing.assert_allclose(ep.action[:-1], ep.proprio[1:])
        for t, stamp in enumerate(expected_t):
            primary = jpeg.decode(ep.images["primary"][t])
            wrist = jpeg.decode(ep.images["wrist"][t])
            # bgr8 came out RGB: the left half is red, not blue.
            for img in (primary, wrist):
                assert np.abs(img[12, 4].astype(int) - np.array(RED)).max() < 12
                assert np.abs(img.astype(int) - picture(int(stamp)).astype(int)).mean() < 4
        assert ep.meta.extra["imported_from"] == str(bag.resolve())


def test_rate_tolerance_and_max_steps(tmp_path):
    bag = write_bag(tmp_path / "bag")
    summary = import_bag(bag, tmp_path / "a", options(rate=5.0), progress=False)
    assert [load_episode(r.path, images=False).meta.fps for r in list_episodes(tmp_path / "a")] == [5.0, 5.0]
    assert summary["steps"] == 12  # 0, 0.2 .. 1.0 s in each segment
    assert summary["dropped_ticks"] > 0  # the ticks inside the pause
    summary = import_bag(bag, tmp_path / "b", options(max_steps=4), progress=False)
    lengths = [len(load_episode(r.path, images=False)) for r in list_episodes(tmp_path / "b")]
    assert lengths == [4, 4, 3, 4, 4, 3]
    # The wrist camera is 3 ms behind the main camera: a 1 ms tolerance pairs nothing.
    with pytest.raises(DatasetError, match="within 1.0 ms"):
        import_bag(bag, tmp_path / "c", options(tolerance=0.001), progress=False)


def test_gripper_in_separate_messages_is_merged(tmp_path):
    bag = write_bag(tmp_path / "bag", split_gripper=True)
    import_bag(bag, tmp_path / "episodes", options(), progress=False)
    ep = load_episode(list_episodes(tmp_path / "episodes")[0].path, images=False)
    np.testing.assert_allclose(ep.proprio[3], state_at(T0 + 300_000_000), atol=1e-6)


def test_clear_errors(tmp_path):
    bag = write_bag(tmp_path / "bag", names=[f"other_joint{i}" for i in range(8)])
    with pytest.raises(DatasetError, match="missing joints crane_x7_shoulder_fixed_part_pan_joint"):
        import_bag(bag, tmp_path / "e", options(), progress=False)
    with pytest.raises(DatasetError, match=r"/nope is not in the bag; topics: /camera/color/image_raw"):
        import_bag(bag, tmp_path / "e", options(image_topics={"primary": "/nope"}), progress=False)
    with pytest.raises(DatasetError, match="carries sensor_msgs/msg/Image"):
        import_bag(bag, tmp_path / "e", options(joint_topic="/camera/color/image_raw"), progress=False)
    with pytest.raises(DatasetError, match="instruction"):
        import_bag(bag, tmp_path / "e", options(instruction=" "), progress=False)
    with pytest.raises(DatasetError, match="no such bag"):
        import_bag(tmp_path / "missing", tmp_path / "e", options(), progress=False)
    (tmp_path / "not_a_bag").mkdir()
    (tmp_path / "not_a_bag" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="cannot be read as a rosbag2 recording"):
        import_bag(tmp_path / "not_a_bag", tmp_path / "e", options(), progress=False)
    with pytest.raises(DatasetError, match="NAME=/topic"):
        parse_image_topic("/camera/color/image_raw")


def test_cli_import_bag_and_export(tmp_path, capsys):
    bag = write_bag(tmp_path / "bag.d", storage="sqlite3")
    parser = argparse.ArgumentParser()
    register_conversions(parser.add_subparsers())
    args = parser.parse_args(
        [
            "import-bag",
            str(bag),
            "--out",
            str(tmp_path / "eps"),
            "--instruction",
            "pick up the red cube",
            "--image-topic",
            "primary=/camera/color/image_raw",
            "--image-topic",
            "wrist=/wrist/image_raw/compressed",
            "--rate",
            "10",
            "--split-gap",
            "0.5",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "2 episode(s), 22 steps" in capsys.readouterr().out
    args = parser.parse_args(
        ["export", str(tmp_path / "eps"), "--format", "lerobot", "--out", str(tmp_path / "lr"), "--json"]
    )
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["steps"] == 22
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["total_frames"] == 22


def _roundtrip(msg, msgtype):
    from .bagfixture import TS

    return TS.deserialize_cdr(TS.serialize_cdr(msg, msgtype), msgtype)


def test_image_encodings(tmp_path):
    import cv2

    from crane_x7_vla.episode.bag import image_to_rgb_or_jpeg

    from .bagfixture import CompressedImage, Image, header

    rgb = picture(T0)
    h, w, _ = rgb.shape
    padded = np.zeros((h, w * 3 + 8), np.uint8)
    padded[:, : w * 3] = rgb.reshape(h, -1)
    cases = {
        "rgb8": (padded.reshape(-1), w * 3 + 8),  # rows padded beyond width * 3
        "bgra8": (np.dstack([rgb[:, :, ::-1], np.full((h, w), 255, np.uint8)]).reshape(-1), w * 4),
    }
    for encoding, (data, step) in cases.items():
        msg = Image(header=header(T0), height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=data)
        out = image_to_rgb_or_jpeg(_roundtrip(msg, Image.__msgtype__), Image.__msgtype__, where=encoding)
        np.testing.assert_array_equal(out, rgb)
    grey = rgb[:, :, 1].copy()
    msg = Image(header=header(T0), height=h, width=w, encoding="mono8", is_bigendian=0, step=w, data=grey.reshape(-1))
    np.testing.assert_array_equal(image_to_rgb_or_jpeg(msg, Image.__msgtype__, where="mono8"), np.dstack([grey] * 3))
    png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].reshape(-1)
    msg = CompressedImage(header=header(T0), format="bgr8; png compressed bgr8", data=png)
    np.testing.assert_array_equal(
        image_to_rgb_or_jpeg(_roundtrip(msg, CompressedImage.__msgtype__), CompressedImage.__msgtype__, where="png"),
        rgb,
    )
    msg = Image(
        header=header(T0),
        height=h,
        width=w,
        encoding="16UC1",
        is_bigendian=0,
        step=w * 2,
        data=np.zeros(h * w * 2, np.uint8),
    )
    with pytest.raises(DatasetError, match="cam 7: image encoding '16UC1' is not supported"):
        image_to_rgb_or_jpeg(msg, Image.__msgtype__, where="cam 7")


def test_episodes_carry_the_recording_time_and_a_bag_is_imported_once(tmp_path, capsys):
    from datetime import datetime, timezone

    bag = write_bag(tmp_path / "bag")
    out = tmp_path / "episodes"
    first = import_bag(bag, out, options(), progress=False)
    refs = list_episodes(out)
    assert [str(r.path) for r in refs] == first["episodes"]
    for ref, segment_start in zip(refs, (0.0, 3.0)):
        # the joint state of the first step was recorded 2 ms after its stamp (bagfixture)
        recorded = T0 + int(segment_start * 1e9) + 2_000_000
        when = datetime.fromtimestamp(recorded / 1e9, tz=timezone.utc)
        assert ref.name.endswith(when.strftime("%Y%m%d_%H%M%S"))
        assert datetime.fromisoformat(ref.meta.start_time) == when
        assert ref.meta.extra["recorded_start_ns"] == recorded
        assert ref.meta.extra["bag"]["messages"] > 0
    assert refs[0].name.endswith("20231114_221320") and refs[1].name.endswith("20231114_221323")

    again = import_bag(bag, out, options(rate=5.0), progress=False)
    assert again["episodes"] == [] and again["already_imported"] == first["episodes"]
    assert [r.name for r in list_episodes(out)] == [r.name for r in refs]

    parser = argparse.ArgumentParser()
    register_conversions(parser.add_subparsers())
    args = parser.parse_args(
        [
            "import-bag",
            str(bag),
            "--out",
            str(out),
            "--instruction",
            "pick up the red cube",
            "--image-topic",
            f"primary={CAMERAS['primary']}",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "already imported" in capsys.readouterr().out
    assert len(list_episodes(out)) == 2

    elsewhere = import_bag(bag, tmp_path / "other", options(), progress=False)
    assert len(elsewhere["episodes"]) == 2
