"""What every command shares for its arguments: value types that refuse nonsense in one line
and a parser whose error line stays short (`clip` and `one_line`, for any message, are in
crane_x7_vla.messages).

An argparse type raises ArgumentTypeError; argparse then prints the usage and
``<prog>: error: argument --frames: must be at least 1 (got 0)`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from crane_x7_vla.messages import WORD_CHARS, clip, one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its error line kept to one clipped line (a value typed by the
    user can be any length); sub-command parsers made by add_subparsers are of this class too."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _number(text: str, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {clip(text)!r}") from None
    if kind is float and (value != value or value in (float("inf"), float("-inf"))):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {clip(text)!r}")
    return value


def int_at_least(least: int):
    """A whole number >= `least`."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least} (got {value})")
        return value

    parse.__name__ = f"whole number >= {least}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def int_between(low: int, high: int):
    """A whole number in [low, high]."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high} (got {value})")
        return value

    parse.__name__ = f"whole number {low}..{high}"
    return parse


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0 (got {clip(text)})")
    return value


def float_in(low: float, high: float, *, low_open: bool = False):
    """A number in [low, high], or (low, high] with low_open."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if not (low < value if low_open else low <= value) or not value <= high:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low:g}, {high:g}] (got {clip(text)})")
        return value

    parse.__name__ = f"number in {low:g}..{high:g}"
    return parse


def share(text: str) -> float:
    """A share of a whole: a number 0..1."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"is a share, 0..1 (got {clip(text)})")
    return value


def folder(text: str) -> str:
    """A folder: one that exists, or a new one (the command says when it must exist); never
    an existing file, nor a path below one."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{clip(text, WORD_CHARS)} is a file; a folder is expected here")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{clip(text, WORD_CHARS)}: {parent} is a file, so it holds no folders"
                )
            break
    return text


def file_name(text: str) -> str:
    """A file to write: new or replaced; never an existing folder."""
    path = Path(text)
    if not text or text.endswith(("/", "\\")):
        raise argparse.ArgumentTypeError(f"{clip(text, WORD_CHARS)!r} names no file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{clip(text, WORD_CHARS)} is a folder; a file name is expected here")
    return text


def existing_file(text: str) -> str:
    """A file to read: it must exist and be a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{clip(text, WORD_CHARS)} is a folder; a file is expected here")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{clip(text, WORD_CHARS)} not found")
    return text


def image_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT, both at least 1."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {clip(text)!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be at least 1 (got {clip(text)})")
    return w, h


def sim_task(text: str) -> str:
    """The name of a simulated task."""
    from crane_x7_vla.sim.tasks import TASKS

    if text not in TASKS:
        raise argparse.ArgumentTypeError(
            f"{clip(text)!r} is not a simulated task; choose from {', '.join(sorted(TASKS))}"
        )
    return text


def camera_list(known):
    """Comma-separated camera names, each one of `known`, at least one."""

    def parse(text: str) -> str:
        names = [c.strip() for c in text.split(",") if c.strip()]
        unknown = [c for c in names if c not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{clip(text)!r}: cameras are chosen from {', '.join(sorted(known))}, comma-separated"
            )
        return ",".join(names)

    parse.__name__ = "camera list"
    return parse


_NODE_NAME = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def ros_node_name(text: str) -> str:
    """A ROS node name such as /data_logger or /robot/data_logger."""
    if not _NODE_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{clip(text)!r} is not a ROS node name (letters, digits and _, parts separated by /)"
        )
    return text
