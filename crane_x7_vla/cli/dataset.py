"""`crane-x7-vla dataset ...`: info, validate, stats, recover, import-legacy, view, sample, and the
conversions export (RLDS, LeRobot) and import-bag (ROS 2 bags)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from crane_x7_vla import robot
from crane_x7_vla.cli.args import (
    ArgumentParser,
    file_name,
    folder,
    int_between,
    non_negative_int,
    positive_float,
    positive_int,
)
from crane_x7_vla.episode import reader, schema


def _info(args) -> int:
    refs = reader.require_episodes(args.dir)
    steps = 0
    fps = Counter()
    instructions = Counter()
    cameras: dict[str, str] = {}
    successes = Counter()
    for ref in refs:
        if ref.meta is not None:
            n = ref.meta.num_steps
            fps[ref.meta.fps] += 1
            instructions[ref.meta.language_instruction] += 1
            for cam, info in ref.meta.cameras.items():
                cameras[cam] = f"{info.width}x{info.height}"
            successes[str(ref.meta.success)] += 1
        else:  # the earlier stack's episodes carry no metadata: read them
            ep = reader.load_episode(ref.path, images=True)
            n = len(ep)
            instructions[ep.instruction] += 1
            from crane_x7_vla.episode import jpeg

            for cam, frames in ep.images.items():
                w, h = jpeg.size_of(frames[0])
                cameras[cam] = f"{w}x{h}"
            successes["unknown (legacy)"] += 1
        steps += n
    partial = reader.list_partial(args.dir) if not (Path(args.dir) / schema.RECORD_FILE).exists() else []
    summary = {
        "dir": str(Path(args.dir).resolve()),
        "episodes": len(refs),
        "steps": steps,
        "fps": {str(k): v for k, v in fps.items()},
        "instructions": dict(instructions),
        "cameras": cameras,
        "success": dict(successes),
        "partial_episodes": len(partial),
        "statistics_file": (Path(args.dir) / schema.STATS_FILE).exists(),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['dir']}: {len(refs)} episodes, {steps} steps")
    print(f"  fps: {', '.join(f'{k} ({v} ep)' for k, v in summary['fps'].items()) or 'unknown (legacy files)'}")
    print(f"  cameras: {', '.join(f'{k} {v}' for k, v in cameras.items())}")
    print(f"  success flags: {dict(successes)}")
    print("  instructions:")
    for text, count in instructions.most_common():
        print(f'    {count:4d} x "{text}"')
    if partial:
        print(f"  {len(partial)} unfinished episode(s): `crane-x7-vla dataset recover {args.dir}`")
    if not summary["statistics_file"]:
        print(f"  no {schema.STATS_FILE}: `crane-x7-vla dataset stats {args.dir}` before training")
    return 0


def _validate(args) -> int:
    from crane_x7_vla.episode.validate import validate_dataset

    count, problems = validate_dataset(args.dir)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s) in {count} episode(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: {count} episode(s) valid")
    return 0


def _stats(args) -> int:
    from crane_x7_vla.episode.stats import write_statistics

    path, stats = write_statistics(args.dir)
    print(
        f"wrote {path}: {stats['num_episodes']} episodes, {stats['num_transitions']} steps, "
        f"fingerprint {stats['fingerprint']}"
    )
    return 0


def _recover(args) -> int:
    from crane_x7_vla.episode.writer import recover_partial

    partial = reader.list_partial(args.dir)
    if not partial:
        print(f"{args.dir}: no unfinished episodes")
        return 0
    status = 0
    for path in partial:
        try:
            final = recover_partial(path)
            print(f"recovered {final}")
        except ValueError as exc:
            print(f"ERROR {exc}", file=sys.stderr)
            status = 1
        except OSError as exc:
            print(f"ERROR {path}: {exc.strerror or exc} ({exc.filename})", file=sys.stderr)
            status = 1
    return status


def _import_legacy(args) -> int:
    from crane_x7_vla.episode.legacy import import_legacy

    written = import_legacy(args.src, args.dst, swap_rb=args.swap_rb, fps=args.fps, instruction=args.instruction)
    fix = " (red/blue fixed)" if args.swap_rb else ""
    print(f"imported {len(written)} episode(s) into {args.dst}{fix}")
    return 0


VIEW_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _view(args) -> int:
    from crane_x7_vla.episode.view import plot_episode

    if Path(args.out).suffix.lower() not in VIEW_FORMATS:
        print(f"error: --out {args.out}: write a picture file ({', '.join(VIEW_FORMATS)})", file=sys.stderr)
        return 2
    refs = reader.require_episodes(args.dir)
    if not 0 <= args.episode < len(refs):
        print(f"ERROR --episode {args.episode}: {args.dir} holds episodes 0..{len(refs) - 1}", file=sys.stderr)
        return 2
    ep = reader.load_episode(refs[args.episode].path)
    out = plot_episode(ep, args.out, frames=args.frames)
    print(f"wrote {out}")
    return 0


def _sample(args) -> int:
    from crane_x7_vla.episode.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(args.out, episodes=args.episodes, steps=args.steps, seed=args.seed)
    print(f"wrote {len(paths)} synthetic episode(s) to {args.out}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("dataset", help="inspect, check and convert recorded episodes")
    sub = parser.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="episodes, steps, fps, instructions, cameras")
    p.add_argument("dir", type=folder)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info)

    p = sub.add_parser("validate", help="check every record; exit 1 naming file and record on a problem")
    p.add_argument("dir", type=folder)
    p.set_defaults(func=_validate)

    p = sub.add_parser("stats", help=f"write {schema.STATS_FILE} (with a fingerprint of the episodes)")
    p.add_argument("dir", type=folder)
    p.set_defaults(func=_stats)

    p = sub.add_parser("recover", help="keep the complete steps of unfinished (.partial) episodes")
    p.add_argument("dir", type=folder)
    p.set_defaults(func=_recover)

    p = sub.add_parser("import-legacy", help="convert the earlier stack's episode_*/episode_data.tfrecord")
    p.add_argument("src", type=folder, help="folder of the earlier stack's episode_* folders")
    p.add_argument("dst", type=folder, help="folder to write the converted episodes into (not inside src)")
    p.add_argument("--swap-rb", action="store_true", help="fix the earlier stack's red/blue swap")
    p.add_argument("--fps", type=positive_float, default=10.0, help="recording rate of the source (default 10)")
    p.add_argument("--instruction", default=None, help="instruction for episodes that have none")
    p.set_defaults(func=_import_legacy)

    p = sub.add_parser("view", help="a PNG of an episode: frames along time + joint curves")
    p.add_argument("dir", type=folder)
    p.add_argument("--episode", type=non_negative_int, default=0, help="episode index in sorted order (default 0)")
    p.add_argument("--out", type=file_name, required=True, help="output PNG path")
    p.add_argument("--frames", type=positive_int, default=8, help="frames per camera (default 8)")
    p.set_defaults(func=_view)

    p = sub.add_parser("sample", help="write synthetic episodes (for trying the tools)")
    p.add_argument("out", type=folder)
    p.add_argument("--episodes", type=positive_int, default=4, help="episodes to write (default 4)")
    p.add_argument("--steps", type=positive_int, default=20, help="steps per episode (default 20)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the motions (default 0)")
    p.set_defaults(func=_sample)

    register_conversions(sub)  # export (RLDS, LeRobot), import-bag
    return parser


def _export(args) -> int:
    if args.format == "rlds":
        from crane_x7_vla.episode.rlds import export_rlds

        summary = export_rlds(
            args.dir,
            args.out,
            overwrite=args.overwrite,
            fps=args.fps,
            episodes_per_shard=args.episodes_per_shard,
            progress=not args.no_progress,
        )
    else:
        from crane_x7_vla.episode.lerobot import export_lerobot

        summary = export_lerobot(
            args.dir,
            args.out,
            overwrite=args.overwrite,
            fps=args.fps,
            vcodec=args.vcodec,
            crf=args.crf,
            gop=args.gop,
            progress=not args.no_progress,
        )
    if args.json:
        print(json.dumps(summary))
        return 0
    cams = ", ".join(f"{c} {s}" for c, s in summary["cameras"].items())
    print(
        f"wrote {summary['format']} dataset {summary['out']}: {summary['episodes']} episode(s), "
        f"{summary['steps']} steps, cameras {cams}"
    )
    if args.format == "rlds":
        print(
            f"  read it with tensorflow_datasets.builder('crane_x7', data_dir='{summary['out']}')"
            f".as_dataset(split='train') (the dataset: {summary['dataset']})"
        )
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


def register_conversions(subparsers) -> None:
    """Add `export` and `import-bag` to the subparsers of the `dataset` command group."""
    p = subparsers.add_parser("export", help="write episodes as an RLDS (TFDS) or LeRobot v3.0 dataset")
    p.add_argument("dir", type=folder, help="folder of episodes")
    p.add_argument("--format", required=True, choices=("rlds", "lerobot"))
    p.add_argument(
        "--out",
        type=folder,
        required=True,
        help="output folder (new or empty); written beside it first and moved into place when complete",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export at --out (a folder holding anything else is never replaced)",
    )
    p.add_argument("--fps", type=positive_float, default=None, help="recording rate, for episodes without metadata")
    p.add_argument(
        "--episodes-per-shard",
        type=positive_int,
        default=None,
        help="rlds: episodes per TFRecord shard (default: ~256 MB shards)",
    )
    p.add_argument(
        "--vcodec", choices=("av1", "h264"), default="av1", help="lerobot: video codec (default av1, as LeRobot)"
    )
    p.add_argument(
        "--crf",
        type=int_between(0, 63),
        default=30,
        help="lerobot: video quality, lower is better: 0..63 for av1, 0..51 for h264 (default 30)",
    )
    p.add_argument(
        "--gop", type=positive_int, default=2, help="lerobot: frames between key frames (default 2, fast seeking)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("import-bag", help="convert a ROS 2 bag (MCAP or sqlite3) into episodes")
    p.add_argument("bag", help="rosbag2 folder, or its .mcap / .db3 file")
    p.add_argument("--out", type=folder, required=True, help="episode folder to write into")
    p.add_argument("--instruction", required=True, help="language instruction of the recorded task")
    p.add_argument(
        "--joint-topic",
        default=robot.JOINT_STATES_TOPIC,
        help=f"sensor_msgs/JointState topic (default {robot.JOINT_STATES_TOPIC})",
    )
    p.add_argument(
        "--image-topic",
        action="append",
        metavar="NAME=TOPIC",
        help="camera name and Image/CompressedImage topic; repeat per camera "
        f"(default primary={robot.DEFAULT_IMAGE_TOPIC})",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="steps per second (default: one step per image of the first camera)",
    )
    p.add_argument(
        "--tolerance",
        type=positive_float,
        default=None,
        help="max seconds between a step and its joint state/images (default half a step)",
    )
    p.add_argument(
        "--split-gap",
        type=positive_float,
        default=1.0,
        help="start a new episode after a pause longer than this many seconds (default 1)",
    )
    p.add_argument("--max-steps", type=positive_int, default=None, help="start a new episode after this many steps")
    p.add_argument("--min-steps", type=positive_int, default=2, help="skip episodes shorter than this (default 2)")
    p.add_argument(
        "--time-source",
        choices=("header", "receive"),
        default="header",
        help="message header stamps (default) or bag receive times",
    )
    p.add_argument("--task", default="", help="task name stored in the episode metadata")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_import_bag)


def main_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with just `export` and `import-bag` (for scripts and tests)."""
    parser = ArgumentParser(prog="crane-x7-vla dataset")
    register_conversions(parser.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True))
    return parser
