"""Arm poses with the hand a few centimetres from a cube, posed by inverse kinematics.

Two users: goal scenes (`train --goal-scenes-near`) render such poses so that the goal tokens
learn to read the goal off the cube, not off the hand; recovery demonstrations
(`collect --sim --start-near`) start from them, so that a policy whose hand arrives beside the
cube has seen the expert go the last centimetres from there. Every demonstration that starts
at home passes the cube's neighbourhood moving at full speed and rests only on the goal: a hand
standing 3-5 cm beside the cube is a picture it never showed, and a policy that got there
stood still (evaluation: failures ended 4.3-6.8 cm from the cube, the 4 cm success radius
just missed).
"""

from __future__ import annotations

import math

import numpy as np

from crane_x7_vla import robot

#: The fingertips this far (m) beside and above a cube's centre.
NEAR_OFFSET = 0.06
NEAR_HEIGHT = (0.01, 0.10)
#: Recovery starts: the fingertips at least this far (m) from the named cube's centre, so that
#: the episode does not start solved (reach succeeds within 4 cm).
START_MIN_DISTANCE = 0.05


def pose_hand_near_cube(env, ik, rng: np.random.Generator) -> int:
    """Put the fingertips, pointing down, up to NEAR_OFFSET beside and NEAR_HEIGHT above the
    named cube (half of the time) or another one; returns that cube's index."""
    others = [i for i in range(len(env.layout.cube_colours)) if i != env.layout.target_cube]
    index = env.layout.target_cube if not others or rng.random() < 0.5 else int(rng.choice(others))
    cube = env.cube_position(index)
    offset = rng.uniform(-NEAR_OFFSET, NEAR_OFFSET, 2)
    point = np.array([cube[0] + offset[0], cube[1] + offset[1], cube[2] + rng.uniform(*NEAR_HEIGHT)])
    bearing = math.atan2(point[1], point[0])
    seed = env.joint_positions()[: robot.NUM_ARM_JOINTS].copy()
    seed[0] = bearing
    env.pose_arm(ik.solve(point, bearing + math.pi, seed, robot.GRIPPER_OPEN).q)
    return index


def recovery_start(seed: int, share: float) -> np.random.Generator | None:
    """Whether the reset with this seed starts near a cube, drawn from the seed alone (the same
    seeds start near in every run with the same share): None at home, else the generator that
    then poses the hand (start_hand_near_cube)."""
    if share <= 0:
        return None
    rng = np.random.default_rng([seed, 11])
    return rng if rng.random() < share else None


def start_hand_near_cube(env, ik, rng: np.random.Generator, tries: int = 30) -> bool:
    """After env.reset: pose the arm as pose_hand_near_cube does, redrawing until nothing of the
    arm touches the table or a cube and the fingertips are at least START_MIN_DISTANCE from the
    named cube. Returns False (the arm back at its start pose) if no draw was clear."""
    home = env.joint_positions()[: robot.NUM_ARM_JOINTS].copy()
    for _ in range(tries):
        pose_hand_near_cube(env, ik, rng)
        if not env.arm_touches_scene() and env.distance_to_goal() >= START_MIN_DISTANCE:
            return True
    env.pose_arm(home)
    return False
