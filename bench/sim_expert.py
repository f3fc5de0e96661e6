"""Scripted expert success rate in the simulator, per task, over N seeds.

    .venv/bin/python bench/sim_expert.py [--seeds 20] [--control-hz 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


from crane_x7_vla.sim import TASKS, ScriptedExpert, SimEnv, rollout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--control-hz", type=float, default=50.0)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    results = {}
    for task in args.tasks:
        env = SimEnv(task, seed=args.first_seed)
        outcomes, durations, retries = [], [], []
        start = time.perf_counter()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            env.reset(seed)
            expert = ScriptedExpert(env, rng=np.random.default_rng(seed))
            ok = rollout(env, expert, control_hz=args.control_hz, timeout=30.0)
            outcomes.append(bool(ok))
            durations.append(env.time)
            retries.append(expert.retries)
            if not ok:
                print(f"  {task} seed {seed}: FAILED ({env.instruction})")
        wall = time.perf_counter() - start
        results[task] = {"seeds": args.seeds, "successes": int(sum(outcomes)),
                         "success_rate": sum(outcomes) / len(outcomes),
                         "mean_episode_s": float(np.mean(durations)), "max_episode_s": float(np.max(durations)),
                         "grasp_retries": int(sum(retries)), "wall_s": wall}
        r = results[task]
        print(f"{task:11}: {r['successes']}/{r['seeds']} solved ({100 * r['success_rate']:.0f}%), "
              f"episode {r['mean_episode_s']:.1f} s mean / {r['max_episode_s']:.1f} s max sim time, "
              f"{r['grasp_retries']} grasp retries, {wall:.1f} s wall")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"control_hz": args.control_hz, "tasks": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
