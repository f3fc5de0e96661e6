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
    camera_list, float_in, folder, non_negative_int, positive_float, positive_int, share, sim_task,
)
from crane_x7_vla.cli.collect import MAX_SPEED, SIM_CAMERAS
from crane_x7_vla.evaluation.summary import format_rate

# Per-backend training settings of the demo (how each was chosen, with its figures:
# docs/results.md). The tiny OpenVLA preset starts from random weights, so it trains all of them,
# sees the scene camera uncropped and predicts chunks of 5 steps. It first gets, in miniature,
# what a real VLA brings from pretraining: `crane-x7-vla pretrain` teaches its vision backbone to
# point at named objects in rendered scenes, and training keeps it (--freeze-vision). The model
# writes the goal point before its actions (--goal-tokens); simulated pictures without
# demonstrations teach that goal too (--goal-scenes, a third showing the named cube alone, a
# third with the hand near a cube), the first 1,500 steps on those pictures only at 3e-4
# (--goal-warmup-steps/-lr) with 8-bin goal labels. Steps moving no joint by 0.01 rad are left
# out (--noop-threshold), and a quarter of the demonstrations start with the hand near a cube
# (collect --start-near).
DEFAULT_PRETRAIN_SCENES = 3000
DEFAULT_PRETRAIN_ANSWER_STEPS = 0
DEFAULTS = {
    "openvla": {"steps": 4000, "batch_size": 16, "learning_rate": 1e-3, "image_size": "64x64",
                "pretrain_steps": 2500, "goal_scenes": 6000, "goal_scenes_alone": 0.33, "goal_scenes_near": 0.33,
                "start_near": 0.25, "goal_warmup_steps": 1500, "goal_warmup_lr": 3e-4,
                "extra_args": ["--no-use-lora", "--cameras", "primary", "--crop-scale", "1.0",
                               "--action-horizon", "5", "--goal-tokens", "--goal-label-sigma", "8",
                               "--noop-threshold", "0.01"]},
    "openpi": {"steps": 3000, "batch_size": 32, "learning_rate": 3e-4, "image_size": "64x64",
               "pretrain_steps": 0, "goal_scenes": 0, "goal_scenes_alone": 0.0, "goal_scenes_near": 0.0,
               "start_near": 0.0, "goal_warmup_steps": 0,
               "goal_warmup_lr": None,
               "extra_args": ["--no-use-lora", "--cameras", "primary"]},
}

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

    preset = DEFAULTS[args.backend]
    steps = args.train_steps or preset["steps"]
    pretrain_steps = preset["pretrain_steps"] if args.pretrain_steps is None else args.pretrain_steps
    goal_scenes = preset["goal_scenes"] if args.goal_scenes is None else args.goal_scenes
    alone = preset["goal_scenes_alone"] if args.goal_scenes_alone is None else args.goal_scenes_alone
    near = preset["goal_scenes_near"] if args.goal_scenes_near is None else args.goal_scenes_near
    start_near = preset["start_near"] if args.start_near is None else args.start_near
    # the goal warm-up keeps its share of the steps when --train-steps scales them
    warmup = (round(steps * preset["goal_warmup_steps"] / preset["steps"]) if args.goal_warmup_steps is None
              else args.goal_warmup_steps)
    if pretrain_steps < 0 or (pretrain_steps > 0 and args.backend != "openvla"):
        raise SystemExit("error: --pretrain-steps must be >= 0, and the vision stage exists for the openvla "
                         "backend only (use --pretrain-steps 0 with --backend openpi)")
    if goal_scenes < 0 or (goal_scenes > 0 and args.backend != "openvla"):
        raise SystemExit("error: --goal-scenes must be >= 0, and goal tokens exist for the openvla backend only "
                         "(use --goal-scenes 0 with --backend openpi)")
    if warmup < 0 or (warmup > 0 and (goal_scenes == 0 or warmup >= steps)):
        raise SystemExit(f"error: --goal-warmup-steps ({warmup}) trains on the goal scenes first: it needs "
                         f"--goal-scenes > 0 and must be fewer than the training steps ({steps})")
    for flag, value in (("goal-scenes-alone", alone), ("goal-scenes-near", near), ("start-near", start_near)):
        if not 0.0 <= value <= 1.0:
            raise SystemExit(f"error: --{flag} is a share, 0..1 (got {value})")
    if args.pretrain_answer_steps < 0:
        raise SystemExit("error: --pretrain-answer-steps must be >= 0")
    run = Path(args.out).resolve() / time.strftime(f"demo_{args.backend}_{args.task}_%Y%m%d_%H%M%S")
    data, train_out, eval_out = run / "data", run / "train", run / "eval"
    run.mkdir(parents=True)
    logs = run / "logs"
    logs.mkdir()
    t_start = time.monotonic()
    timings = {}
    timings["collect_s"] = _stage(
        "1/5 collect demonstrations in simulation (ROS 2 nodes: sim + expert + relay + logger)",
        _cli("collect", "--sim", "--task", args.task, "--episodes", args.episodes, "--out", data, "--seed", args.seed,
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
        scenes = args.pretrain_scenes
        timings["pretrain_s"] = _stage(
            f"3/5 pretrain the tiny preset's vision: point at named objects in {scenes} rendered scenes",
            _cli("pretrain", "--out", base, "--task", args.task, "--scenes", scenes, "--steps", pretrain_steps,
                 "--answer-steps", args.pretrain_answer_steps,
                 "--image-size", preset["image_size"], "--seed", args.seed),
            logs / "pretrain.log")
        pretraining = json.loads((base / "pretraining.json").read_text())
    train_cmd = [sys.executable, "-m", "crane_x7_vla.training.cli", "train", "--backend", args.backend,
                 "--model", str(base), "--data-root", str(data), "--output-dir", str(train_out),
                 "--max-steps", str(steps), "--batch-size", str(preset["batch_size"]),
                 "--learning-rate", str(preset["learning_rate"]), "--image-size", preset["image_size"],
                 "--save-steps", str(max(steps // 2, 1)), "--seed", str(args.seed), *preset["extra_args"]]
    if pretrain_steps > 0:
        train_cmd.append("--freeze-vision")
    if goal_scenes > 0:
        train_cmd += ["--goal-scenes", str(goal_scenes), "--goal-scenes-task", args.task]
        if alone > 0:
            train_cmd += ["--goal-scenes-alone", f"{alone:g}"]
        if near > 0:
            train_cmd += ["--goal-scenes-near", f"{near:g}"]
        if warmup > 0:
            train_cmd += ["--goal-warmup-steps", str(warmup), "--goal-warmup-lr", f"{preset['goal_warmup_lr']:g}"]
    timings["train_s"] = _stage(f"3/5 train the tiny {args.backend} preset on the CPU ({steps} steps)", train_cmd,
                                logs / "train.log")
    checkpoint = train_out / "checkpoint-final"
    eval_cmd = _cli("eval", checkpoint, "--task", args.task, "--episodes", args.eval_episodes,
                    "--timeout", args.eval_timeout, "--out", eval_out)
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
    p.add_argument("--backend", choices=sorted(DEFAULTS), default="openvla", help="policy family (default openvla)")
    p.add_argument("--task", type=sim_task, default="reach", help="simulated task: reach or pick_place (default reach)")
    p.add_argument("--episodes", type=positive_int, default=400, help="demonstrations to collect (default 400)")
    p.add_argument("--cameras", type=camera_list(SIM_CAMERAS), default="primary",
                   help="cameras to record, comma-separated: primary (scene), wrist (hand); the tiny presets "
                        "see the scene camera (default primary)")
    p.add_argument("--collect-speed", type=float_in(0.0, MAX_SPEED, low_open=True), default=DEFAULT_COLLECT_SPEED,
                   help="simulated seconds per wall-clock second while collecting (the nodes run on the "
                        f"simulator's /clock; default {DEFAULT_COLLECT_SPEED:g})")
    p.add_argument("--start-near", type=share, default=None, metavar="SHARE",
                   help="share of the demonstrations that start with the hand a few cm from a cube (collect "
                        f"--start-near; default {DEFAULTS['openvla']['start_near']:g} for openvla, 0 for openpi)")
    p.add_argument("--pretrain-steps", type=non_negative_int, default=None,
                   help="steps of the vision stage before training, whose tower training then keeps; 0 = "
                        f"train from the random preset (default {DEFAULTS['openvla']['pretrain_steps']} for "
                        "openvla, 0 for openpi)")
    p.add_argument("--pretrain-answer-steps", type=non_negative_int, default=DEFAULT_PRETRAIN_ANSWER_STEPS,
                   help="then steps of the language model answering where each named object is (with "
                        f"--pretrain-steps; default {DEFAULT_PRETRAIN_ANSWER_STEPS})")
    p.add_argument("--pretrain-scenes", type=positive_int, default=DEFAULT_PRETRAIN_SCENES,
                   help=f"rendered scenes of the vision stage (default {DEFAULT_PRETRAIN_SCENES})")
    p.add_argument("--goal-scenes", type=non_negative_int, default=None,
                   help="simulated pictures, without demonstrations, that also teach the goal tokens "
                        f"(default {DEFAULTS['openvla']['goal_scenes']} for openvla, 0 for openpi)")
    p.add_argument("--goal-scenes-alone", type=share, default=None,
                   help="share of the goal scenes that show the named cube alone (default "
                        f"{DEFAULTS['openvla']['goal_scenes_alone']:g} for openvla)")
    p.add_argument("--goal-scenes-near", type=share, default=None,
                   help="share of the goal scenes with the hand a few cm from a cube, the named one or another "
                        f"(default {DEFAULTS['openvla']['goal_scenes_near']:g} for openvla)")
    p.add_argument("--goal-warmup-steps", type=non_negative_int, default=None,
                   help="the first training steps learn where the named cube is from the goal scenes only "
                        f"(default {DEFAULTS['openvla']['goal_warmup_steps']} of "
                        f"{DEFAULTS['openvla']['steps']} for openvla, the same share of --train-steps)")
    p.add_argument("--train-steps", type=positive_int, default=None, help="training steps (default per backend)")
    p.add_argument("--eval-episodes", type=positive_int, default=20, help="held-out seeds to evaluate (default 20)")
    p.add_argument("--eval-timeout", type=positive_float, default=10.0,
                   help="seconds per evaluation episode (default 10; the demonstrations take 3-4 s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="first collection seed and training seed")
    p.add_argument("--out", type=folder, default="runs", help="folder for the run (default ./runs)")
    p.set_defaults(func=_run)
    return p
