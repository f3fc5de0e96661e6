"""Action representation: delta <-> absolute, normalise <-> unnormalise, padding, statistics."""

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.backends.openpi.transforms import (
    DELTA_MASK,
    ActionSpace,
    chunk,
    model_action_statistics,
    pad,
    to_absolute,
    to_delta,
)
from crane_x7_vla.episode.reader import load_episode, list_episodes
from crane_x7_vla.episode.reader import load_statistics


def test_delta_mask_is_arm_only():
    assert DELTA_MASK.tolist() == [True] * 7 + [False]


def test_delta_absolute_round_trip():
    rng = np.random.default_rng(0)
    state = rng.uniform(-1, 1, 8)
    actions = rng.uniform(-1, 1, (5, 8))
    d = to_delta(actions, state)
    np.testing.assert_allclose(d[:, :7], actions[:, :7] - state[:7])
    np.testing.assert_allclose(d[:, 7], actions[:, 7])  # gripper stays absolute
    np.testing.assert_allclose(to_absolute(d, state), actions)


def test_pad_and_chunk():
    x = pad(np.ones((2, 8)), 32)
    assert x.shape == (2, 32) and x[:, 8:].sum() == 0 and x[:, :8].sum() == 16
    with pytest.raises(ValueError):
        pad(np.ones(40), 32)
    a = np.arange(5)[:, None] * np.ones((5, 8))
    assert chunk(a, 3, 4)[:, 0].tolist() == [3, 4, 4, 4]  # repeats the last action


def test_action_space_round_trip(episodes_dir):
    eps = [load_episode(r.path, images=False) for r in list_episodes(episodes_dir)]
    stats = load_statistics(episodes_dir)["crane_x7"]
    model_stats = model_action_statistics(eps, horizon=4)
    # deltas of the arm are small, the gripper keeps its absolute range
    assert max(model_stats["q99"][:7]) < 0.5
    np.testing.assert_allclose(model_stats["q99"][7], robot.GRIPPER_OPEN, atol=1e-6)
    space = ActionSpace(4, 32, model_stats, stats["proprio"])
    ep = eps[0]
    for t in (0, 5, len(ep) - 1):
        target = chunk(ep.action, t, 4)
        enc = space.encode_actions(target, ep.proprio[t])
        assert enc.shape == (4, 32) and np.abs(enc).max() <= 1.0 and not enc[:, 8:].any()
        dec = space.decode_actions(enc, ep.proprio[t])
        # exact inside q01..q99; values beyond are clipped to the quantile (openpi's behaviour)
        lo, hi = np.asarray(model_stats["q01"]), np.asarray(model_stats["q99"])
        expected = to_absolute(np.clip(to_delta(target, ep.proprio[t]), lo, hi), ep.proprio[t])
        np.testing.assert_allclose(dec, expected, atol=1e-5)
    st = space.encode_state(ep.proprio[3])
    assert st.shape == (32,) and np.abs(st).max() <= 1.0

    config = {"action_space": space.to_dict(), "dataset_statistics": stats}
    again = ActionSpace.from_config(config)
    np.testing.assert_allclose(again.encode_actions(target, ep.proprio[0]), space.encode_actions(target, ep.proprio[0]))
    with pytest.raises(ValueError, match="representation"):
        ActionSpace.from_config({"action_space": {"representation": "absolute"}, "dataset_statistics": stats})
