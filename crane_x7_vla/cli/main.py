"""`crane-x7-vla`: one command for every stage.

    crane-x7-vla demo          the loop on the embedded default
    crane-x7-vla collect ...   record demonstrations (simulated CRANE-X7: sim, expert, relay, logger)
    crane-x7-vla dataset ...   inspect, validate, compute statistics, convert episodes
    crane-x7-vla pretrain ...  pretrain a tiny preset's vision on simulated scenes
    crane-x7-vla train ...     fine-tune a policy (same as python -m crane_x7_vla.training.cli train)
    crane-x7-vla serve CKPT    serve a checkpoint over openpi's websocket protocol
    crane-x7-vla eval CKPT     closed-loop success on the simulated CRANE-X7, with baselines
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crane_x7_vla import __version__
from crane_x7_vla.cli.args import ArgumentParser
from crane_x7_vla.messages import one_line

# Each module exposes register(subparsers); the order is the order of `--help`.
COMMAND_MODULES = (
    "crane_x7_vla.cli.demo",
    "crane_x7_vla.cli.collect",
    "crane_x7_vla.cli.dataset",
    "crane_x7_vla.cli.pretrain",
    "crane_x7_vla.cli.train",
    "crane_x7_vla.cli.serve",
    "crane_x7_vla.cli.eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="crane-x7-vla",
        description="Collect, train and deploy Vision-Language-Action policies on the CRANE-X7.",
    )
    parser.add_argument("--version", action="version", version=f"crane_x7_vla {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def describe_os_error(exc: OSError) -> str:
    """'PATH: reason' for an error of the file system (a missing folder, a file where a folder
    is expected, no permission, a full disk)."""
    if exc.filename is None:
        return str(exc)
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return f"{where}: {exc.strerror or exc}"


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a user's mistake ends in one clear line, not a traceback.

    A wrong setting (ConfigError) exits with 2 like argparse's own errors; a dataset,
    record, checkpoint or file problem exits with 1."""
    from crane_x7_vla.episode.reader import DatasetError
    from crane_x7_vla.episode.tfrecord import RecordError
    from crane_x7_vla.checkpoint_contract import CheckpointError
    from crane_x7_vla.errors import ConfigError

    try:
        return int(args.func(args) or 0)
    except (DatasetError, RecordError, CheckpointError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        parser.exit(2, f"error: {one_line(exc)}\n")
    except OSError as exc:
        print(f"error: {one_line(describe_os_error(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    parser = build_parser()
    return run_command(parser, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
