"""`crane-x7-vla dataset ...`: info, validate, stats, recover, import-legacy, view, sample."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from crane_x7_vla.cli_args import file_name, folder, non_negative_int, positive_float, positive_int
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
        print(f"    {count:4d} x \"{text}\"")
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

    from crane_x7_vla import dataset_io_cli

    dataset_io_cli.register(sub)  # export (RLDS, LeRobot), import-bag
    return parser
