"""A failing closed-loop evaluation ends in one line naming the node or service, never a
traceback: the evaluation runner alone in a domain where nothing answers, and `crane-x7-vla
eval` with a checkpoint whose policy cannot be loaded (real simulator, inference node and
runner processes)."""

from __future__ import annotations

import subprocess
import sys
import time

from crane_x7_vla.episode.synthetic import write_synthetic_dataset
from crane_x7_vla.policy.baselines import MeanTrajectoryPolicy
from crane_x7_vla.ros.processes import NodeGroup, ros_env


def test_runner_without_its_nodes_ends_with_one_line_naming_the_service(domain_id, tmp_path):
    group = NodeGroup(ros_env(domain_id), tmp_path / "logs")
    try:
        runner = group.start("eval_runner", {"episodes": 1, "service_timeout": 2.0,
                                             "results_path": str(tmp_path / "episodes.json")})
        deadline = time.monotonic() + 120
        while runner.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not runner.alive(), "the runner did not give up"
    finally:
        group.stop_all()
    assert runner.proc.returncode == 1
    log = runner.log_path.read_text()
    assert "Traceback" not in log, log
    assert runner.last_error() == (f"eval_runner: service /vla_inference_node/start did not appear within 2 s: "
                                   f"is its node running in ROS domain {domain_id}?"), log
    assert runner.exit_message().startswith("node eval_runner exited with code 1: eval_runner: service ")


def test_eval_of_a_policy_that_cannot_load_is_one_error_line(tmp_path):
    write_synthetic_dataset(tmp_path / "data", episodes=2, steps=20, fps=10.0)
    ckpt = MeanTrajectoryPolicy.from_dataset(tmp_path / "data", horizon=8).save(tmp_path / "mean")
    (ckpt / "mean_trajectory.npy").write_bytes(b"this is not a NumPy file")
    proc = subprocess.run(
        [sys.executable, "-m", "crane_x7_vla.cli", "eval", str(ckpt), "--episodes", "1", "--no-baselines",
         "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: eval_runner: /vla_inference_node could not load its policy: "), errors[0]
    assert str(tmp_path / "eval" / "policy" / "logs") in errors[0]
