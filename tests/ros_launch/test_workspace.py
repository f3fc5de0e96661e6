"""colcon builds the package in the README's and the Docker image's layout; the install has
everything `ros2 launch` / `ros2 run` need, and the README's robot-side commands work in a
shell that sourced the workspace."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import EXECUTABLES, LAUNCH_FILES, ROOT, requires_launch_stack, run

pytestmark = requires_launch_stack


def _check_install(workspace, *, symlinks: bool) -> None:
    prefix = workspace.package_prefix()
    share = prefix / "share" / "crane_x7_vla"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "crane_x7_vla").is_file()
    assert (share / "package.xml").read_text() == (ROOT / "package.xml").read_text()
    for name in LAUNCH_FILES:
        assert (share / "launch" / name).is_file(), f"launch/{name} is not installed"
    assert (share / "config" / "fastdds_large_data.xml").is_file()
    for exe in EXECUTABLES:
        path = prefix / "lib" / "crane_x7_vla" / exe
        assert path.is_file() and os.access(path, os.X_OK), f"lib/crane_x7_vla/{exe} is missing or not executable"
    tool = prefix / "bin" / "crane-x7-vla"
    assert tool.is_file() and os.access(tool, os.X_OK)
    assert (share / "launch" / "vla_inference.launch.py").is_symlink() == symlinks


def test_readme_layout_symlink_install(readme_workspace):
    _check_install(readme_workspace, symlinks=True)


def test_docker_layout_install(docker_workspace):
    _check_install(docker_workspace, symlinks=False)


def _shell(workspace, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=workspace.root, env=workspace.env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("layout", ["readme_workspace", "docker_workspace"])
def test_robot_side_commands_after_sourcing(layout, request):
    workspace = request.getfixturevalue(layout)
    where = _shell(workspace, "command -v crane-x7-vla")
    assert where.returncode == 0 and where.stdout.startswith(str(workspace.install)), where
    for command in ("crane-x7-vla --help", "crane-x7-vla logger-keys --help",
                    "ros2 run crane_x7_vla crane-x7-vla logger-keys --help"):
        result = _shell(workspace, command)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        assert "usage:" in result.stdout
    prefix = _shell(workspace, "ros2 pkg prefix crane_x7_vla")  # the Docker image's own check
    assert prefix.returncode == 0 and prefix.stdout.strip() == str(workspace.package_prefix()), prefix


@pytest.mark.parametrize("launch_file", LAUNCH_FILES)
def test_show_args(readme_workspace, launch_file):
    result = run(["ros2", "launch", "crane_x7_vla", launch_file, "--show-args"], cwd=readme_workspace.root,
                 env=readme_workspace.env, timeout=120)
    shown = set(re.findall(r"^    '(\w+)':", result.stdout, flags=re.M))
    expected = {
        "data_collection.launch.py": {"port_follower", "port_leader", "camera_serial", "output_dir", "instruction",
                                      "rate", "relay_rate", "max_velocity"},
        "sim_collection.launch.py": {"task", "seed", "output_dir", "rate", "start_near"},
        # sim_inference includes vla_inference: its arguments are shown as well.
        "sim_inference.launch.py": {"model_path", "camera_names", "camera_topics", "control_rate", "use_sim", "task"},
        "vla_inference.launch.py": {"model_path", "policy_server", "instruction", "control_rate", "use_sim"},
    }[launch_file]
    assert expected <= shown, f"{launch_file} --show-args lacks {sorted(expected - shown)}:\n{result.stdout}"
    assert "[float]" in result.stdout  # the numeric arguments say their type
