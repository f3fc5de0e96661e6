"""`crane-x7-vla eval CHECKPOINT --task T --episodes K`: closed-loop success on the simulator.

Runs the checkpoint through the real inference node against the simulated CRANE-X7
(separate processes over DDS, a private ROS_DOMAIN_ID), on held-out seeds, and the same
seeds with two baselines so the number means something: `hold` (the arm stays where it
starts) and `mean` (replays the mean demonstrated trajectory of the training episodes).

The simulator runs on its own clock in lockstep with the inference node: it advances a
control tick only once the node has published the command for that tick, and the node calls
the policy at simulated instants on the frames of those instants. The outcome of each seed
therefore does not depend on how busy the machine is (only how long it takes); episode
times and the time limit are simulated seconds. The summary gives the rates the node
achieved in simulated and in wall-clock time, and how often a lockstep wait ran out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crane_x7_vla.cli.args import folder, non_negative_int, positive_float, positive_int, sim_task
from crane_x7_vla.evaluation.closed_loop import HELD_OUT_FIRST_SEED, EvaluationError, evaluate
from crane_x7_vla.evaluation.summary import format_achieved_rates, format_grasp_rate, format_rate
from crane_x7_vla.policy.devices import ACCEPTED, device_arg


def _run(args) -> int:
    out = Path(args.out or Path(args.checkpoint) / "eval")
    try:
        results = evaluate(
            Path(args.checkpoint),
            task=args.task,
            episodes=args.episodes,
            first_seed=args.first_seed,
            timeout=args.timeout,
            out_dir=out,
            data_root=args.data_root,
            baselines=not args.no_baselines,
            device=args.device,
        )
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    policy = results["policy"]
    mean_s = policy["mean_time_to_success_s"]
    print(
        f"success rate {format_rate(policy)}; mean time to success "
        f"{mean_s if mean_s is None else round(mean_s, 2)} s; "
        f"safety interventions {policy['safety_interventions']}"
    )
    if policy.get("grasp_rate") is not None:
        print(f"grasped the named cube: {format_grasp_rate(policy)} (success counts the cube resting on its plate)")
    achieved = format_achieved_rates(policy)
    if achieved:
        print(f"achieved {achieved}; lockstep waits that ran out: {policy.get('lockstep_timeouts') or 0}")
    print(f"results: {out / 'evaluation.json'}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="closed-loop success rate on the simulated CRANE-X7, with baselines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=folder, help="checkpoint directory, e.g. outputs/run/checkpoint-final")
    p.add_argument("--task", type=sim_task, default="reach", help="simulated task (reach, pick_place; default reach)")
    p.add_argument("--episodes", type=positive_int, default=20, help="held-out seeds to run (default 20)")
    p.add_argument("--first-seed", type=non_negative_int, default=HELD_OUT_FIRST_SEED, help="first held-out seed")
    p.add_argument("--timeout", type=positive_float, default=15.0, help="simulated seconds per episode (default 15)")
    p.add_argument(
        "--device",
        type=device_arg,
        default="cpu",
        help=f"device for the policy in the inference node: {ACCEPTED} (default cpu)",
    )
    p.add_argument(
        "--data-root",
        type=folder,
        default=None,
        help="episodes for the mean-trajectory baseline (default: the checkpoint's training data)",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the hold-still and mean-trajectory baselines")
    p.add_argument("--out", type=folder, default=None, help="output folder (default CHECKPOINT/eval)")
    p.set_defaults(func=_run)
    return p
