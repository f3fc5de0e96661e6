"""Real-time chunking with a real tiny π0 policy trained here: the guided sampling follows the
committed actions, and on a recorded episode replayed through the chunk executor the seams
between chunks jump and jerk less than with the linear cross-fade (bench/rtc_seams.py)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from crane_x7_vla.backends.openpi.policy import guidance_weights
from crane_x7_vla.episode.reader import list_episodes
from crane_x7_vla.policy.executor import ChunkExecutor
from crane_x7_vla.policy.loader import load_policy

from .conftest import make_episodes, tiny_train_config

ROOT = Path(__file__).resolve().parents[2]
HORIZON = 8
ARM = slice(0, 7)


def _bench():
    spec = importlib.util.spec_from_file_location("rtc_seams", ROOT / "bench" / "rtc_seams.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rtc_seams", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny π0 trained on 30-step episodes with a chunk of 8, and the episodes."""
    from crane_x7_vla.backends.openpi.trainer import train

    data = make_episodes(tmp_path_factory.mktemp("rtc_episodes"), n_episodes=4, steps=30)
    out = tmp_path_factory.mktemp("rtc_run")
    cfg = tiny_train_config(data, out, max_steps=300, save_steps=1000, eval_steps=1000, action_horizon=HORIZON)
    return train(cfg), data


@pytest.fixture(scope="module")
def policy(trained):
    return load_policy(trained[0], device="cpu")


@pytest.fixture(scope="module")
def recorded(trained, policy):
    return _bench().observations(list_episodes(trained[1])[0].path, list(policy.metadata["cameras"]))[0]


def test_guidance_weights_cover_the_delay_then_fade_over_the_overlap():
    w = guidance_weights(8, overlap=5, delay_steps=2)
    assert w.shape == (8,)
    np.testing.assert_array_equal(w[:2], 1.0)
    assert np.all(np.diff(w[2:5]) < 0) and 0 < w[4] < w[2] < 1
    np.testing.assert_array_equal(w[5:], 0.0)
    np.testing.assert_array_equal(guidance_weights(4, overlap=9, delay_steps=9), 1.0)  # clipped to the horizon


def test_guided_sampling_follows_the_committed_steps_and_leaves_the_rest_free(policy, recorded):
    obs = dict(recorded[6])
    policy.reset()
    free = policy.predict(obs)
    committed = free[:4] + np.array([0.03, -0.03, 0.03, -0.03, 0.03, -0.03, 0.03, 0.0])
    policy.reset()
    guided = policy.predict({**obs, "committed_actions": committed, "delay_steps": 2})
    assert policy.last_guidance is not None
    assert guided.shape == free.shape == (HORIZON, 8) and np.all(np.isfinite(guided))
    before = np.abs(free[:2, ARM] - committed[:2, ARM]).max()
    after = np.abs(guided[:2, ARM] - committed[:2, ARM]).max()
    assert after < 0.3 * before, (before, after)
    # past the overlap the chunk is the policy's own: not pulled by the offset
    tail_shift = np.abs(guided[6:, ARM] - free[6:, ARM]).max()
    assert tail_shift < 0.5 * np.abs(committed[0, ARM] - free[0, ARM]).max(), tail_shift
    policy.reset()
    with pytest.raises(ValueError, match="committed_actions"):
        policy.predict({**obs, "committed_actions": np.zeros((3, 5))})


def test_executor_commits_its_plan_and_fades_a_guided_chunk_in_from_its_arrival():
    ex = ChunkExecutor(10.0, mode="rtc")
    first = np.linspace(0.0, 0.7, 8)[:, None] * np.ones((1, 8))
    ex.add_chunk(first, obs_time=0.0, arrival_time=0.1, state=np.zeros(8))
    committed = ex.committed(0.4, 8)
    assert committed.shape == (4, 8)  # 0.5 .. 0.8 s: the plan reaches 0.8 s
    np.testing.assert_allclose(committed[:, 0], first[4:, 0])
    second = np.full((8, 8), 5.0)
    ex.add_chunk(second, obs_time=0.4, arrival_time=0.6, state=np.zeros(8))
    np.testing.assert_allclose(ex.sample(0.6), first[5])  # no step at the arrival: what was being executed
    np.testing.assert_allclose(ex.sample(0.8), second[3])  # after the cross-fade, the new chunk alone


def test_recorded_rollout_seams_jump_and_jerk_less_with_real_time_chunking(policy, recorded):
    bench = _bench()
    figures = {}
    for name, rtc in (("crossfade", False), ("rtc", True)):
        run = bench.rollout(policy, recorded, rtc=rtc, delay_steps=2, period_steps=4)
        if rtc:
            assert run["guided"] and all(n > 2 for n in run["guided"])
        figures[name] = bench.seam_figures(run)
    xf, rtc = figures["crossfade"], figures["rtc"]
    assert xf["seams"] == rtc["seams"] >= 5
    assert rtc["max_gap"] < 0.5 * xf["max_gap"], figures  # the seam's jump
    assert rtc["seam_peak_jerk"] < xf["seam_peak_jerk"], figures
    assert rtc["peak_jerk"] <= xf["peak_jerk"], figures
