"""`crane-x7-vla demo`: collect → train → deploy → measured success, on the simulated CRANE-X7.

Every stage runs the same command a user would type (printed as it starts), so any
stage can be re-run or scaled by hand:

  1. collect   crane-x7-vla collect --sim ...            scripted expert on the leader side,
                                                          teleop relay, episode logger (ROS 2 nodes)
  2. check     crane-x7-vla dataset validate / stats      statistics with their fingerprint
  3. pretrain  crane-x7-vla pretrain ...                 (OpenVLA) the tiny preset's vision tower
                                                          learns to point at named objects in
                                                          rendered scenes: its base model
     train     python -m crane_x7_vla.training.cli train  tiny preset on the CPU (OpenVLA: the
                                                          goal point first, then the actions;
                                                          the tower kept; simulated goal scenes)
  4. evaluate  crane-x7-vla eval CHECKPOINT ...           inference node drives the simulator on
                                                          held-out seeds, with two baselines
  5. report    report.md, report.json and PNGs in the run folder
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from crane_x7_vla.cli.args import (
    camera_list, existing_file, float_in, folder, non_negative_int, positive_float, positive_int, share, sim_task,
)
from crane_x7_vla.cli.collect import MAX_SPEED, SIM_CAMERAS
from crane_x7_vla.cli.demo_settings import defaults_file, load_settings
from crane_x7_vla.errors import ConfigError
from crane_x7_vla.evaluation.summary import format_rate

# Simulated seconds per wall-clock second while collecting: the recorded episodes are the
# same as in real time (every node runs on the simulator's /clock) and two cores keep up.
DEFAULT_COLLECT_SPEED = 5.0


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "crane_x7_vla.cli", *map(str, args)]


def _stage(title: str, cmd: list[str], log_path: Path) -> float:
    """Run one stage's command, output to the terminal and to its log; fail loudly."""
    shown = " ".join(shlex.quote(c) for c in cmd).replace(sys.executable, "python")
    print(f"\n== {title}\n$ {shown}", flush=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(line)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"stage '{title}' failed (exit code {code}); its output is in {log_path}")
    return time.monotonic() - t0


def _predicted_vs_demonstrated(checkpoint: Path, data_root: Path, out: Path):
    """Open-loop: the policy's action at every recorded step of a demonstration."""
    from crane_x7_vla.episode import list_episodes, load_episode
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.checkpoint_contract import read_policy_config
    from crane_x7_vla.policy.loader import load_policy
    from crane_x7_vla.evaluation.report import plot_predicted_vs_demonstrated

    policy = load_policy(checkpoint)
    cfg = read_policy_config(checkpoint)
    val = cfg.get("train_config", {}).get("val_episodes") or []
    refs = list_episodes(data_root)
    ref = next((r for r in refs if r.name in val), refs[-1])
    ep = load_episode(ref.path)
    cams = list(cfg.get("cameras") or sorted(ep.images))
    predicted = []
    if hasattr(policy, "reset"):
        policy.reset()
    for t in range(len(ep)):
        obs = {"images": {c: jpeg.decode(ep.images[c][t]) for c in cams}, "state": ep.proprio[t],
               "instruction": ep.instruction, "time": t / (ep.fps or 10.0)}
        predicted.append(np.asarray(policy.predict(obs))[0])
    title = f"{ref.name} ({'validation' if ref.name in val else 'training'} episode): predicted vs demonstrated"
    return plot_predicted_vs_demonstrated(np.array(predicted), ep.action, ep.fps or 10.0, out, title)


def _frames(eval_dir: Path, outcomes: list[dict], out: Path):
    from crane_x7_vla.evaluation.report import plot_frames

    frames = []
    wins = [i for i, o in enumerate(outcomes) if o["success"]][:2]
    losses = [i for i, o in enumerate(outcomes) if not o["success"]][:2]
    for i in wins + losses:
        tag = "success" if outcomes[i]["success"] else "failure"
        for which in ("first", "last"):
            path = eval_dir / "frames" / f"episode_{i:03d}_{which}.npy"
            if path.exists():
                frames.append((f"seed {outcomes[i]['seed']} {which}\n{tag}", np.load(path)))
    return plot_frames(frames, out, "held-out episodes: first and last scene frame")


def _run(args) -> int:
    from crane_x7_vla.evaluation import report

    settings_path = Path(args.defaults) if args.defaults else defaults_file(args.backend, args.task)
    try:
        settings = load_settings(settings_path)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    collect, pre, train, evaluate = (settings[k] for k in ("collect", "pretrain", "train", "eval"))

    def given(flag, value):
        return value if flag is None else flag

    episodes = given(args.episodes, collect["episodes"])
    start_near = given(args.start_near, collect["start_near"])
    pretrain_steps = given(args.pretrain_steps, pre["steps"])
    pretrain_scenes = given(args.pretrain_scenes, pre["scenes"])
    answer_steps = given(args.pretrain_answer_steps, pre["answer_steps"])
    steps = given(args.train_steps, train["steps"])
    goal_scenes = given(args.goal_scenes, train["goal_scenes"])
    alone = given(args.goal_scenes_alone, train["goal_scenes_alone"])
    near = given(args.goal_scenes_near, train["goal_scenes_near"])
    # the goal warm-up keeps its share of the steps when --train-steps scales them
    warmup = (round(steps * train["goal_warmup_steps"] / train["steps"]) if args.goal_warmup_steps is None
              else args.goal_warmup_steps)
    eval_episodes = given(args.eval_episodes, evaluate["episodes"])
    eval_timeout = given(args.eval_timeout, evaluate["timeout"])
    if goal_scenes < 0:
        raise SystemExit(f"error: --goal-scenes must be >= 0 (got {goal_scenes})")
    if goal_scenes > 0 and args.backend == "openpi" and "--goal-dims" not in train["args"]:
        raise SystemExit(f"error: --goal-scenes teach the goal point, which the openpi backend writes with "
                         f"--goal-dims: add it to train.args of {settings_path}, or use --goal-scenes 0")
    if warmup > 0 and args.backend != "openvla":
        raise SystemExit("error: --goal-warmup-steps is the openvla backend's (use --goal-warmup-steps 0)")
    if warmup < 0 or (warmup > 0 and (goal_scenes == 0 or warmup >= steps)):
        raise SystemExit(f"error: --goal-warmup-steps ({warmup}) trains on the goal scenes first: it needs "
                         f"--goal-scenes > 0 and must be fewer than the training steps ({steps})")
    if warmup > 0 and train["goal_warmup_lr"] is None:
        raise SystemExit(f"error: demo settings {settings_path}: train.goal_warmup_lr is needed with a goal warm-up")
    for flag, value in (("goal-scenes-alone", alone), ("goal-scenes-near", near), ("start-near", start_near)):
        if not 0.0 <= value <= 1.0:
            raise SystemExit(f"error: --{flag} is a share, 0..1 (got {value})")
    for flag, value, least in (("pretrain-steps", pretrain_steps, 0), ("pretrain-answer-steps", answer_steps, 0),
                               ("pretrain-scenes", pretrain_scenes, 1), ("episodes", episodes, 1),
                               ("train-steps", steps, 1), ("eval-episodes", eval_episodes, 1)):
        if value < least:
            raise SystemExit(f"error: --{flag} must be >= {least} (got {value})")
    if eval_timeout <= 0:
        raise SystemExit(f"error: --eval-timeout must be > 0 (got {eval_timeout})")
    run = Path(args.out).resolve() / time.strftime(f"demo_{args.backend}_{args.task}_%Y%m%d_%H%M%S")
    data, train_out, eval_out = run / "data", run / "train", run / "eval"
    run.mkdir(parents=True)
    logs = run / "logs"
    logs.mkdir()
    t_start = time.monotonic()
    timings = {}
    timings["collect_s"] = _stage(
        "1/5 collect demonstrations in simulation (ROS 2 nodes: sim + expert + relay + logger)",
        _cli("collect", "--sim", "--task", args.task, "--episodes", episodes, "--out", data, "--seed", args.seed,
             "--cameras", args.cameras, "--speed", args.collect_speed, "--start-near", f"{start_near:g}"),
        logs / "collect.log",
    )
    _stage("2/5 validate and compute statistics", _cli("dataset", "validate", data), logs / "validate.log")
    _stage("2/5 validate and compute statistics", _cli("dataset", "stats", data), logs / "stats.log")
    info = json.loads(subprocess.run(_cli("dataset", "info", data, "--json"), capture_output=True, text=True,
                                     check=True).stdout)
    base, pretraining = "tiny", None
    if pretrain_steps > 0:
        base = run / "base_model"
        timings["pretrain_s"] = _stage(
            f"3/5 pretrain the tiny preset's vision: point at named objects in {pretrain_scenes} rendered scenes",
            _cli("pretrain", "--backend", args.backend, "--out", base, "--task", args.task, "--scenes",
                 pretrain_scenes, "--steps", pretrain_steps, "--answer-steps", answer_steps,
                 "--image-size", train["image_size"], "--seed", args.seed),
            logs / "pretrain.log")
        pretraining = json.loads((base / "pretraining.json").read_text())
    train_cmd = [sys.executable, "-m", "crane_x7_vla.training.cli", "train", "--backend", args.backend,
                 "--model", str(base), "--data-root", str(data), "--output-dir", str(train_out),
                 "--max-steps", str(steps), "--batch-size", str(train["batch_size"]),
                 "--learning-rate", f"{train['learning_rate']:g}", "--image-size", train["image_size"],
                 "--save-steps", str(max(steps // 2, 1)), "--seed", str(args.seed), *train["args"]]
    if pretrain_steps > 0 and train["freeze_vision"]:
        train_cmd.append("--freeze-vision")
    if goal_scenes > 0:
        train_cmd += ["--goal-scenes", str(goal_scenes), "--goal-scenes-task", args.task]
        if alone > 0:
            train_cmd += ["--goal-scenes-alone", f"{alone:g}"]
        if near > 0:
            train_cmd += ["--goal-scenes-near", f"{near:g}"]
        if warmup > 0:
            train_cmd += ["--goal-warmup-steps", str(warmup), "--goal-warmup-lr", f"{train['goal_warmup_lr']:g}"]
    timings["train_s"] = _stage(f"3/5 train the tiny {args.backend} preset on the CPU ({steps} steps)", train_cmd,
                                logs / "train.log")
    checkpoint = train_out / "checkpoint-final"
    eval_cmd = _cli("eval", checkpoint, "--task", args.task, "--episodes", eval_episodes,
                    "--timeout", eval_timeout, "--out", eval_out)
    timings["eval_s"] = _stage("4/5 deploy checkpoint-final through the inference node on held-out seeds",
                               eval_cmd, logs / "eval.log")
    results = json.loads((eval_out / "evaluation.json").read_text())
    print("\n== 5/5 report", flush=True)
    metrics = report.read_metrics(train_out / "metrics.jsonl")
    from crane_x7_vla.training.metrics import LOSS

    losses = [m[LOSS] for m in metrics if LOSS in m]
    pictures = {
        "training curves": report.plot_training_curves(metrics, run / "training_curves.png"),
        "success per seed": report.plot_success_per_seed(results, run / "success_per_seed.png"),
        "frames of successes and failures": _frames(eval_out / "policy", results["policy"]["per_seed"],
                                                     run / "frames.png"),
        "predicted vs demonstrated joint targets": _predicted_vs_demonstrated(checkpoint, data,
                                                                              run / "predicted_vs_demonstrated.png"),
    }
    baselines = {k: v["success_rate"] for k, v in results.items() if k != "policy"}
    summary = {
        "backend": args.backend,
        "task": args.task,
        "settings_file": str(settings_path),
        "success_rate": results["policy"]["success_rate"],
        "success_rate_ci95": results["policy"]["success_rate_ci95"],
        "baseline_success_rate": max(baselines.values()) if baselines else None,
        "baseline_success_rates": baselines,
        "episodes_collected": info["episodes"],
        "steps_collected": info["steps"],
        "demo_success_rate": info["success"].get("True", 0) / max(info["episodes"], 1),
        "pretraining": pretraining,
        "start_near": start_near,
        "goal_scenes": goal_scenes,
        "goal_scenes_alone": alone if goal_scenes else 0.0,
        "goal_scenes_near": near if goal_scenes else 0.0,
        "goal_warmup_steps": warmup,
        "train_steps": steps,
        "final_train_loss": losses[-1] if losses else None,
        "eval_episodes": results["policy"]["episodes"],
        "checkpoint": str(checkpoint),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "evaluation": results,
    }
    json_path, md_path = report.write_report(run, summary, pictures)
    total = time.monotonic() - t_start
    print(f"\ntrained {args.backend} policy on '{args.task}': success {format_rate(results['policy'])}")
    for name, rate in baselines.items():
        print(f"  baseline {name}: {rate * 100:.0f}%")
    print(f"report: {md_path}  (figures: {json_path}); total {total / 60:.1f} min")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="collect → train → deploy → success rate, on the simulated CRANE-X7",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("openvla", "openpi"), default="openvla",
                   help="policy family (default openvla)")
    p.add_argument("--task", type=sim_task, default="reach", help="simulated task: reach or pick_place (default reach)")
    p.add_argument("--defaults", type=existing_file, default=None, metavar="FILE",
                   help="settings file of every stage (default: crane_x7_vla/configs/demo/BACKEND_TASK.yaml); "
                        "the flags below win over it")
    p.add_argument("--episodes", type=positive_int, default=None, help="demonstrations to collect")
    p.add_argument("--cameras", type=camera_list(SIM_CAMERAS), default="primary",
                   help="cameras to record, comma-separated: primary (scene), wrist (hand); the tiny presets "
                        "see the scene camera (default primary)")
    p.add_argument("--collect-speed", type=float_in(0.0, MAX_SPEED, low_open=True), default=DEFAULT_COLLECT_SPEED,
                   help="simulated seconds per wall-clock second while collecting (the nodes run on the "
                        f"simulator's /clock; default {DEFAULT_COLLECT_SPEED:g})")
    p.add_argument("--start-near", type=share, default=None, metavar="SHARE",
                   help="share of the demonstrations that start with the hand a few cm from a cube (collect "
                        "--start-near)")
    p.add_argument("--pretrain-steps", type=non_negative_int, default=None,
                   help="steps of the pretraining stage (`crane-x7-vla pretrain`) before training; 0 = train from "
                        "the random preset")
    p.add_argument("--pretrain-answer-steps", type=non_negative_int, default=None,
                   help="then steps of the model answering where each named object is (pretrain --answer-steps)")
    p.add_argument("--pretrain-scenes", type=positive_int, default=None, help="rendered scenes of the pretraining")
    p.add_argument("--goal-scenes", type=non_negative_int, default=None,
                   help="simulated pictures, without demonstrations, that also teach the goal tokens (openvla)")
    p.add_argument("--goal-scenes-alone", type=share, default=None,
                   help="share of the goal scenes that show the named cube alone")
    p.add_argument("--goal-scenes-near", type=share, default=None,
                   help="share of the goal scenes with the hand a few cm from a cube, the named one or another")
    p.add_argument("--goal-warmup-steps", type=non_negative_int, default=None,
                   help="the first training steps learn where the named cube is from the goal scenes only (the "
                        "settings file's share of the steps when --train-steps changes them)")
    p.add_argument("--train-steps", type=positive_int, default=None, help="training steps")
    p.add_argument("--eval-episodes", type=positive_int, default=None, help="held-out seeds to evaluate")
    p.add_argument("--eval-timeout", type=positive_float, default=None, help="seconds per evaluation episode")
    p.add_argument("--seed", type=non_negative_int, default=0, help="first collection seed and training seed")
    p.add_argument("--out", type=folder, default="runs", help="folder for the run (default ./runs)")
    p.set_defaults(func=_run)
    return p
