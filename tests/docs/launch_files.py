"""The argument names a launch file of this package takes, read from its ARGUMENTS table
(and from the tables of the package's launch files it includes). A quick check of commands
in the docs and in compose; tests/ros_launch runs the files under the real `ros2 launch`."""

from __future__ import annotations

import ast
from pathlib import Path

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"


def launch_arguments(name: str) -> set[str]:
    path = LAUNCH_DIR / name
    assert path.is_file(), f"no launch file launch/{name}"
    tree = ast.parse(path.read_text())
    names = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            names = {ast.literal_eval(key) for key in node.value.keys}
    if names is None:
        raise AssertionError(f"{path}: no ARGUMENTS table")
    included = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and n.value.endswith(".launch.py") and n.value != name and (LAUNCH_DIR / n.value).is_file()}
    for other in included:
        names |= launch_arguments(other)
    return names
