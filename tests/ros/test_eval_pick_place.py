"""`crane-x7-vla eval` on pick_place reports the grasp beside the placement: the simulator,
the inference node and the runner over DDS, with the scripted expert's recorded
demonstration of one scene replayed as the policy."""

from __future__ import annotations

import numpy as np

from crane_x7_vla.evaluation.closed_loop import run_closed_loop
from crane_x7_vla.evaluation.summary import summarize_episodes
from crane_x7_vla.policy.baselines import TRAJECTORY_FILE, MeanTrajectoryPolicy, baseline_config

SEED = 100_000


def replay_checkpoint(out, seed: int):
    """The expert's targets of one pick_place scene at 10 Hz, as a trajectory to replay."""
    from crane_x7_vla.sim import ScriptedExpert, SimEnv

    with SimEnv(task="pick_place", seed=seed, camera_size=(64, 48), cameras=("primary",)) as env:
        expert = ScriptedExpert(env, rng=np.random.default_rng([seed, 7]))
        targets = []
        while not expert.done and len(targets) < 250:
            target = expert.target()
            targets.append(target)
            env.set_arm_trajectory([(0.1, target[:7])])
            env.set_gripper(float(target[7]))
            env.step(0.1)
        assert env.success() and env.grasped, "the expert's own run must solve the scene"
    targets += [targets[-1]] * 10  # rest with the cube let go
    config = baseline_config("mean_trajectory", horizon=8, control_rate_hz=10.0, cameras=("primary",),
                             instruction="pick up the cube")
    config["baseline"]["file"] = TRAJECTORY_FILE
    return MeanTrajectoryPolicy(np.array(targets), config).save(out), len(targets) / 10.0


def test_grasp_and_placement_are_reported_per_seed(tmp_path):
    ckpt, seconds = replay_checkpoint(tmp_path / "replay", SEED)
    outcomes = run_closed_loop(ckpt, task="pick_place", episodes=2, first_seed=SEED, timeout=seconds + 2.0,
                               out_dir=tmp_path / "eval", frames=False)
    demonstrated, other = outcomes
    # the replayed scene: the cube was held off the table, then left resting on its plate
    assert demonstrated.grasped is True and demonstrated.success, demonstrated
    # the next scene has its cubes elsewhere: the replay closes the fingers on nothing
    assert other.grasped is False and not other.success, other
    summary = summarize_episodes(outcomes)
    assert (summary["grasps"], summary["successes"], summary["grasp_rate"]) == (1, 1, 0.5)
