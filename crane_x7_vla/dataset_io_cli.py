"""`crane-x7-vla dataset export` and `crane-x7-vla dataset import-bag`.

`register(subparsers)` takes the subparsers of the `dataset` command group.
"""

from __future__ import annotations

import argparse
import json

from crane_x7_vla import robot
from crane_x7_vla.cli_args import ArgumentParser, folder, int_between, positive_float, positive_int


def _export(args) -> int:
    if args.format == "rlds":
        from crane_x7_vla.episode.rlds import export_rlds

        summary = export_rlds(
            args.dir, args.out, overwrite=args.overwrite, fps=args.fps, episodes_per_shard=args.episodes_per_shard,
            progress=not args.no_progress,
        )
    else:
        from crane_x7_vla.episode.lerobot import export_lerobot

        summary = export_lerobot(
            args.dir, args.out, overwrite=args.overwrite, fps=args.fps, vcodec=args.vcodec, crf=args.crf,
            gop=args.gop, progress=not args.no_progress,
        )
    if args.json:
        print(json.dumps(summary))
        return 0
    cams = ", ".join(f"{c} {s}" for c, s in summary["cameras"].items())
    print(f"wrote {summary['format']} dataset {summary['out']}: {summary['episodes']} episode(s), {summary['steps']} steps, cameras {cams}")
    if args.format == "rlds":
        print(f"  read it with tensorflow_datasets.builder('crane_x7', data_dir='{summary['out']}')"
              f".as_dataset(split='train') (the dataset: {summary['dataset']})")
        print(f"  statistics: {summary['statistics']} (fingerprint {summary['fingerprint']})")
    else:
        print(f"  {summary['tasks']} task(s), {summary['fps']} fps, video codec {summary['video_codec']}")
    return 0


def _import_bag(args) -> int:
    from crane_x7_vla.episode.bag import BagImportOptions, import_bag, parse_image_topic

    topics = dict(parse_image_topic(t) for t in (args.image_topic or [f"primary={robot.DEFAULT_IMAGE_TOPIC}"]))
    options = BagImportOptions(
        instruction=args.instruction,
        joint_topic=args.joint_topic,
        image_topics=topics,
        rate=args.rate,
        tolerance=args.tolerance,
        split_gap=args.split_gap,
        max_steps=args.max_steps,
        min_steps=args.min_steps,
        time_source=args.time_source,
        task=args.task,
    )
    summary = import_bag(args.bag, args.out, options, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    if summary.get("already_imported"):
        print(
            f"{args.bag} is already imported into {args.out} ({len(summary['already_imported'])} episode(s)); "
            "nothing written (to import it again with other settings, choose another --out)"
        )
        return 0
    print(
        f"imported {args.bag} into {args.out}: {len(summary['episodes'])} episode(s), {summary['steps']} steps "
        f"at {summary['fps']:g} Hz"
    )
    print(
        f"  {summary['joint_states']} joint states, images {summary['images']}; "
        f"{summary['dropped_ticks']} tick(s) without a joint state or image within {summary['tolerance_ms']:.1f} ms, "
        f"{summary['skipped_short_episodes']} too-short episode(s) skipped"
    )
    for path in summary["episodes"]:
        print(f"  {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write episodes as an RLDS (TFDS) or LeRobot v3.0 dataset")
    p.add_argument("dir", type=folder, help="folder of episodes")
    p.add_argument("--format", required=True, choices=("rlds", "lerobot"))
    p.add_argument("--out", type=folder, required=True,
                   help="output folder (new or empty); written beside it first and moved into place when complete")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at --out (a folder holding anything else is never replaced)")
    p.add_argument("--fps", type=positive_float, default=None, help="recording rate, for episodes without metadata")
    p.add_argument("--episodes-per-shard", type=positive_int, default=None,
                   help="rlds: episodes per TFRecord shard (default: ~256 MB shards)")
    p.add_argument("--vcodec", choices=("av1", "h264"), default="av1", help="lerobot: video codec (default av1, as LeRobot)")
    p.add_argument("--crf", type=int_between(0, 63), default=30,
                   help="lerobot: video quality, lower is better: 0..63 for av1, 0..51 for h264 (default 30)")
    p.add_argument("--gop", type=positive_int, default=2, help="lerobot: frames between key frames (default 2, fast seeking)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("import-bag", help="convert a ROS 2 bag (MCAP or sqlite3) into episodes")
    p.add_argument("bag", help="rosbag2 folder, or its .mcap / .db3 file")
    p.add_argument("--out", type=folder, required=True, help="episode folder to write into")
    p.add_argument("--instruction", required=True, help="language instruction of the recorded task")
    p.add_argument("--joint-topic", default=robot.JOINT_STATES_TOPIC, help=f"sensor_msgs/JointState topic (default {robot.JOINT_STATES_TOPIC})")
    p.add_argument(
        "--image-topic", action="append", metavar="NAME=TOPIC",
        help=f"camera name and Image/CompressedImage topic; repeat per camera (default primary={robot.DEFAULT_IMAGE_TOPIC})",
    )
    p.add_argument("--rate", type=positive_float, default=None,
                   help="steps per second (default: one step per image of the first camera)")
    p.add_argument("--tolerance", type=positive_float, default=None,
                   help="max seconds between a step and its joint state/images (default half a step)")
    p.add_argument("--split-gap", type=positive_float, default=1.0,
                   help="start a new episode after a pause longer than this many seconds (default 1)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="start a new episode after this many steps")
    p.add_argument("--min-steps", type=positive_int, default=2, help="skip episodes shorter than this (default 2)")
    p.add_argument("--time-source", choices=("header", "receive"), default="header", help="message header stamps (default) or bag receive times")
    p.add_argument("--task", default="", help="task name stored in the episode metadata")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_import_bag)


def main_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with just these two commands (for scripts and tests)."""
    parser = ArgumentParser(prog="crane-x7-vla dataset")
    register(parser.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True))
    return parser
