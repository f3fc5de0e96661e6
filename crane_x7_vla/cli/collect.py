"""`crane-x7-vla collect` and `crane-x7-vla logger-keys`.

    crane-x7-vla collect --sim --task reach --episodes 20 --out DIR [--seed 0 --rate 10
                         --cameras wrist,primary --camera-size 320x240 --timeout 40 --speed 1]

starts the simulated CRANE-X7 with its scripted expert, the teleop relay and the episode
logger as ROS 2 processes (own ROS_DOMAIN_ID), records the episodes, prints a summary
and stops every process it started (also on Ctrl-C). On the real robot use
`ros2 launch crane_x7_vla data_collection.launch.py` and `crane-x7-vla logger-keys`.
(The ROS code lives in crane_x7_vla.ros and is imported only when a command runs.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crane_x7_vla.cli.args import (
    ArgumentParser,
    camera_list,
    file_name,
    float_in,
    folder,
    image_size,
    int_between,
    non_negative_int,
    positive_float,
    positive_int,
    ros_node_name,
    share,
    sim_task,
)

SIM_CAMERAS = ("wrist", "primary")  # the simulated CRANE-X7's cameras (ros.collect_driver.CAMERA_TOPICS)
MAX_SPEED = 10.0  # simulated seconds per wall-clock second
MAX_DOMAIN_ID = 232  # the largest ROS_DOMAIN_ID ROS 2 can use on Linux


def add_collect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sim",
        action="store_true",
        required=True,
        help="collect in simulation (the real robot uses ros2 launch crane_x7_vla data_collection.launch.py)",
    )
    p.add_argument("--task", type=sim_task, default="reach", help="simulated task: reach or pick_place (default reach)")
    p.add_argument("--episodes", type=positive_int, default=20, help="episodes to record (default 20)")
    p.add_argument("--out", type=folder, required=True, help="directory the episodes are written into")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the first scene; episode i uses seed+i (default 0)"
    )
    p.add_argument("--rate", type=positive_float, default=10.0, help="steps recorded per second (default 10)")
    p.add_argument(
        "--cameras",
        type=camera_list(SIM_CAMERAS),
        default="wrist,primary",
        help="cameras to record, comma-separated: wrist (hand), primary (scene) (default both)",
    )
    p.add_argument("--camera-size", type=image_size, default=(320, 240), help="image size WxH (default 320x240)")
    p.add_argument(
        "--speed",
        type=float_in(0.0, MAX_SPEED, low_open=True),
        default=1.0,
        help="simulated seconds per wall-clock second at most: the simulator publishes /clock, the "
        "relay and logger run on it (use_sim_time) and the simulated time waits for the logger "
        "at every recorded step, so a busy machine slows the simulation down instead of "
        "thinning out the recording; above 1 episodes are recorded faster than real time with "
        "the same content (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=40.0,
        help="seconds before an unsolved episode is stopped (default 40)",
    )
    p.add_argument(
        "--start-near",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="share 0..1 of the episodes that start with the hand a few cm from a cube (the named one or "
        "another) instead of at home: recovery demonstrations, the expert going the last "
        "centimetres from where a policy may stop short (default 0)",
    )
    p.add_argument(
        "--domain-id",
        type=int_between(0, MAX_DOMAIN_ID),
        default=None,
        help="ROS_DOMAIN_ID of the run (default: a random free-looking one)",
    )
    p.add_argument("--log-dir", type=folder, default=None, help="node logs (default OUT/collect_logs)")
    p.add_argument("--json", type=file_name, default=None, help="also write the summary as JSON to this path")


def run_collect(args) -> int:
    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    from crane_x7_vla.ros.collect_driver import RATE_SHARE, collect_sim

    try:
        summary = collect_sim(
            args.out,
            task=args.task,
            episodes=args.episodes,
            seed=args.seed,
            rate=args.rate,
            cameras=cameras,
            camera_size=args.camera_size,
            timeout=args.timeout,
            speed=args.speed,
            start_near=args.start_near,
            domain_id=args.domain_id,
            log_dir=args.log_dir,
            echo=lambda line: print(line, flush=True),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every node was stopped; saved episodes are complete", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    eps = summary.episodes
    steps = sum(e.steps for e in eps)
    mismatched = [e.index for e in eps if e.success_stored is not None and e.success_stored != e.success_check]
    near = sum(e.start == "near cube" for e in eps)
    print(
        f"\n{len(eps)} episodes, {summary.successes} successful (task check), {steps} steps, saved in {summary.out}"
        + (f"; {near} started near a cube" if near else "")
    )
    rates = [e.achieved_hz for e in eps if e.achieved_hz]
    if rates:
        print(
            f"recording rate {min(rates):.2f}..{max(rates):.2f} Hz (requested {args.rate:g}), "
            f"{sum(e.dropped_steps for e in eps)} dropped steps"
        )
    if summary.recollected:
        seeds = ", ".join(str(r["seed"]) for r in summary.recollected)
        print(
            f"{len(summary.recollected)} recording(s) below {RATE_SHARE:.0%} of {args.rate:g} Hz were deleted and "
            f"recorded again (seeds {seeds})"
        )
    if mismatched:
        print(f"warning: stored success flag differs from the final check in episodes {mismatched}")
    slow = slow_episodes(eps, args.rate)
    if slow:
        names = ", ".join(Path(e.path).name if e.path else f"#{e.index}" for e in slow[:10])
        print(
            f"warning: {len(slow)} episode(s) recorded below {SLOW_SHARE:.0%} of {args.rate:g} Hz ({names}"
            f"{', ...' if len(slow) > 10 else ''}): the machine did not keep up (another heavy program, or "
            f"--speed {args.speed:g} too fast for it); their steps are far apart and jerky to learn from, "
            "so delete them (crane-x7-vla dataset stats again after) or collect again"
        )
    if summary.problems:
        print(f"validation found {len(summary.problems)} problem(s):")
        for line in summary.problems[:20]:
            print(f"  {line}")
    else:
        print(f"validation: {summary.checked} episode(s) valid")
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=2))
    return 1 if summary.problems else 0


SLOW_SHARE = 0.8  # of the requested recording rate


def slow_episodes(episodes, rate: float) -> list:
    """Episodes whose logger recorded below SLOW_SHARE of the requested rate (the ticks are on the
    simulator's clock, so a busy machine shows up here, not as a slower-looking episode)."""
    return [e for e in episodes if e.achieved_hz is not None and e.achieved_hz < SLOW_SHARE * rate]


def run_logger_keys(args) -> int:
    from crane_x7_vla.ros.logger_keys import run

    return run(args.logger)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "collect",
        help="record episodes in simulation (simulator, expert, relay, logger)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_collect_arguments(p)
    p.set_defaults(func=run_collect)
    k = subparsers.add_parser("logger-keys", help="keyboard control of a running data_logger (s/e/d/q)")
    k.add_argument(
        "--logger", type=ros_node_name, default="/data_logger", help="the logger node's name (default /data_logger)"
    )
    k.set_defaults(func=run_logger_keys)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="crane-x7-vla")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
