import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crane_x7_vla import robot
from crane_x7_vla.policy.safety import SafetyFilter

DT = 1.0 / 30
VMAX = 1.0
AMAX = robot.MAX_ACCELERATION
LO, HI = robot.LOWER_LIMITS, robot.UPPER_LIMITS

# Any float, including NaN, inf and values far outside the limits.
wild = st.floats(allow_nan=True, allow_infinity=True, width=64)
reasonable = st.floats(-10.0, 10.0)
targets = arrays(np.float64, 8, elements=st.one_of(reasonable, wild))
chunks = st.lists(targets, min_size=1, max_size=40)
starts = arrays(np.float64, 8, elements=st.floats(-3.0, 3.0)).map(robot.clamp_to_limits)


def make(start):
    f = SafetyFilter(max_velocity=VMAX, stale_timeout=0.5)
    f.reset(start)
    return f


def check_stream(f, start, seq, dts):
    prev = robot.clamp_to_limits(start)
    for target, dt in zip(seq, dts):
        res = f.step(target, dt, image_age=0.0, state_age=0.0)
        cmd = res.command
        assert np.all(np.isfinite(cmd))
        assert np.all(cmd >= LO - 1e-12) and np.all(cmd <= HI + 1e-12)
        assert np.all(np.abs(cmd - prev) <= VMAX * dt * (1 + 1e-9) + 1e-12)
        prev = cmd


@settings(max_examples=300, deadline=None)
@given(starts, chunks)
def test_random_targets_never_leave_limits_or_exceed_velocity(start, seq):
    check_stream(make(start), start, seq, [DT] * len(seq))


@settings(max_examples=200, deadline=None)
@given(starts, chunks, st.lists(st.floats(1e-4, 0.5), min_size=40, max_size=40))
def test_irregular_periods_keep_the_velocity_limit(start, seq, dts):
    check_stream(make(start), start, seq, dts[: len(seq)])


@settings(max_examples=200, deadline=None)
@given(starts, st.integers(0, 7), st.sampled_from([1, -1]), st.integers(2, 60))
def test_adversarial_bang_bang_chunks(start, joint, sign, period):
    """Targets that flip between the two far ends of a joint's range every few steps."""
    seq = []
    for k in range(120):
        t = start.copy()
        flip = (k // max(1, period // 2)) % 2
        t[joint] = (HI if flip == (sign > 0) else LO)[joint] * 5.0
        seq.append(t)
    f = make(start)
    check_stream(f, start, seq, [DT] * len(seq))


@settings(max_examples=150, deadline=None)
@given(starts, arrays(np.float64, (60, 8), elements=st.floats(-3.0, 3.0)))
def test_acceleration_limited_while_following_finite_targets(start, seq):
    f = make(start)
    prev_v = np.zeros(8)
    for target in seq:
        res = f.step(target, DT, image_age=0.0, state_age=0.0)
        v = f.velocity
        # A joint stopped by its position limit may decelerate harder; all others obey the limit.
        at_limit = (np.abs(res.command - LO) < 1e-9) | (np.abs(res.command - HI) < 1e-9)
        dv = np.abs(v - prev_v)[~at_limit]
        assert np.all(dv <= AMAX * DT * (1 + 1e-6) + 1e-9)
        prev_v = v


def test_nan_is_rejected_and_the_last_command_held():
    start = robot.home_state()
    f = make(start)
    a = f.step(start + 0.01, DT, image_age=0.0, state_age=0.0).command
    bad = start.copy()
    bad[3] = np.nan
    res = f.step(bad, DT, image_age=0.0, state_age=0.0)
    assert res.held and res.reasons == ("non_finite",)
    np.testing.assert_array_equal(res.command, a)
    res = f.step(np.full(8, np.inf), DT, image_age=0.0, state_age=0.0)
    np.testing.assert_array_equal(res.command, a)
    assert f.interventions["non_finite"] == 2


def test_out_of_range_joint_is_clamped_not_dropped():
    start = robot.home_state()
    f = SafetyFilter(max_velocity=100.0, max_acceleration=1e6)
    f.reset(start)
    target = start.copy()
    target[1] = 10.0  # far above the tilt limit
    target[0] = start[0] + 0.05
    res = f.step(target, DT, image_age=0.0, state_age=0.0)
    assert "position_limit" in res.reasons
    assert res.command[1] == pytest.approx(HI[1])
    assert res.command[0] == pytest.approx(start[0] + 0.05)  # the other joints still move


def test_stale_inputs_hold():
    start = robot.home_state()
    f = make(start)
    moved = f.step(start + 0.02, DT, image_age=0.0, state_age=0.0).command
    res = f.step(start + 0.5, DT, image_age=0.6, state_age=0.0)
    assert res.held and res.reasons == ("stale_image",)
    np.testing.assert_array_equal(res.command, moved)
    res = f.step(start + 0.5, DT, image_age=0.0, state_age=0.9)
    assert res.reasons == ("stale_state",)
    res = f.step(start + 0.5, DT, image_age=0.0, state_age=None)  # no joint state at all
    assert res.reasons == ("stale_state",)
    counts = f.interventions
    assert counts["stale_image"] == 1 and counts["stale_state"] == 2
    assert not f.step(start + 0.5, DT, image_age=0.1, state_age=0.1).held


def test_emergency_stop_latches_until_release():
    start = robot.home_state()
    f = make(start)
    f.step(start + 0.02, DT, image_age=0.0, state_age=0.0)
    frozen = f.last_command
    f.emergency_stop("button")
    for _ in range(20):
        res = f.step(start + 1.0, DT, image_age=0.0, state_age=0.0)
        assert res.held and res.reasons == ("emergency_stop",)
        np.testing.assert_array_equal(res.command, frozen)
    assert f.estopped and f.estop_reason == "button"
    assert f.interventions["emergency_stop"] == 1
    measured = start + 0.01
    f.release(measured)
    assert not f.estopped
    res = f.step(start + 1.0, DT, image_age=0.0, state_age=0.0)
    assert not res.held
    assert np.all(np.abs(res.command - measured) <= VMAX * DT + 1e-12)


def test_step_before_reset_and_bad_settings_are_errors():
    with pytest.raises(RuntimeError, match="reset"):
        SafetyFilter().step(np.zeros(8), DT, state_age=0.0)
    with pytest.raises(ValueError, match="max_velocity"):
        SafetyFilter(max_velocity=0.0)
    f = make(robot.home_state())
    with pytest.raises(ValueError, match="dt"):
        f.step(np.zeros(8), 0.0, state_age=0.0)
    with pytest.raises(ValueError, match="8 values"):
        f.step(np.zeros(7), DT, state_age=0.0)


def test_preview_leaves_state_unchanged():
    start = robot.home_state()
    f = make(start)
    before = (f.last_command, f.velocity, f.interventions)
    pts = f.preview([start + 1.0] * 3, DT)
    assert pts.shape == (3, 8)
    assert np.all(np.abs(np.diff(np.vstack([start, pts]), axis=0)) <= VMAX * DT + 1e-12)
    np.testing.assert_array_equal(f.last_command, before[0])
    np.testing.assert_array_equal(f.velocity, before[1])
    assert f.interventions == before[2]
