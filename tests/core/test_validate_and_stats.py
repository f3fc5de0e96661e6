import json

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode import EpisodeWriter, schema, tfrecord
from crane_x7_vla.episode.stats import StaleStatisticsError, check_statistics, load_arrays, write_statistics
from crane_x7_vla.episode.synthetic import write_synthetic_dataset
from crane_x7_vla.episode.validate import validate_dataset, validate_episode


def test_synthetic_dataset_is_valid(tmp_path):
    write_synthetic_dataset(tmp_path, episodes=3, steps=8)
    assert validate_dataset(tmp_path) == (3, [])


def test_out_of_limit_joint_is_named(tmp_path):
    w = EpisodeWriter(tmp_path, fps=10, instruction="x", cameras={})
    q = robot.home_state()
    q[1] = 2.5  # tilt joint limit is +-90 deg
    w.add_step(q, {})
    path = w.close()
    problems = validate_episode(path)
    assert any("record 0" in p and "crane_x7_shoulder_revolute_part_tilt_joint" in p for p in problems), problems


def test_corrupt_byte_is_reported_with_record(tmp_path):
    paths = write_synthetic_dataset(tmp_path, episodes=1, steps=5)
    record = paths[0] / schema.RECORD_FILE
    data = bytearray(record.read_bytes())
    offsets = [0]
    for payload in tfrecord.iter_records(record):
        offsets.append(offsets[-1] + len(payload) + 16)
    data[offsets[2] + 40] ^= 0x55  # inside record 2
    record.write_bytes(bytes(data))
    problems = validate_episode(paths[0])
    assert any(f"{record}: record 2 is corrupt" in p for p in problems), problems


def test_non_monotonic_timestamps_are_reported(tmp_path):
    w = EpisodeWriter(tmp_path, fps=10, instruction="x", cameras={})
    for stamp in (5, 9, 7):
        w.add_step(robot.home_state(), {}, timestamp_ns=stamp)
    problems = validate_episode(w.close())
    assert any("record 2" in p and "does not increase" in p for p in problems)


def test_statistics_and_fingerprint(tmp_path):
    write_synthetic_dataset(tmp_path, episodes=3, steps=10)
    path, stats = write_statistics(tmp_path)
    data = json.loads(path.read_text())["crane_x7"]  # the earlier stack's shape
    episodes = load_arrays(tmp_path)
    actions = np.concatenate([e.action for e in episodes])
    np.testing.assert_allclose(data["action"]["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data["action"]["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6)
    assert data["num_transitions"] == 30 and data["num_episodes"] == 3
    check_statistics(data, episodes, where=str(path))
    write_synthetic_dataset(tmp_path, episodes=1, steps=10, seed=7)  # a new take arrives
    with pytest.raises(StaleStatisticsError, match="regenerate"):
        check_statistics(data, load_arrays(tmp_path), where=str(path))


@pytest.mark.parametrize("text, found", [
    ('{"fps": 10.0, "language_instr', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"fps": "fast", "language_instruction": "x", "cameras": {}, "start_time": "t"}), "field 'fps'"),
    (json.dumps({"fps": 10, "language_instruction": "x", "cameras": {"primary": [1]}, "start_time": "t"}),
     "cameras.primary"),
    (json.dumps({"fps": 10, "language_instruction": "x", "cameras": {}}), "field 'start_time' is missing"),
])
def test_a_damaged_metadata_file_is_named(tmp_path, text, found):
    from crane_x7_vla.episode.reader import DatasetError, list_episodes, load_episode

    write_synthetic_dataset(tmp_path, episodes=3, steps=4)
    damaged = sorted(tmp_path.glob("episode_*"))[1] / schema.META_FILE
    damaged.write_text(text)
    count, problems = validate_dataset(tmp_path)
    assert count == 3 and len(problems) == 1
    assert problems[0].startswith(f"{damaged}: ") and found in problems[0]
    for read in (lambda: list_episodes(tmp_path), lambda: load_arrays(tmp_path), lambda: write_statistics(tmp_path),
                 lambda: load_episode(damaged.parent)):
        with pytest.raises(DatasetError, match=found) as caught:
            read()
        assert str(caught.value).startswith(f"{damaged}: ")
    assert not (tmp_path / schema.STATS_FILE).exists()
