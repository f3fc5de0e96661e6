import json

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode.reader import load_episode, list_episodes
from crane_x7_vla.policy.baselines import HoldPolicy, MeanTrajectoryPolicy, mean_trajectory
from crane_x7_vla.policy.loader import PolicyLoadError, fingerprint_of, load_policy
from crane_x7_vla.episode.stats import write_statistics

from .conftest import observation


def test_mean_trajectory_checkpoint_round_trip(dataset, mean_ckpt):
    policy = load_policy(mean_ckpt)
    assert isinstance(policy, MeanTrajectoryPolicy)
    actions = [load_episode(r.path, images=False).action for r in list_episodes(dataset)]
    expected = np.mean(actions, axis=0)  # equal lengths here
    np.testing.assert_allclose(policy.trajectory, expected)
    # time-indexed: at 0.3 s and 10 Hz the chunk starts at step 3
    np.testing.assert_allclose(policy.predict(observation(t=0.3)), expected[3:8])
    # past the end: held at the last step
    chunk = policy.predict(observation(t=100.0))
    np.testing.assert_allclose(chunk, np.repeat(expected[-1:], 5, axis=0))
    assert policy.config["cameras"] == ["primary"] and policy.config["control_rate_hz"] == 10.0


def test_mean_trajectory_holds_shorter_episodes_at_their_end():
    a = np.zeros((2, 8))
    b = np.ones((4, 8))
    np.testing.assert_allclose(mean_trajectory([a, b])[:, 0], [0.5, 0.5, 0.5, 0.5])
    a[1] = 2.0
    np.testing.assert_allclose(mean_trajectory([a, b])[:, 0], [0.5, 1.5, 1.5, 1.5])


def test_hold_policy_checkpoint(tmp_path):
    HoldPolicy(horizon=3).save(tmp_path / "hold")
    policy = load_policy(tmp_path / "hold")
    state = robot.home_state()
    np.testing.assert_allclose(policy.predict(observation(state)), np.tile(state, (3, 1)))
    with pytest.raises(PolicyLoadError, match="carries no dataset statistics"):
        load_policy(tmp_path / "hold", expected_fingerprint="abcd")


def test_missing_and_broken_config(tmp_path):
    with pytest.raises(PolicyLoadError, match="no such checkpoint directory"):
        load_policy(tmp_path / "nope")
    with pytest.raises(PolicyLoadError, match="policy_config.json: missing"):
        load_policy(tmp_path)
    (tmp_path / "policy_config.json").write_text("{not json")
    with pytest.raises(PolicyLoadError, match="not valid JSON"):
        load_policy(tmp_path)


def test_joint_order_mismatch_is_refused(edit_ckpt):
    swapped = edit_ckpt(lambda c: c["joint_names"].__setitem__(slice(0, 2), c["joint_names"][1::-1]))
    with pytest.raises(PolicyLoadError, match="orders the joints differently"):
        load_policy(swapped)
    other = edit_ckpt(lambda c: c.__setitem__("joint_names", [f"j{i}" for i in range(8)]))
    with pytest.raises(PolicyLoadError, match="trained for other joints"):
        load_policy(other)


def test_statistics_problems_are_refused(edit_ckpt, mean_ckpt, dataset):
    with pytest.raises(PolicyLoadError, match="fingerprint is missing"):
        load_policy(edit_ckpt(lambda c: c.pop("statistics_fingerprint")))
    with pytest.raises(PolicyLoadError, match="does not match the fingerprint of the statistics"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("statistics_fingerprint", "0123456789abcdef")))
    with pytest.raises(PolicyLoadError, match="dataset_statistics.action.q99"):
        load_policy(edit_ckpt(lambda c: c["dataset_statistics"]["action"].__setitem__("q99", [1.0] * 7)))
    with pytest.raises(PolicyLoadError, match="'dataset_statistics' is missing"):
        load_policy(edit_ckpt(lambda c: c.pop("dataset_statistics")))
    with pytest.raises(PolicyLoadError, match="configured for ffff"):
        load_policy(mean_ckpt, expected_fingerprint="ffff")
    write_statistics(dataset)
    fp = fingerprint_of(dataset)
    assert load_policy(mean_ckpt, expected_fingerprint=fp).config["statistics_fingerprint"] == fp


def test_other_config_errors_name_the_field(edit_ckpt):
    with pytest.raises(PolicyLoadError, match="unknown backend 'nosuch'"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("backend", "nosuch")))
    with pytest.raises(PolicyLoadError, match="control_rate_hz"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("control_rate_hz", 0)))
    with pytest.raises(PolicyLoadError, match="horizon"):
        load_policy(edit_ckpt(lambda c: c["action_space"].__setitem__("horizon", 0)))
    with pytest.raises(PolicyLoadError, match="format_version 7"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("format_version", 7)))
