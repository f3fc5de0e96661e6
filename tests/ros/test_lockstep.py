"""The simulator in lockstep with the data logger (crane_x7_sim's step_rate, the logger's
step_topic), as real processes: the simulated time stands still while the logger cannot
record, so a logger that is stopped outright (SIGSTOP, the extreme of a starved process)
still records one step per instant at its rate, none dropped."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from crane_x7_vla.episode import schema
from crane_x7_vla.episode.reader import iter_steps, load_episode
from crane_x7_vla.episode.validate import validate_dataset
from crane_x7_vla.ros.processes import NodeGroup, ros_env

SCENE = "/scene_camera/color/image_raw"
RATE = 10.0


class SimClock:
    """The newest /clock time (ns), as the nodes on use_sim_time see it."""

    def __init__(self, node) -> None:
        from rosgraph_msgs.msg import Clock

        from crane_x7_vla.ros import msgs

        self.ns = None
        self._lock = threading.Lock()
        self._to_ns = msgs.stamp_to_ns
        node.create_subscription(Clock, "/clock", self._on, 10)

    def _on(self, msg) -> None:
        with self._lock:
            self.ns = self._to_ns(msg.clock)

    def now(self):
        with self._lock:
            return self.ns


@pytest.fixture
def lockstep(domain_id, tmp_path):
    group = NodeGroup(ros_env(domain_id), tmp_path / "logs")
    group.start("crane_x7_sim", {
        "task": "reach", "seed": 5, "cameras": ["primary"], "camera_topics": [SCENE],
        "camera_frames": ["scene_camera_optical_frame"], "camera_width": 64, "camera_height": 48,
        "publish_clock": True, "step_rate": RATE,
    })
    group.start("data_logger", {
        "use_sim_time": True, "output_dir": str(tmp_path / "episodes"), "rate": RATE, "camera_names": ["primary"],
        "camera_topics": [SCENE], "keyboard": False, "step_topic": "/crane_x7_sim/step",
    })
    yield group, tmp_path / "episodes"
    group.stop_all()


def test_a_stopped_logger_stops_the_simulated_clock_and_misses_no_step(lockstep, client, wait_for):
    group, out = lockstep
    logger = group.nodes[1]
    clock = SimClock(client.node)
    wait_for(lambda: clock.now() is not None, 60.0, "/clock from the simulator", group)
    started = client.trigger("/data_logger/start", timeout=60.0)
    for _ in range(100):  # the first images take a moment after start-up
        if started.success:
            break
        time.sleep(0.2)
        started = client.trigger("/data_logger/start", timeout=60.0)
    assert started.success, started.message
    before = clock.now()
    wait_for(lambda: clock.now() - before > 1.0e9, 60.0, "one simulated second of recording", group)

    os.kill(logger.pid, signal.SIGSTOP)
    try:
        time.sleep(0.5)  # the simulator reaches the next recording instant and waits there
        held = clock.now()
        time.sleep(2.0)
        # at most one physics step on: the clock stood still while the logger could not record
        assert clock.now() - held <= 10_000_000, (clock.now() - held) / 1e9
    finally:
        os.kill(logger.pid, signal.SIGCONT)

    resumed = clock.now()
    wait_for(lambda: clock.now() - resumed > 1.0e9, 60.0, "the simulated clock to go on", group)
    saved = client.trigger("/data_logger/stop", timeout=60.0)
    assert saved.success, saved.message
    summary = json.loads(saved.message)
    assert summary["dropped_steps"] == 0 and summary["achieved_hz"] == RATE, summary
    assert validate_dataset(out) == (1, [])
    ep = load_episode(summary["path"])
    # one step per instant of the simulated clock, exactly 1/RATE apart, the SIGSTOP included
    assert np.all(np.diff(ep.timestamp_ns.astype(np.int64)) == int(1e9 / RATE))
    assert len(ep) >= 20
    # each step's frame was rendered at that very instant
    key = schema.image_timestamp_key("primary")
    image_stamps = [int(step[key][0]) for step in iter_steps(ep.path / schema.RECORD_FILE)]
    np.testing.assert_array_equal(np.array(image_stamps, dtype=np.int64), ep.timestamp_ns.astype(np.int64))
