import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.policy.executor import ChunkExecutor
from crane_x7_vla.policy.safety import SafetyFilter

CONTROL_DT = 1.0 / 30


def ramp(start, velocity, rate, horizon, t0=0.0):
    """A chunk moving every joint at `velocity` rad/s, sampled at the policy rate from t0."""
    steps = np.arange(1, horizon + 1) / rate
    return start + velocity * (t0 + steps)[:, None] * np.ones(8)


def test_interpolates_between_policy_steps():
    ex = ChunkExecutor(policy_rate_hz=10.0)
    state = np.zeros(8)
    actions = np.outer([1.0, 2.0, 3.0], np.ones(8))
    ex.add_chunk(actions, obs_time=5.0, arrival_time=5.0, state=state)
    np.testing.assert_allclose(ex.sample(5.0), 0.0)
    np.testing.assert_allclose(ex.sample(5.05), 0.5)  # halfway to the first action
    np.testing.assert_allclose(ex.sample(5.1), 1.0)
    np.testing.assert_allclose(ex.sample(5.25), 2.5)
    np.testing.assert_allclose(ex.sample(9.0), 3.0)  # held after the end
    assert ex.exhausted(5.31) and not ex.exhausted(5.2)


def test_latency_is_compensated_by_observation_time():
    """A chunk arriving 0.15 s after its observation starts 0.15 s into the chunk."""
    ex = ChunkExecutor(policy_rate_hz=10.0)
    actions = np.outer(np.arange(1, 11) * 0.1, np.ones(8))  # 1 rad/s ramp
    ex.add_chunk(actions, obs_time=2.0, arrival_time=2.15, state=np.zeros(8))
    np.testing.assert_allclose(ex.sample(2.15), 0.15)
    assert ex.chunk_age(2.15) == pytest.approx(0.15)


def test_single_step_chunks_are_interpolated_from_the_observed_state():
    ex = ChunkExecutor(policy_rate_hz=5.0)  # OpenVLA-style H = 1
    ex.add_chunk(np.ones(8), obs_time=0.0, arrival_time=0.0, state=np.zeros(8))
    np.testing.assert_allclose(ex.sample(0.1), 0.5)
    np.testing.assert_allclose(ex.sample(0.3), 1.0)


def seam_steps(mode, offsets):
    """Largest per-tick change while chunks that disagree by `offsets` arrive every 0.2 s."""
    ex = ChunkExecutor(policy_rate_hz=10.0, mode=mode, crossfade_s=0.2)
    rng = np.random.default_rng(0)
    velocity = 0.3
    out = []
    t = 0.0
    for k, offset in enumerate(offsets):
        obs_time = 0.2 * k
        arrival = obs_time + 0.07  # inference latency
        while t < arrival:
            s = ex.sample(t)
            if s is not None:
                out.append(s)
            ex.prune(t)
            t += CONTROL_DT
        state = velocity * obs_time * np.ones(8)
        chunk = ramp(state, velocity, 10.0, 8) + offset * rng.choice([-1, 1], size=8)
        ex.add_chunk(chunk, obs_time, arrival, state=None)
    return np.abs(np.diff(np.array(out), axis=0)).max()


def test_crossfade_keeps_seams_within_the_velocity_limit():
    vmax = 1.0
    offsets = [0.0] + [0.05] * 15  # each new chunk disagrees with the last by 5 cm-ish
    crossfade = seam_steps("crossfade", offsets)
    replace = seam_steps("replace", offsets)
    assert crossfade <= vmax * CONTROL_DT
    # without blending the same chunks jump at the seams
    assert replace > vmax * CONTROL_DT
    assert crossfade < replace / 2


def test_executor_plus_filter_never_exceeds_velocity_with_wild_chunks():
    rng = np.random.default_rng(3)
    vmax = 0.8
    ex = ChunkExecutor(policy_rate_hz=10.0)
    f = SafetyFilter(max_velocity=vmax)
    f.reset(robot.home_state())
    prev = f.last_command
    t = 0.0
    for k in range(60):
        if k % 6 == 0:
            chunk = robot.home_state() + rng.normal(0, 3.0, size=(10, 8))
            if k % 12 == 0:
                chunk[rng.integers(10), rng.integers(8)] = np.nan
            ex.add_chunk(chunk, t - 0.05, t, state=None)
        ex.prune(t)
        cmd = f.step(ex.sample(t), CONTROL_DT, image_age=0.0, state_age=0.0).command
        assert robot.within_limits(cmd).all()
        assert np.all(np.abs(cmd - prev) <= vmax * CONTROL_DT + 1e-12)
        prev = cmd
        t += CONTROL_DT
    assert f.interventions["non_finite"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="blend mode"):
        ChunkExecutor(10.0, mode="average")
    with pytest.raises(ValueError, match="policy_rate_hz"):
        ChunkExecutor(0.0)
    ex = ChunkExecutor(10.0)
    with pytest.raises(ValueError, match=r"\(H, D\)"):
        ex.add_chunk(np.zeros((2, 2, 2)), 0.0, 0.0)
    assert ex.sample(0.0) is None


def _sampled(ex, t0, t1, dt=CONTROL_DT):
    return np.array([ex.sample(t) for t in np.arange(t0, t1, dt)])


def test_bspline_is_smooth_stays_within_the_points_and_rests_on_the_last():
    rng = np.random.default_rng(5)
    state = rng.uniform(-1, 1, 8)
    actions = state + np.cumsum(rng.normal(0, 0.05, (10, 8)), axis=0)
    lin, spl = ChunkExecutor(10.0), ChunkExecutor(10.0, interpolation="bspline")
    for ex in (lin, spl):
        ex.add_chunk(actions, obs_time=1.0, arrival_time=1.0, state=state)
    np.testing.assert_allclose(spl.sample(1.0), state)  # starts where the arm was observed
    np.testing.assert_allclose(spl.sample(2.1), actions[-1])  # at rest on the last point one step after it
    assert spl.exhausted(2.11) and not spl.exhausted(2.05)
    a, b = _sampled(lin, 1.0, 2.2), _sampled(spl, 1.0, 2.2)
    points = np.vstack([state, actions])
    assert np.all(b <= points.max(axis=0) + 1e-9) and np.all(b >= points.min(axis=0) - 1e-9)  # no overshoot
    jerk = lambda x: np.abs(np.diff(x, 3, axis=0)).max() / CONTROL_DT**3  # noqa: E731
    assert jerk(b) < jerk(a) / 3, (jerk(b), jerk(a))
    # interior points: within a sixth of the local second difference
    for i in range(1, 9):
        second = np.abs(points[i - 1] - 2 * points[i] + points[i + 1])
        assert np.all(np.abs(spl.sample(1.0 + i / 10) - points[i]) <= second / 6 + 1e-9)


def test_rtc_chunks_cross_fade_the_little_that_is_left():
    ex = ChunkExecutor(10.0, mode="rtc", crossfade_s=0.2)
    ex.add_chunk(np.outer(np.arange(1, 9) * 0.1, np.ones(8)), 0.0, 0.0, state=np.zeros(8))
    before = ex.sample(0.3)
    # the guided chunk continues the 1 rad/s ramp 2 mrad off it
    ex.add_chunk(np.outer(0.2 + np.arange(1, 9) * 0.1, np.ones(8)) + 0.002, 0.2, 0.3, state=None)
    np.testing.assert_allclose(ex.sample(0.3), before)  # no step at the arrival
    np.testing.assert_allclose(ex.sample(0.4), 0.4 + 0.001)  # halfway through the cross-fade
    np.testing.assert_allclose(ex.sample(0.5), 0.502)  # the new chunk alone


def test_unknown_interpolation_is_named():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ChunkExecutor(10.0, interpolation="cubic")
