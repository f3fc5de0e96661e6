"""The whole loop, shortened: collect in simulation → train → deploy → report.

Runs the README's main command with few episodes and steps, once per backend, and
checks that every stage produced its output (not the success figure: a 10-step model
is not expected to solve anything; the full demo measures that).
"""

import json
import subprocess
import sys

import pytest

from crane_x7_vla.cli.demo_settings import defaults_file, load_settings
from crane_x7_vla.episode.validate import validate_dataset
from crane_x7_vla.sim.poses import recovery_start

KEYS = ("success_rate", "baseline_success_rate", "episodes_collected", "train_steps", "backend", "task")


@pytest.mark.parametrize("backend", ["openvla", "openpi"])
def test_shortened_demo_produces_every_stage(tmp_path, backend):
    cmd = [sys.executable, "-m", "crane_x7_vla.cli", "demo", "--backend", backend, "--episodes", "3",
           "--train-steps", "8", "--eval-episodes", "2", "--eval-timeout", "4", "--out", str(tmp_path)]
    cmd += ["--pretrain-steps", "4", "--pretrain-scenes", "8", "--goal-scenes", "8"]
    if backend == "openpi":
        cmd += ["--pretrain-answer-steps", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    runs = list(tmp_path.glob(f"demo_{backend}_reach_*"))
    assert len(runs) == 1
    run = runs[0]
    assert "success" in result.stdout and str(run / "report.md") in result.stdout

    # collect: three valid episodes recorded through the ROS 2 nodes, statistics beside them
    assert validate_dataset(run / "data") == (3, [])
    assert (run / "data" / "dataset_statistics.json").exists()
    # a share of them start with the hand near a cube (drawn from each seed by the simulator)
    settings = load_settings(defaults_file(backend, "reach"))
    share = settings["collect"]["start_near"]
    assert share == 0.25
    near_seeds = [s for s in range(3) if recovery_start(s, share) is not None]
    collect_log = (run / "logs" / "collect.log").read_text()
    assert collect_log.count("(start near a cube)") == len(near_seeds), collect_log
    assert all(f"seed {s} " in line for s, line in zip(
        near_seeds, [ln for ln in collect_log.splitlines() if "(start near a cube)" in ln]))
    # pretrain: the base model that training started from (openpi: with its answer stage)
    pretraining = json.loads((run / "base_model" / "pretraining.json").read_text())
    assert pretraining["backend"] == backend and pretraining["scenes"] == 8 and pretraining["steps"] == 4
    assert pretraining["answer_steps"] == (2 if backend == "openpi" else 0)
    # train: the final checkpoint with its self-describing config
    config = json.loads((run / "train" / "checkpoint-final" / "policy_config.json").read_text())
    assert config["backend"] == backend and config["step"] == 8
    assert config["base_model"] == str(run / "base_model")
    # the goal point learned (openvla: written before the actions; openpi: beside them), the
    # pretrained encoder kept, goal scenes mixed in
    openvla = backend == "openvla"
    train_config = config["train_config"]
    assert train_config["freeze_vision"]
    assert train_config["noop_threshold"] == (0.01 if openvla else 0.0)  # the demo's, over the preset's 0.002
    assert train_config["goal_scenes"] == 8
    assert train_config["goal_scenes_alone"] == settings["train"]["goal_scenes_alone"]
    assert train_config["goal_scenes_near"] == settings["train"]["goal_scenes_near"]
    if openvla:
        assert train_config["goal_tokens"]
        # the goal warm-up keeps its share of the 8 steps (1500 of 4000 -> 3) and its own rate
        assert train_config["goal_warmup_steps"] == 3
        assert train_config["goal_warmup_lr"] == settings["train"]["goal_warmup_lr"]
    else:
        assert train_config["goal_dims"] and config["action_space"]["goal_dims"] == [8, 9, 10]
        assert train_config["crop_scale"] == 1.0
    assert (run / "train" / "metrics.jsonl").read_text().strip()
    # deploy/evaluate: the policy and both baselines ran the same held-out seeds
    evaluation = json.loads((run / "eval" / "evaluation.json").read_text())
    assert set(evaluation) == {"policy", "hold still", "mean trajectory"}
    seeds = {name: [o["seed"] for o in res["per_seed"]] for name, res in evaluation.items()}
    assert seeds["policy"] == seeds["hold still"] == seeds["mean trajectory"] and len(seeds["policy"]) == 2
    assert seeds["policy"] == [100_000, 100_001]  # held out (collection used seeds 0..2), from the first
    # how far from the goal each episode ended, in metres: the task's own distance, finite
    for res in evaluation.values():
        assert all(0.0 <= o["final_distance_m"] < 2.0 for o in res["per_seed"]), res["per_seed"]
    # the policies were called in every episode, the first included (the node's warm-up call at
    # load compiles openpi's model, which on its first real call outlasted a 4 s episode), and
    # the node's model latency is on record
    for name, res in evaluation.items():
        assert all(o["inferences"] > 0 for o in res["per_seed"]), (name, res["per_seed"])
        assert all(o["latency_ms"]["model_ms"]["n"] > 0 for o in res["per_seed"]), (name, res["per_seed"])
    assert evaluation["policy"]["per_seed"][-1]["latency_ms"]["model_ms"]["p50"] > 0
    # what the node achieved in each episode is on record beside the figure: commands and
    # policy calls per second
    for name, res in evaluation.items():
        assert all(o["control_hz"] > 0 and o["inference_hz"] > 0 for o in res["per_seed"]), (name, res["per_seed"])
        assert res["achieved_control_hz"]["min"] > 0 and res["achieved_inference_hz"]["min"] > 0, name
    # report
    report = json.loads((run / "report.json").read_text())
    for key in KEYS:
        assert key in report, key
    assert report["backend"] == backend and report["episodes_collected"] == 3 and report["train_steps"] == 8
    assert report["success_rate"] == evaluation["policy"]["success_rate"]
    assert report["pretraining"]["backend"] == backend
    assert report["goal_scenes"] == 8
    assert report["start_near"] == share
    for png in ("training_curves.png", "success_per_seed.png", "frames.png", "predicted_vs_demonstrated.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG", png
    md = (run / "report.md").read_text()
    assert "success_per_seed.png" in md and "hold still" in md


@pytest.mark.parametrize("flags, message", [
    (["--goal-warmup-steps", "8", "--train-steps", "8"], "--goal-warmup-steps"),
    (["--goal-warmup-steps", "2", "--goal-scenes", "0"], "--goal-warmup-steps"),
    (["--goal-scenes-alone", "1.5"], "--goal-scenes-alone"),
    (["--goal-scenes-near", "-0.5"], "--goal-scenes-near"),
    (["--start-near", "2"], "--start-near"),
    (["--backend", "openpi", "--goal-warmup-steps", "2"], "--goal-warmup-steps is the openvla backend's"),
])
def test_demo_refuses_contradicting_flags_before_any_work(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "crane_x7_vla.cli", "demo", "--out", str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert not any(tmp_path.iterdir())  # no run folder, nothing collected
