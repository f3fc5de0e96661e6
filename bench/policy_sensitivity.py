"""Does a trained policy look at the picture, or only at the joint state?

    .venv/bin/python bench/policy_sensitivity.py CHECKPOINT [--task reach] [--seeds 10] [--json out.json]

Takes the start of N held-out episodes of the simulated task (seeds from 100000, as
`crane-x7-vla eval`): the scene camera's picture and the start state (the home pose plus the
start jitter of a few hundredths of a radian). Asks the policy for an action chunk for every
pairing of picture i with state j, and takes the displacement the chunk asks for (its last
arm target minus the state). Prints, per arm joint:

* across pictures, state fixed: how much the answer changes when the cubes lie elsewhere
  (a policy that reaches the named cube must change it);
* across states, picture fixed: how much it changes with the start jitter alone (it should
  hardly change);

and the correlation between the base joint's predicted turn and the bearing of the named
cube seen from the base (near 1 when the policy turns towards it). A policy whose answer
follows the state rather than the picture has learned a shortcut from the demonstrations
(every episode starts from its own jittered pose, so the pose tells which episode, and
with it where the cube was) and goes to the same place whatever the scene.
Needs a trained checkpoint; not part of bench/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np


from crane_x7_vla import robot
from crane_x7_vla.policy.loader import load_policy
from crane_x7_vla.sim import SimEnv

ARM = robot.NUM_ARM_JOINTS


def starts(task: str, first_seed: int, n: int, cameras):
    """Pictures, start states, instructions and target bearings of n held-out episode starts."""
    env = SimEnv(task=task, seed=first_seed, cameras=tuple(cameras))
    out = []
    try:
        for seed in range(first_seed, first_seed + n):
            env.reset(seed)
            cube = env.cube_position(env.layout.target_cube)
            out.append(
                {
                    "images": {c: env.render(c) for c in cameras},
                    "state": env.joint_positions(),
                    "instruction": env.instruction,
                    "bearing": math.atan2(cube[1], cube[0]),
                }
            )
    finally:
        env.close()
    return out


def displacement_grid(policy, scenes) -> np.ndarray:
    """(pictures, states, ARM): last arm target of the predicted chunk minus the state."""
    n = len(scenes)
    grid = np.zeros((n, n, ARM))
    for i, pic in enumerate(scenes):
        for j, st in enumerate(scenes):
            obs = {"images": pic["images"], "state": st["state"], "instruction": pic["instruction"]}
            chunk = np.asarray(policy.predict(obs), dtype=np.float64)
            chunk = chunk.reshape(-1, chunk.shape[-1])
            grid[i, j] = chunk[-1, :ARM] - np.asarray(st["state"][:ARM], dtype=np.float64)
    return grid


def figures_of(grid: np.ndarray, bearings: np.ndarray) -> dict:
    across_pictures = grid.std(axis=0).mean(axis=0)  # spread over pictures, mean over states
    across_states = grid.std(axis=1).mean(axis=0)
    turn = grid[:, :, 0].mean(axis=1)  # base joint, per picture
    corr = float(np.corrcoef(turn, bearings)[0, 1]) if turn.std() > 0 and bearings.std() > 0 else 0.0
    return {
        "spread_across_pictures_rad": [round(float(v), 4) for v in across_pictures],
        "spread_across_states_rad": [round(float(v), 4) for v in across_states],
        # None: the answer does not depend on the state at all (no state in the model's input)
        "picture_to_state_ratio": (
            round(float(across_pictures.sum() / across_states.sum()), 3) if across_states.sum() > 1e-6 else None
        ),
        "base_turn_vs_target_bearing_correlation": round(corr, 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (checkpoint-final)")
    p.add_argument("--task", default="reach", help="simulated task (default reach)")
    p.add_argument("--seeds", type=int, default=10, help="held-out episode starts (default 10; N*N predictions)")
    p.add_argument("--first-seed", type=int, default=100000, help="first held-out seed (default 100000)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error(f"--seeds must be >= 2 to measure a spread (got {args.seeds})")
    t0 = time.monotonic()
    policy = load_policy(args.checkpoint)
    cameras = list(policy.config.get("cameras") or ["primary"])
    scenes = starts(args.task, args.first_seed, args.seeds, cameras)
    grid = displacement_grid(policy, scenes)
    figures = {
        "checkpoint": str(args.checkpoint),
        "task": args.task,
        "seeds": args.seeds,
        **figures_of(grid, np.array([s["bearing"] for s in scenes])),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(f"{args.seeds} held-out starts of '{args.task}', {args.seeds**2} predictions")
    print("joint                      " + " ".join(f"{k + 1:>7d}" for k in range(ARM)))
    print("spread across pictures     " + " ".join(f"{v:7.4f}" for v in figures["spread_across_pictures_rad"]))
    print("spread across start states " + " ".join(f"{v:7.4f}" for v in figures["spread_across_states_rad"]))
    ratio = figures["picture_to_state_ratio"]
    print(
        "pictures / states: "
        + (
            "the state does not change the answer"
            if ratio is None
            else f"{ratio} (below 1: the answer follows the state more than the scene)"
        )
    )
    print(
        "base joint turn vs bearing of the named cube: correlation "
        f"{figures['base_turn_vs_target_bearing_correlation']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
