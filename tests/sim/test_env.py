"""SimEnv: seeded resets, trajectory execution like a JointTrajectoryController, success checks."""

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.sim import TASKS, SimEnv


@pytest.fixture(scope="module")
def env():
    e = SimEnv("reach", seed=0)
    yield e
    e.close()


def test_reset_is_reproducible_and_seeds_differ():
    a, b = SimEnv("pick_place", seed=5), SimEnv("pick_place", seed=5)
    assert a.instruction == b.instruction
    assert a.state_summary()["cubes"] == b.state_summary()["cubes"]
    assert np.array_equal(a.joint_positions(), b.joint_positions())
    assert np.array_equal(a.render("primary"), b.render("primary"))
    summaries = set()
    for seed in range(6):
        a.reset(seed)
        summaries.add((a.instruction, tuple(np.round(a.layout.cube_xy.ravel(), 6))))
    assert len(summaries) == 6
    a.reset(5)
    assert a.state_summary()["cubes"] == b.state_summary()["cubes"] and a.time == 0.0
    a.close(), b.close()


def test_instructions_name_the_target(env):
    for seed in range(5):
        env.reset(seed)
        colour = env.layout.cube_colours[env.layout.target_cube]
        assert env.instruction == f"reach the {colour} cube"
        assert len(set(env.layout.cube_colours)) == len(env.layout.cube_colours)
    pp = SimEnv("pick_place", seed=3)
    lay = pp.layout
    assert pp.instruction == (f"pick up the {lay.cube_colours[lay.target_cube]} cube and place it on the "
                              f"{lay.plate_colours[lay.target_plate]} plate")


def test_success_false_at_start():
    for task in TASKS:
        e = SimEnv(task, seed=0)
        for seed in range(5):
            e.reset(seed)
            assert not e.success(), (task, seed)
            e.step(0.2)
            assert not e.success(), (task, seed)


def test_distance_to_goal_is_what_the_success_check_measures():
    from crane_x7_vla.sim.tasks import REACH_DISTANCE

    e = SimEnv("reach", seed=4)
    try:
        cube = e.cube_position(e.layout.target_cube)
        assert e.distance_to_goal() == pytest.approx(np.linalg.norm(e.fingertip_centre() - cube))
        assert e.distance_to_goal() > REACH_DISTANCE and not e.success()
        assert e.state_summary()["distance_to_goal_m"] == pytest.approx(e.distance_to_goal(), abs=1e-4)
    finally:
        e.close()
    pp = SimEnv("pick_place", seed=4)
    try:  # pick and place: the named cube to the named plate, in the table plane
        lay = pp.layout
        cube = pp.cube_position(lay.target_cube)
        assert pp.distance_to_goal() == pytest.approx(np.linalg.norm(cube[:2] - lay.plate_xy[lay.target_plate]))
    finally:
        pp.close()


def test_target_reached_within_velocity_limit(env):
    env.reset(0)
    start = env.joint_positions()[:7]
    goal = np.array([0.8, -0.3, 0.4, -1.2, 0.5, -0.6, 1.0])
    env.set_arm_target(goal)
    speeds, arrival, dt = [], None, 0.01
    for k in range(150):
        env.step(dt)
        speeds.append(np.abs(env.joint_velocities()[:7]).max())
        if arrival is None and np.abs(env.joint_positions()[:7] - goal).max() < 0.01:
            arrival = (k + 1) * dt
    assert max(speeds) <= robot.MAX_VELOCITY * 1.05
    assert max(speeds) > 0.8 * robot.MAX_VELOCITY  # "as fast as allowed"
    assert env.joint_positions()[:7] == pytest.approx(goal, abs=5e-3)
    assert np.abs(env.joint_velocities()[:7]).max() < 0.01  # settled, no oscillation
    # It cannot have arrived sooner than the largest move at full speed.
    assert arrival is not None and arrival >= (np.abs(goal - start).max() - 0.01) / robot.MAX_VELOCITY


def test_trajectory_interpolates_and_replaces(env):
    env.reset(1)
    q0 = env.joint_positions()[:7]
    mid = q0 + np.array([0.3, 0, 0, 0, 0, 0, 0])
    end = q0 + np.array([0.3, 0, 0, 0, 0, 0.3, 0])
    env.set_arm_trajectory([(1.0, mid), (2.0, end)])
    env.step(0.5)
    assert env.joint_positions()[0] == pytest.approx(q0[0] + 0.15, abs=0.01)  # linear in time
    env.step(0.5)
    assert env.joint_positions()[:7] == pytest.approx(mid, abs=0.01)
    env.step(0.5)
    assert env.joint_positions()[5] == pytest.approx(q0[5] + 0.15, abs=0.01)
    # A new trajectory replaces the rest of the old one, starting from where the arm is.
    env.set_arm_trajectory([(0.5, mid)])
    env.step(1.0)
    assert env.joint_positions()[:7] == pytest.approx(mid, abs=0.01)


def test_targets_clamped_and_bad_commands_rejected(env):
    env.reset(2)
    over = robot.HOME_POSE.copy()
    over[1] = 3.0  # beyond the tilt joint's +90 degrees
    env.set_arm_target(over)
    env.step(1.0)
    assert env.joint_positions()[1] == pytest.approx(robot.UPPER_LIMITS[1], abs=0.01)
    assert robot.within_limits(env.joint_positions(), tol=0.01).all()
    before = env.arm_reference()
    with pytest.raises(ValueError, match="NaN"):
        env.set_arm_target(np.full(7, np.nan))
    with pytest.raises(ValueError, match="must hold 7 values"):
        env.set_arm_target(np.zeros(8))
    with pytest.raises(ValueError, match="time_from_start"):
        env.set_arm_trajectory([(1.0, before), (0.5, before)])
    with pytest.raises(ValueError, match="gripper position"):
        env.set_gripper(float("nan"))
    with pytest.raises(ValueError, match="unknown task"):
        SimEnv("stack")
    with pytest.raises(ValueError, match="unknown camera"):
        env.render("top")
    assert np.array_equal(env.arm_reference(), before)  # rejected commands changed nothing


def test_gripper_follows_and_clamps(env):
    env.reset(0)
    env.set_gripper(robot.GRIPPER_CLOSED)
    env.step(0.5)
    assert env.joint_positions()[7] == pytest.approx(robot.GRIPPER_CLOSED, abs=0.02)
    finger_b = env.data.qpos[env.model.joint(robot.GRIPPER_MIMIC_JOINT).qposadr[0]]
    assert finger_b == pytest.approx(env.joint_positions()[7], abs=0.02)  # mirrors finger_a
    env.set_gripper(5.0)
    env.step(1.0)
    assert env.joint_positions()[7] == pytest.approx(robot.UPPER_LIMITS[7], abs=0.02)


def test_step_time_and_state_summary(env):
    env.reset(0)
    env.step(0.25)
    env.step(0.013)
    assert env.time == pytest.approx(0.264, abs=0.002)
    env.reset(0)
    for _ in range(100):
        env.step(0.0101)  # not a multiple of the physics step: no drift
    assert env.time == pytest.approx(1.01, abs=0.002)
    s = env.state_summary()
    assert s["instruction"] == env.instruction and len(s["cubes"]) == 3 and s["success"] is False


def test_a_flung_finger_stops_at_its_limit(env):
    """A fast arm swing can fling the open fingers against their 90 degree stop: the joint state
    stays within the episode validator's tolerance (MuJoCo's default soft stop let it pass by
    0.09 rad at 20 rad/s and 0.22 at 40, and one such step failed a whole demo collection)."""
    from crane_x7_vla.episode.validate import LIMIT_TOLERANCE

    env.reset(0)
    env.set_gripper(robot.GRIPPER_OPEN)
    for speed in (20.0, 40.0):
        for _ in range(100):
            env.step(0.01)
        assert env.joint_positions()[-1] == pytest.approx(robot.GRIPPER_OPEN, abs=1e-2)
        env.data.qvel[env._dadr[7]] = speed  # opening, towards the stop
        highest = -np.inf
        for _ in range(200):
            env.step(0.002)
            highest = max(highest, env.joint_positions()[-1])
        assert highest > robot.UPPER_LIMITS[-1] - 0.01, speed  # it did reach the stop
        assert highest - robot.UPPER_LIMITS[-1] < LIMIT_TOLERANCE, speed
