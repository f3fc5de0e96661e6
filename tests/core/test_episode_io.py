import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode import (
    EpisodeWriter,
    jpeg,
    list_episodes,
    list_partial,
    load_episode,
    recover_partial,
    schema,
)
from crane_x7_vla.episode.validate import validate_dataset, validate_episode


def rgb(colour, size=(32, 24)):
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = colour
    return img


def write(root, n=5, **kw):
    w = EpisodeWriter(
        root, fps=10, instruction="reach the red cube", cameras={"primary": (32, 24), "wrist": (32, 24)}, **kw
    )
    states = [robot.home_state() + 0.01 * t for t in range(n)]
    for t, q in enumerate(states):
        w.add_step(q, {"primary": rgb((250, 0, 0)), "wrist": rgb((0, 0, 250))}, timestamp_ns=10**9 + t * 10**8)
    return w, states


def test_round_trip_and_action_is_next_state(tmp_path):
    w, states = write(tmp_path)
    path = w.close(success=True)
    assert path.name.startswith("episode_0000_") and not list_partial(tmp_path)
    ep = load_episode(path)
    assert len(ep) == 5 and ep.instruction == "reach the red cube"
    np.testing.assert_allclose(ep.proprio, np.array(states, np.float32))
    np.testing.assert_allclose(ep.action[:-1], ep.proprio[1:])
    np.testing.assert_allclose(ep.action[-1], ep.proprio[-1])
    assert ep.timestep.tolist() == list(range(5))
    assert np.all(np.diff(ep.timestamp_ns) > 0)
    red = jpeg.decode(ep.images["primary"][0]).reshape(-1, 3).mean(0)
    blue = jpeg.decode(ep.images["wrist"][0]).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[2] < 40, red
    assert blue[2] > 200 and blue[0] < 40, blue
    meta = json.loads((path / schema.META_FILE).read_text())
    assert meta["num_steps"] == 5 and meta["success"] is True and meta["fps"] == 10
    assert meta["joint_names"] == list(robot.JOINT_NAMES)
    assert meta["cameras"]["primary"] == {"width": 32, "height": 24, "topic": ""}
    assert validate_episode(path) == []


def test_indices_increase_and_discard_leaves_nothing(tmp_path):
    w, _ = write(tmp_path)
    w.close()
    w2, _ = write(tmp_path)
    w2.discard()
    w3, _ = write(tmp_path)
    p3 = w3.close()
    names = [r.name for r in list_episodes(tmp_path)]
    assert len(names) == 2 and names[1] == p3.name and p3.name.startswith("episode_0001_")
    assert not list_partial(tmp_path)


def test_bad_steps_are_refused_with_clear_errors(tmp_path):
    w = EpisodeWriter(tmp_path, fps=10, instruction="x", cameras={"primary": (8, 8)})
    with pytest.raises(ValueError, match="lacks images from camera"):
        w.add_step(robot.home_state(), {})
    bad = robot.home_state()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        w.add_step(bad, {"primary": rgb((0, 0, 0), (8, 8))})
    with pytest.raises(ValueError, match="no steps"):
        w.close()
    with pytest.raises(ValueError, match="language instruction"):
        EpisodeWriter(tmp_path, fps=10, instruction="", cameras={})


def test_recover_partial_keeps_complete_steps(tmp_path):
    w, _ = write(tmp_path, n=6)
    w._file.close()  # the writer dies without closing
    partial = list_partial(tmp_path)[0]
    with open(partial / schema.RECORD_FILE, "ab") as f:
        f.write(b"\x10\x00\x00")  # a torn write at the end
    assert list_episodes(tmp_path) == []
    count, problems = validate_dataset(tmp_path)
    assert any("unfinished episode" in p for p in problems)
    final = recover_partial(partial)
    ep = load_episode(final)
    assert len(ep) == 5  # the sixth step was still buffered (action needs the next state)
    assert ep.meta.extra["recovered"] is True and ep.meta.success is None
    assert validate_episode(final) == []


WRITER_SCRIPT = """
import sys, time, numpy as np
from crane_x7_vla import robot
from crane_x7_vla.episode import EpisodeWriter
root = sys.argv[1]
img = np.zeros((48, 64, 3), np.uint8)
for e in range(2):
    w = EpisodeWriter(root, fps=10, instruction="reach", cameras={"primary": (64, 48)})
    for t in range(10):
        w.add_step(robot.home_state(), {"primary": img}, timestamp_ns=t + 1)
    w.close(success=True)
w = EpisodeWriter(root, fps=10, instruction="reach", cameras={"primary": (64, 48)})
t = 0
while True:
    t += 1
    w.add_step(robot.home_state(), {"primary": img}, timestamp_ns=t)
    if t == 5:
        print("recording", flush=True)
    time.sleep(0.001)
"""


def test_sigkill_mid_episode_leaves_earlier_episodes_valid(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "recording"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    refs = list_episodes(tmp_path)
    assert len(refs) == 2
    for ref in refs:
        assert validate_episode(ref.path) == []
        assert len(load_episode(ref.path)) == 10
    partial = list_partial(tmp_path)
    assert len(partial) == 1  # clearly marked, never a silently truncated episode
    recovered = recover_partial(partial[0])
    assert len(load_episode(recovered)) >= 5
    assert validate_episode(recovered) == []
