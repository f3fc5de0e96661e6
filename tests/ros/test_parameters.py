"""A node given a parameter it cannot use, by `--ros-args -p` or a YAML parameter file,
stops at once with one line naming the parameter, the value and the type it needs (exit
code 2); a number written either way is taken; a misspelt name is refused, not ignored."""

from __future__ import annotations

import subprocess

import pytest

from crane_x7_vla.ros.processes import domain_lease, node_command, ros_env


def _run(executable: str, *ros_args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    command = [*node_command(executable), "--ros-args", *ros_args]
    with domain_lease() as domain:
        try:
            return subprocess.run(command, env=ros_env(domain), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            text = [(v or b"").decode(errors="replace") if isinstance(v, bytes) else (v or "")
                    for v in (exc.stdout, exc.stderr)]
            return subprocess.CompletedProcess(command, None, *text)


def _one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.mark.parametrize("given, words", [
    ("rate:=fast", "parameter 'rate' of data_logger is 'fast', but it must be a number"),
    ("rate:=true", "parameter 'rate' of data_logger is True, but it must be a number"),
    ("jpeg_quality:=90.5", "parameter 'jpeg_quality' of data_logger is 90.5, but it must be a whole number"),
    ("camera_names:=primary", "parameter 'camera_names' of data_logger is 'primary', but it must be a list of text"),
    ("ouput_dir:=/tmp/x", "data_logger has no parameter 'ouput_dir' (did you mean 'output_dir'?)"),
])
def test_wrong_parameter_on_the_command_line(tmp_path, given, words):
    line = _one_error_line(_run("data_logger", "-p", f"output_dir:={tmp_path}", "-p", "keyboard:=false",
                                "-p", given))
    assert line.startswith("error: ") and words in line, line


def test_wrong_boolean():
    line = _one_error_line(_run("teleop_relay", "-p", "use_gripper:=3"))
    assert "parameter 'use_gripper' of teleop_relay is 3, but it must be true or false" in line, line


def test_wrong_parameter_in_a_yaml_file(tmp_path):
    params = tmp_path / "relay.yaml"
    params.write_text("teleop_relay:\n  ros__parameters:\n    rate: thirty\n    max_velocity: 1.5\n")
    line = _one_error_line(_run("teleop_relay", "--params-file", str(params)))
    assert "parameter 'rate' of teleop_relay is 'thirty', but it must be a number" in line, line


def test_numbers_are_taken_whole_or_decimal(tmp_path):
    # The node starts (runs until the timeout ends it) and logs the values it took.
    result = _run("data_logger", "-p", f"output_dir:={tmp_path}", "-p", "keyboard:=false", "-p", "rate:=5",
                  "-p", "jpeg_quality:=80.0", timeout=8.0)
    assert result.returncode is None, (result.returncode, result.stderr)
    assert "logger ready: 5 Hz" in result.stdout + result.stderr
