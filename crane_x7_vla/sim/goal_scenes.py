"""Pictures of the simulated task labelled with where the hand has to go: training data for a
policy's goal tokens that needs no demonstration (`train --goal-scenes N`).

A pretrained OpenVLA has seen millions of pictures and can say where a named object is; a
preset built from a config cannot, and a few hundred demonstrations show it too few table
layouts to learn it. Rendering a layout costs a few milliseconds, so training can mix in
thousands of extra layouts whose only label is the goal point: the named cube's centre,
where a demonstration's first movement ends (`preprocess.goal_points`). Half of the pictures
show the arm in a random pose, hiding parts of the table as during a demonstration.

With `near` > 0 that share of the pictures shows the hand a few centimetres from one of the
cubes, the named one or another (posed by inverse kinematics). Near the end of every
demonstration the hand is where the goal is, so without these a model learned to read the
goal off the hand once the hand came close: a reach that arrived 4 cm beside the named cube
then "saw" its goal there and stopped (evaluation: the written goal followed the hand, and
the arm stood still 4-6 cm from the cube until the time ran out).

With `alone` > 0 that share of the pictures shows the named cube alone (the others are put
out of sight, below the floor). Finding *the named* cube among several is a two-step look-up
for a language model trained from scratch (fetch the colour from the instruction, then find
that colour among the picture's tokens), and neither step pays off without the other: some
runs learned it and others stayed at chance. With the cube alone, reading where *a* cube is
pays off at once; once the model reads cube positions, choosing among several by colour
is a small step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode import jpeg
from crane_x7_vla.episode.reader import EpisodeData
from crane_x7_vla.sim.poses import pose_hand_near_cube

#: Goal scenes start at this seed: far from the demonstrations (0..), the held-out
#: evaluation (100000..) and the pretraining scenes (500000..).
GOAL_SCENES_FIRST_SEED = 700_000


def reset_scene(env, seed: int, rng: np.random.Generator, arm_pose_noise: float = 0.6) -> None:
    """Draw scene `seed`; half of the time move the arm away from its start pose by up to
    `arm_pose_noise` rad per joint, so that it hides parts of the table as during a demonstration."""
    env.reset(seed)
    if rng.random() < 0.5:
        q = env.joint_positions()[: robot.NUM_ARM_JOINTS]
        env.pose_arm(q + rng.uniform(-arm_pose_noise, arm_pose_noise, robot.NUM_ARM_JOINTS))


#: Where `alone` scenes put the other cubes: under the floor, out of every camera's sight.
OUT_OF_SIGHT = (0.28, 0.0, -1.5)


def goal_scenes(task: str, n: int, cameras: list[str], *, camera_size: tuple[int, int] = (320, 240),
                seed: int = 0, arm_pose_noise: float = 0.6, jpeg_quality: int = 90,
                alone: float = 0.0, near: float = 0.0) -> list[EpisodeData]:
    """n one-step episodes of `task` with a picture per camera, the task's instruction, the
    arm's joint state and `goal` = the named cube's centre (m, arm base frame); in a share
    `alone` of them (every k-th scene) the named cube is the only one in sight, in a share
    `near` (drawn at random) the hand is close to one of the cubes."""
    for name, share in (("with the named cube alone", alone), ("with the hand near a cube", near)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the share of goal scenes {name} must be 0..1 (got {share})")
    from crane_x7_vla.sim import SimEnv
    from crane_x7_vla.sim.env import CAMERAS
    from crane_x7_vla.sim.ik import ArmIK

    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown:
        raise ValueError(f"--goal-scenes renders the simulator's cameras {list(CAMERAS)}; the training "
                         f"cameras {unknown} are not among them")
    rng = np.random.default_rng([seed, GOAL_SCENES_FIRST_SEED])
    env = SimEnv(task=task, seed=GOAL_SCENES_FIRST_SEED, camera_size=camera_size, cameras=tuple(cameras))
    ik = ArmIK(env.model)
    scenes = []
    try:
        for k in range(n):
            reset_scene(env, GOAL_SCENES_FIRST_SEED + k, rng, arm_pose_noise)
            if near and rng.random() < near:
                pose_hand_near_cube(env, ik, rng)
            if int((k + 1) * alone) > int(k * alone):  # spread evenly through the scenes
                for i in range(len(env.layout.cube_colours)):
                    if i != env.layout.target_cube:
                        env.place_cube(i, OUT_OF_SIGHT)
            state = env.joint_positions().astype(np.float32)[None]
            scenes.append(EpisodeData(
                path=Path(f"goal_scene_{GOAL_SCENES_FIRST_SEED + k}"), proprio=state, action=state.copy(),
                timestep=np.zeros(1, np.int64), timestamp_ns=None, instruction=env.instruction,
                images={c: [jpeg.encode(env.render(c), quality=jpeg_quality)] for c in cameras},
                goal=np.asarray(env.cube_position(env.layout.target_cube), np.float64)))
    finally:
        env.close()
    return scenes
