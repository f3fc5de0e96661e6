import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crane_x7_vla import robot
from crane_x7_vla.policy.safety import SafetyFilter, fresh, message_age, stopping_speed

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
        assert not f.step(target, DT, image_age=0.0, state_age=0.0).held
        v = f.velocity
        # Joints braking at a position limit too: the filter plans to stop there within the limit.
        assert np.all(np.abs(v - prev_v) <= AMAX * DT * (1 + 1e-9) + 1e-9)
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


# --- braking: a seeded sweep of single joints -------------------------------------------------------
# Every joint of the filter is computed independently (the limits, velocity and acceleration
# limits are per joint), so one filter with N joints runs N independent cases at once; each
# group of cases shares one tick length, as a filter's period is one number.
GROUPS, PER_GROUP, TICKS = 16, 640, 1000


def _stop_distance(v, u, dt):
    """Least distance a joint moving at v (>= 0) after a tick travels before it stops when its
    speed may drop by u per tick: dt * sum over k >= 1 of max(0, v - k u), summed term by term."""
    k = np.arange(1, int(np.ceil(np.max(v / u))) + 2)
    return dt * np.maximum(0.0, v[:, None] - k[None, :] * u[:, None]).sum(axis=1)


def _draw_group(rng, n):
    dt = float(np.exp(rng.uniform(np.log(1e-3), np.log(0.1))))
    vmax = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n))
    # Ticks to reach vmax from rest (0.3..150) and to cross the range at vmax (0.5..300), so
    # that every case settles within TICKS.
    amax = vmax / (dt * np.exp(rng.uniform(np.log(0.3), np.log(150.0), n)))
    width = vmax * dt * np.exp(rng.uniform(np.log(0.5), np.log(300.0), n))
    lower = rng.uniform(-3.0, 1.0, n)
    upper = lower + width
    kind = rng.choice(["inside", "lower", "upper", "below", "above"], n, p=[0.6, 0.05, 0.05, 0.15, 0.15])
    start = np.select([kind == "inside", kind == "lower", kind == "upper", kind == "below"],
                      [rng.uniform(lower, upper), lower, upper, lower - rng.uniform(0, 0.5, n) * width],
                      upper + rng.uniform(0, 0.5, n) * width)
    v0 = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(-1.5, 1.5, n) * vmax)
    tkind = rng.choice(["inside", "lower", "upper", "outside"], n, p=[0.6, 0.1, 0.1, 0.2])
    beyond = rng.uniform(0, 2.0, n) * width
    target = np.select([tkind == "inside", tkind == "lower", tkind == "upper"],
                       [rng.uniform(lower, upper), lower, upper],
                       np.where(rng.random(n) < 0.5, lower - beyond, upper + beyond))
    return dt, vmax, amax, lower, upper, start, v0, target


def test_seeded_sweep_reaches_targets_without_overshoot_and_brakes_within_limits():
    rng = np.random.default_rng(20240527)
    reachable_cases = returns_from_outside = 0
    for _ in range(GROUPS):
        dt, vmax, amax, lower, upper, start, v0, target = _draw_group(rng, PER_GROUP)
        f = SafetyFilter(lower=lower, upper=upper, max_velocity=vmax, max_acceleration=amax)
        f.reset(start, velocity=v0)
        cmds = [start]
        for _ in range(TICKS):
            res = f.step(target, dt, image_age=0.0, state_age=0.0)
            assert not res.held
            cmds.append(res.command)
        q = np.array(cmds)  # (TICKS + 1, cases)
        v = np.vstack([np.clip(v0, -vmax, vmax), np.diff(q, axis=0) / dt])
        u = amax * dt
        goal = np.clip(target, lower, upper)

        # The commanded speed never exceeds its limit.
        assert np.all(np.abs(v[1:]) <= vmax * (1 + 1e-9))
        # Speed changes by at most a * dt per tick; on the first tick only a start that cannot
        # stop at a limit (moving out of the range, or too fast to stop before it) may brake harder.
        dv = np.abs(np.diff(v, axis=0))
        assert np.all(dv[1:] <= u * (1 + 1e-9) + 1e-9)
        va = np.abs(v[0])
        room = np.where(v[0] > 0, upper - start, start - lower)
        cannot_stop = (v[0] != 0) & (_stop_distance(va, u, dt) > room - 1e-9)
        assert np.all(dv[0][~cannot_stop] <= u[~cannot_stop] * (1 + 1e-9) + 1e-9)
        # Once inside the limits, a joint stays inside, exactly.
        inside = (q >= lower) & (q <= upper)
        entered = np.maximum.accumulate(inside, axis=0)
        assert np.all(inside[entered])
        # A joint that starts outside moves back monotonically and gets inside.
        outside = np.maximum(0.0, np.maximum(q - upper, lower - q))
        out_start = outside[0] > 0
        assert np.all(np.diff(outside[:, out_start], axis=0) <= 0)
        assert np.all(outside[-1] == 0)
        returns_from_outside += int(out_start.sum())
        # Overshoot past the goal is no more than the start velocity forces: none when the goal
        # can be reached (the joint can stop before it, decelerating by a * dt per tick).
        error = goal - start
        s = np.where(error != 0, np.sign(error), np.sign(v[0]))
        toward = np.maximum(0.0, s * v[0])
        forced = np.maximum(0.0, _stop_distance(toward, u, dt) - np.abs(error))
        overshoot = np.max(s * (q - goal), axis=0)
        reachable = forced == 0
        assert np.all(overshoot[reachable] <= 1e-9)
        assert np.all(overshoot <= forced + 1e-9)
        reachable_cases += int(reachable.sum())
        # Every case settles on its goal.
        np.testing.assert_allclose(q[-1], goal, rtol=0, atol=1e-9)
    assert reachable_cases > 0.8 * GROUPS * PER_GROUP
    assert returns_from_outside > 0.2 * GROUPS * PER_GROUP


def test_stopping_speed_is_exact_for_the_filters_update():
    """Moving at the stopping speed, then slowing by a * dt per tick, ends exactly at the distance."""
    rng = np.random.default_rng(5)
    dt = 1.0 / 30
    d = np.concatenate([[0.0, 1e-6], rng.uniform(0, 3.0, 300)])
    v = stopping_speed(d, AMAX, dt)
    travelled = np.zeros_like(d)
    speed = v.copy()
    while np.any(speed > 0):
        travelled += speed * dt
        speed = np.maximum(0.0, speed - AMAX * dt)
    np.testing.assert_allclose(travelled, d, rtol=1e-12, atol=1e-12)
    # A little faster would not stop in time.
    assert np.all(_stop_distance(v * (1 + 1e-6) + 1e-9, np.full_like(d, AMAX * dt), dt)
                  + (v * (1 + 1e-6) + 1e-9) * dt > d)
    assert np.all(stopping_speed(-np.abs(d), AMAX, dt) == 0)


def test_target_on_a_limit_is_met_within_the_acceleration_limit():
    """The robot's own numbers: full speed into the pan joint's upper limit, from near and far
    (one filter joint per start distance)."""
    dist = np.linspace(0.01, 2.5, 60)
    lower, upper = np.full(60, LO[0]), np.full(60, HI[0])
    for dt in (1.0 / 30, 1.0 / 200):
        f = SafetyFilter(lower=lower, upper=upper)
        f.reset(upper - dist)
        q = np.array([upper - dist] + [f.step(upper + 1.0, dt, state_age=0.0).command for _ in range(int(4 / dt))])
        v = np.diff(q, axis=0, prepend=q[:1]) / dt
        assert np.all(q <= upper)
        np.testing.assert_allclose(q[-1], upper, rtol=0, atol=1e-9)
        assert np.max(np.abs(np.diff(v, axis=0))) <= robot.MAX_ACCELERATION * dt * (1 + 1e-9) + 1e-9
        assert np.max(np.abs(v)) <= robot.MAX_VELOCITY * (1 + 1e-9)


def test_out_of_limit_start_ramps_back():
    start = robot.home_state()
    start[1] = HI[1] + 0.3
    f = make(start)
    assert f.last_command[1] == start[1]  # the measured position, not the limit
    q = [start[1]] + [f.step(robot.home_state(), DT, image_age=0.0, state_age=0.0).command[1] for _ in range(90)]
    v = np.diff(q) / DT
    assert abs(q[1] - q[0]) <= AMAX * DT * DT * (1 + 1e-9)  # the first tick moves at a * dt
    assert np.all(np.diff(q) <= 0) and np.all(np.abs(v) <= VMAX * (1 + 1e-9))
    assert np.all(np.abs(np.diff(np.concatenate([[0.0], v]))) <= AMAX * DT * (1 + 1e-9))
    assert q[-1] == pytest.approx(robot.home_state()[1], abs=1e-9)


# --- staleness: ages outside [0, stale_timeout] ---------------------------------------------------
def test_ages_outside_zero_to_the_timeout_are_stale():
    assert fresh(0.0, 0.5) and fresh(0.2, 0.5) and fresh(0.5, 0.5)
    for age in (-1e-6, -10.0, 0.5 + 1e-9, 10.0, float("inf"), float("-inf"), float("nan"), None):
        assert not fresh(age, 0.5), age
    now = 1_700_000_000 * 10**9
    assert message_age(now, now - 200_000_000) == pytest.approx(0.2)
    assert message_age(now, now + 10 * 10**9) == pytest.approx(-10.0)  # stamped in the future
    assert message_age(now, now - 10 * 10**9) == pytest.approx(10.0)
    assert message_age(now, 0) == 0.0  # an unset stamp: timed from its arrival
    for offset_ns in (-10 * 10**9, 10 * 10**9, 1_000_000, -600_000_000):
        assert not fresh(message_age(now, now + offset_ns), 0.5), offset_ns


def test_inputs_stamped_in_the_future_hold():
    start = robot.home_state()
    f = make(start)
    moved = f.step(start + 0.02, DT, image_age=0.0, state_age=0.0).command
    res = f.step(start + 0.5, DT, image_age=-0.01, state_age=0.0)
    assert res.held and res.reasons == ("stale_image",)
    np.testing.assert_array_equal(res.command, moved)
    res = f.step(start + 0.5, DT, image_age=0.0, state_age=-10.0)
    assert res.held and res.reasons == ("stale_state",)
    assert f.interventions["stale_image"] == 1 and f.interventions["stale_state"] == 1
