"""Recovery starts (collect --sim --start-near): the hand posed a few cm from a cube, clear of
the table and the cubes, not already at the goal; the expert goes the rest of the way."""

import math

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.sim import ScriptedExpert, SimEnv, rollout
from crane_x7_vla.sim.ik import ArmIK
from crane_x7_vla.sim.poses import NEAR_HEIGHT, NEAR_OFFSET, START_MIN_DISTANCE, start_hand_near_cube


def test_arm_touches_scene_sees_fingers_in_a_cube_or_the_table_and_not_the_home_pose():
    env = SimEnv("reach", seed=0, cameras=("primary",))
    ik = ArmIK(env.model)
    assert not env.arm_touches_scene()
    cube = env.cube_position(env.layout.target_cube)
    bearing = math.atan2(cube[1], cube[0])
    seed = env.joint_positions()[:7].copy()
    seed[0] = bearing
    for point in (cube + [0.015, 0.0, 0.0], [0.3, -0.12, -0.005]):  # a finger inside the cube; in the table
        env.pose_arm(ik.solve(np.array(point), bearing + math.pi, seed, robot.GRIPPER_OPEN).q)
        assert env.arm_touches_scene(), point
        env.pose_arm(seed)
    env.close()


@pytest.mark.parametrize("task,seeds", [("reach", range(8)), ("pick_place", range(2))])
def test_recovery_starts_are_clear_and_the_expert_finishes_from_there(task, seeds):
    env = SimEnv(task, seed=0, cameras=("primary",))
    ik = ArmIK(env.model)
    for seed in seeds:
        env.reset(seed)
        home_tip = env.fingertip_centre()
        rng = np.random.default_rng([seed, 11])
        assert start_hand_near_cube(env, ik, rng), seed
        assert not env.arm_touches_scene(), seed
        tip = env.fingertip_centre()
        assert np.linalg.norm(tip - home_tip) > 0.1  # really moved away from home
        cubes = np.array([env.cube_position(i) for i in range(len(env.layout.cube_colours))])
        beside = np.linalg.norm(cubes[:, :2] - tip[:2], axis=1)
        near = np.flatnonzero(beside < NEAR_OFFSET * math.sqrt(2) + 0.01)
        assert near.size, (seed, tip, cubes)
        above = tip[2] - cubes[near, 2]
        assert ((NEAR_HEIGHT[0] - 0.01 < above) & (above < NEAR_HEIGHT[1] + 0.01)).any(), (seed, above)
        if task == "reach":
            assert env.distance_to_goal() >= START_MIN_DISTANCE and not env.success()
        expert = ScriptedExpert(env, rng=np.random.default_rng([seed, 7]))
        ok = rollout(env, expert, control_hz=50, timeout=25)
        assert ok and expert.done, (task, seed)
        if task == "reach":  # a hop over to the cube, pushing none of them
            moved = np.linalg.norm(np.array([env.cube_position(i) for i in range(len(cubes))]) - cubes, axis=1)
            assert moved.max() < 0.005, (seed, moved)
    env.close()


def test_a_crowded_start_falls_back_to_home():
    """No clear pose in the tries: the arm stays where the reset put it."""
    env = SimEnv("reach", seed=3, cameras=("primary",))
    ik = ArmIK(env.model)
    home = env.joint_positions()[:7].copy()
    assert not start_hand_near_cube(env, ik, np.random.default_rng(0), tries=0)
    np.testing.assert_allclose(env.joint_positions()[:7], home, atol=1e-9)
    env.close()
