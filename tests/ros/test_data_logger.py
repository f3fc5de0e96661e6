"""data_logger as a process, fed over DDS by a robot-like publisher in the test:
save and discard through services, stale camera frames counted (never reused), and
SIGKILL mid-episode leaving the episodes saved before intact."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from crane_x7_vla import robot
from crane_x7_vla.episode import schema
from crane_x7_vla.episode.reader import list_partial, load_episode
from crane_x7_vla.episode.schema import EpisodeMeta
from crane_x7_vla.episode.validate import validate_dataset, validate_episode
from crane_x7_vla.episode.writer import recover_partial
from crane_x7_vla.ros import msgs

SIZE = (64, 48)
CAMERAS = {"scene": "/test_scene/image_raw", "hand": "/test_hand/image_raw"}
INSTRUCTION = "reach the blue cube"


class FakeRobot:
    """Follower joint states at 100 Hz, two cameras at 30 Hz (hand as bgr8), the instruction."""

    def __init__(self, node) -> None:
        self.node = node
        self.js_pub = node.create_publisher(JointState, robot.JOINT_STATES_TOPIC, msgs.STATE_QOS)
        self.img_pubs = {c: node.create_publisher(Image, t, msgs.SENSOR_QOS) for c, t in CAMERAS.items()}
        self.instr_pub = node.create_publisher(String, "/instruction", msgs.LATCHED_QOS)
        self.instr_pub.publish(String(data=INSTRUCTION))
        self.paused: set[str] = set()
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._joints, daemon=True),
            threading.Thread(target=self._cameras, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _joints(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self.t0
            q = robot.home_state() + 0.2 * np.sin(t)
            self.js_pub.publish(msgs.make_joint_state(q, stamp=self.node.get_clock().now().to_msg()))
            time.sleep(0.01)

    def _cameras(self) -> None:
        red = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        red[..., 0] = 220  # pure red scene, RGB
        while not self._stop.is_set():
            stamp = self.node.get_clock().now().to_msg()
            if "scene" not in self.paused:
                self.img_pubs["scene"].publish(msgs.rgb_to_image(red, stamp=stamp, frame_id="scene"))
            if "hand" not in self.paused:
                msg = msgs.rgb_to_image(red[..., ::-1].copy(), stamp=stamp, frame_id="hand")
                msg.encoding = "bgr8"  # the same red picture in BGR byte order
                self.img_pubs["hand"].publish(msg)
            time.sleep(1 / 30)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        for pub in [self.js_pub, self.instr_pub, *self.img_pubs.values()]:
            self.node.destroy_publisher(pub)


@pytest.fixture(scope="module")
def fake_robot(client):
    robot_ = FakeRobot(client.node)
    yield robot_
    robot_.close()


def start_logger(nodes, out, wait_for, client, **params):
    logger = nodes.start(
        "data_logger",
        {
            "output_dir": str(out),
            "rate": 10.0,
            "camera_names": list(CAMERAS),
            "camera_topics": list(CAMERAS.values()),
            "sync_tolerance": 0.1,
            **params,
        },
    )
    wait_for(lambda: client.node.count_publishers("/data_logger/episodes") > 0, 30.0, "the logger to start", nodes)
    return logger


def start_episode(client, wait_for, nodes):
    # The logger needs a joint state and one image per camera before it can start.
    def started():
        res = client.trigger("/data_logger/start")
        return res if res.success else None

    return wait_for(started, 20.0, "the logger to accept ~/start", nodes, poll=0.3)


def test_save_and_discard_through_services(client, nodes, fake_robot, tmp_path, wait_for):
    out = tmp_path / "episodes"
    start_logger(nodes, out, wait_for, client, task="reach", seed=11)
    res = start_episode(client, wait_for, nodes)
    # the answer names the instruction it records with: `collect --sim` retries until it is the scene's
    assert "episode_0000" in res.message and res.message.endswith(f": {INSTRUCTION!r}")
    time.sleep(1.5)
    res = client.trigger("/data_logger/discard")
    assert res.success, res.message
    assert not any(out.iterdir()), "a discarded episode left files behind"
    # Stop without a running episode is refused, not a crash.
    assert not client.trigger("/data_logger/stop").success

    start_episode(client, wait_for, nodes)
    time.sleep(2.0)
    res = client.trigger("/data_logger/stop")
    assert res.success, res.message
    summary = json.loads(res.message)
    count, problems = validate_dataset(out)
    assert (count, problems) == (1, [])
    ep = load_episode(summary["path"])
    meta = ep.meta
    assert meta.language_instruction == INSTRUCTION and meta.task == "reach" and meta.seed == 11
    assert meta.num_steps == summary["steps"] >= 15
    assert (
        meta.cameras["scene"].topic == CAMERAS["scene"]
        and (meta.cameras["hand"].width, meta.cameras["hand"].height) == SIZE
    )
    # action = the next step's proprio; the joint states moved, so the actions differ.
    np.testing.assert_allclose(ep.action[:-1], ep.proprio[1:])
    assert np.ptp(ep.proprio[:, 0]) > 0
    # Colours: the bgr8 hand camera and the rgb8 scene camera both stored as red.
    from crane_x7_vla.episode import jpeg

    for cam in ("scene", "hand"):
        rgb = jpeg.decode(ep.images[cam][0])
        r, g, b = rgb.reshape(-1, 3).mean(axis=0)
        assert r > 180 and g < 40 and b < 40, f"{cam}: mean RGB {r:.0f},{g:.0f},{b:.0f} is not red"


def test_stale_camera_is_counted_not_reused(client, nodes, fake_robot, tmp_path, wait_for):
    out = tmp_path / "episodes"
    start_logger(nodes, out, wait_for, client)
    start_episode(client, wait_for, nodes)
    time.sleep(1.0)
    fake_robot.paused.add("hand")  # the hand camera stops publishing for 1.5 s
    time.sleep(1.5)
    fake_robot.paused.discard("hand")
    time.sleep(1.0)
    res = client.trigger("/data_logger/stop")
    assert res.success, res.message
    path = json.loads(res.message)["path"]
    assert validate_episode(path) == []
    meta = EpisodeMeta.load(f"{path}/{schema.META_FILE}")
    # 1.5 s without frames at 10 Hz: about 14 ticks, minus the 0.1 s tolerance.
    assert meta.stale_frames["hand"] >= 8, meta.stale_frames
    assert meta.stale_frames["scene"] == 0
    assert meta.dropped_steps >= meta.stale_frames["hand"]
    assert meta.extra["timer_ticks"] == meta.num_steps + meta.dropped_steps
    # Every stored image lies within the tolerance of its joint state: none was reused stale.
    ep = load_episode(path, images=False)
    from crane_x7_vla.episode import tfrecord

    for data in tfrecord.iter_records(f"{path}/{schema.RECORD_FILE}"):
        step = tfrecord.decode_example(data)
        t_joint = int(step[schema.KEY_TIMESTAMP][0])
        for cam in CAMERAS:
            t_img = int(step[schema.image_timestamp_key(cam)][0])
            assert abs(t_img - t_joint) <= 0.1e9, f"{cam} image {abs(t_img - t_joint) / 1e9:.3f} s from its joint state"
    # The gap shows in the time stamps: the longest interval spans the pause.
    gaps = np.diff(ep.timestamp_ns) / 1e9
    assert gaps.max() > 1.0
    log = nodes.nodes[-1].log_path.read_text()
    assert "stale frames: scene 0, hand" in log


def test_sigkill_mid_episode_keeps_saved_episodes(client, nodes, fake_robot, tmp_path, wait_for):
    out = tmp_path / "episodes"
    logger = start_logger(nodes, out, wait_for, client)
    start_episode(client, wait_for, nodes)
    time.sleep(1.5)
    res = client.trigger("/data_logger/stop")
    assert res.success, res.message
    saved = json.loads(res.message)["path"]
    before = {p.name: p.read_bytes() for p in sorted((out / saved.rsplit("/", 1)[1]).iterdir())}

    start_episode(client, wait_for, nodes)
    time.sleep(1.5)
    logger.kill()  # SIGKILL while recording

    assert validate_episode(saved) == []
    after = {p.name: p.read_bytes() for p in sorted((out / saved.rsplit("/", 1)[1]).iterdir())}
    assert after == before, "the saved episode changed when the logger was killed"
    count, problems = validate_dataset(out)
    assert count == 1
    assert len(problems) == 1 and "unfinished episode" in problems[0]
    partial = list_partial(out)
    assert len(partial) == 1
    recovered = recover_partial(partial[0])
    assert validate_episode(recovered) == []
    assert EpisodeMeta.load(recovered / schema.META_FILE).num_steps >= 5
