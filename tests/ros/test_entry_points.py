"""The nodes' console scripts end quietly on Ctrl-C or SIGTERM while still loading their modules."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crane_x7_vla.ros import entry

BIN = Path(sys.executable).parent

SLOW_MODULE = '''
import sys, time
print("loading", flush=True)
time.sleep(60)  # a node's heavy imports (numpy, MuJoCo, rclpy), long enough to be interrupted in


def main():
    return 0
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_a_node_loads_ends_it_without_a_traceback(sig, tmp_path):
    (tmp_path / "slow_node.py").write_text(SLOW_MODULE)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from crane_x7_vla.ros.entry import entry; "
                               "sys.exit(entry('slow_node')())"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.readline().strip() == "loading"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, (proc.returncode, out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_every_node_console_script_goes_through_the_quiet_entry():
    nodes = ("crane_x7_sim", "scripted_expert", "teleop_relay", "data_logger", "vla_inference_node", "eval_runner")
    for name in nodes:
        script = BIN / name
        assert script.exists(), f"{script}: scripts/setup.sh installs the nodes' console scripts into .venv/bin"
        assert f"from crane_x7_vla.ros.entry import {name}" in script.read_text(), script
        assert callable(getattr(entry, name))
