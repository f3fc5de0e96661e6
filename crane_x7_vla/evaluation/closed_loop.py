"""The closed-loop evaluation of a checkpoint on the simulated CRANE-X7 (`crane-x7-vla eval`).

`evaluate` checks the checkpoint's policy_config.json, then `run_closed_loop` starts the
simulator, the inference node and the evaluation runner as ROS 2 processes in a private
ROS_DOMAIN_ID, runs the episodes on held-out seeds and stops every process; the baselines
(`make_baselines`: hold still, mean demonstrated trajectory) run on the same seeds, and the
summaries go to evaluation.json. The simulator advances in lockstep with the inference node
on the simulated clock, so an episode's outcome does not depend on the machine's load.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from crane_x7_vla import robot
from crane_x7_vla.evaluation.summary import (
    EpisodeOutcome, format_achieved_rates, format_rate, summarize_episodes,
)

# Where the simulated CRANE-X7 (crane_x7_sim's defaults) publishes each camera.
SIM_CAMERA_TOPICS = {"wrist": robot.DEFAULT_IMAGE_TOPIC, "primary": "/scene_camera/color/image_raw"}
SIM_CAMERA_FRAMES = {"wrist": "camera_color_optical_frame", "primary": "scene_camera_optical_frame"}
HELD_OUT_FIRST_SEED = 100_000  # collection uses small seeds; evaluation never overlaps them
CONTROL_RATE = 25.0  # commands per simulated second: every 4th step of the simulator's 100 Hz physics
STEP_TIMEOUT = 60.0  # wall-clock seconds the simulator waits for the node's command of one tick
STEP_TOPIC = "/crane_x7_sim/step"
ANSWER_TOPIC = "/vla_inference_node/commanded"


class EvaluationError(RuntimeError):
    """The closed loop could not run (a node ended, did not answer, ran out of time); one line
    naming the node, and where the logs are."""


def _read_config(checkpoint: Path) -> dict:
    """The checkpoint's policy config, checked as the inference node will check it, and its
    cameras among the simulator's; CheckpointError naming the file otherwise."""
    from crane_x7_vla.checkpoint_contract import CheckpointError, config_path, load_policy_config

    config = load_policy_config(checkpoint)
    cameras = config.get("cameras") or ["wrist"]
    unknown = [c for c in cameras if c not in SIM_CAMERA_TOPICS]
    if unknown:
        raise CheckpointError(f"{config_path(checkpoint)}: camera(s) {unknown} do not exist in the simulator "
                              f"({sorted(SIM_CAMERA_TOPICS)})")
    return config


def run_closed_loop(
    checkpoint: Path,
    *,
    task: str,
    episodes: int,
    first_seed: int,
    timeout: float,
    out_dir: Path,
    control_rate: float = CONTROL_RATE,
    max_joint_velocity: float = 1.5,
    frames: bool = True,
    device: str = "cpu",
) -> list[EpisodeOutcome]:
    """Start sim + inference node + runner, run the episodes, stop everything.

    The node calls the policy at the rate its demonstrations were recorded at (the
    checkpoint's control_rate_hz): a one-step policy called less often would move in
    bursts with holds between them. The simulator waits at every control tick until the
    node's command for it has arrived (lockstep; `timeout` is in simulated seconds)."""
    from crane_x7_vla.ros.processes import NodeGroup, domain_lease, ros_env

    config = _read_config(checkpoint)
    cameras = list(config.get("cameras") or ["wrist"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "episodes.json"
    with domain_lease() as domain, NodeGroup(ros_env(domain), out_dir / "logs") as group:
        # Only the cameras the policy (and the runner's frames, the scene camera) look at: on a
        # small machine every rendered picture takes CPU from the model.
        rendered = sorted(set(cameras) | {"primary"})
        group.start("crane_x7_sim", {"task": task, "seed": first_seed, "expert": False, "cameras": rendered,
                                     "camera_topics": [SIM_CAMERA_TOPICS[c] for c in rendered],
                                     "camera_frames": [SIM_CAMERA_FRAMES[c] for c in rendered],
                                     # lockstep: a tick waits for the node's command of that tick
                                     "publish_clock": True, "step_rate": control_rate,
                                     "step_ack_topic": ANSWER_TOPIC, "step_timeout": STEP_TIMEOUT})
        group.start(
            "vla_inference_node",
            {
                "model_path": str(Path(checkpoint).resolve()),
                "device": device,
                "use_sim_time": True,
                "step_topic": STEP_TOPIC,
                # one model thread: the simulator and the runner share the CPU, and two torch
                # threads waiting for each other beside them took 2.5x as long (bench/inference_threads.py)
                "cpu_threads": 1,
                "control_rate": control_rate,
                "inference_rate": float(config.get("control_rate_hz") or 10.0),
                "max_joint_velocity": max_joint_velocity,
                "image_topic": SIM_CAMERA_TOPICS[cameras[0]],
                "camera_names": cameras,
                "camera_topics": [SIM_CAMERA_TOPICS[c] for c in cameras],
            },
        )
        runner = group.start(
            "eval_runner",
            {
                "episodes": episodes,
                "first_seed": first_seed,
                "episode_timeout": timeout,
                "results_path": str(results),
                "frames_dir": str(out_dir / "frames") if frames else "",
                "use_sim_time": True,
            },
        )
        # Wall-clock time is what a busy machine stretches: the limit is on progress, one
        # episode at a time (the first also loads the model).
        per_episode = max(600.0, 40.0 * timeout)
        limit = time.monotonic() + 240 + per_episode
        done = 0
        while runner.alive():
            try:
                group.check_alive_except(runner)
            except RuntimeError as exc:
                raise EvaluationError(str(exc)) from None
            written = _episodes_written(results)
            if written > done:
                done, limit = written, time.monotonic() + per_episode
            if time.monotonic() > limit:
                raise EvaluationError(f"eval_runner finished no episode in {per_episode:.0f} s (after {done} of "
                                      f"{episodes}); see {out_dir / 'logs'}")
            time.sleep(0.5)
        rows = json.loads(results.read_text()) if results.exists() else []
        if runner.proc.returncode != 0:
            if len(rows) != episodes:
                why = runner.last_error() or f"eval_runner exited with code {runner.proc.returncode}"
                raise EvaluationError(f"{why} (after {len(rows)} of {episodes} episodes; logs in {out_dir / 'logs'})")
            # Every episode is written (the file is rewritten after each one): keep them.
            print(f"note: the evaluation runner exited with code {runner.proc.returncode} after writing all "
                  f"{episodes} episodes; see {out_dir / 'logs'}", flush=True)
    seeds = [row["seed"] for row in rows]
    if seeds and seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise EvaluationError(f"the simulator's seeds were not consecutive ({seeds}): another simulator in the same "
                           f"ROS domain answered the resets; see {out_dir / 'logs'}")
    return [EpisodeOutcome(**row) for row in rows]


def _episodes_written(results: Path) -> int:
    try:
        return len(json.loads(results.read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def make_baselines(config: dict, data_root: Path, out_dir: Path) -> dict[str, Path]:
    from crane_x7_vla.policy.baselines import HoldPolicy, MeanTrajectoryPolicy

    cameras = tuple(config.get("cameras") or ["wrist"])
    rate = float(config.get("control_rate_hz") or 10.0)
    hold = HoldPolicy(horizon=1, control_rate_hz=rate, cameras=cameras).save(out_dir / "baseline_hold")
    mean = MeanTrajectoryPolicy.from_dataset(data_root, horizon=10, fps=rate).save(out_dir / "baseline_mean")
    return {"hold still": hold, "mean trajectory": mean}


def evaluate(checkpoint: Path, *, task: str, episodes: int, first_seed: int, timeout: float, out_dir: Path,
             data_root: Path | None = None, baselines: bool = True, device: str = "cpu", log=print) -> dict:
    """Closed-loop success of the checkpoint and the baselines on the same seeds."""
    config = _read_config(checkpoint)
    if baselines:  # the mean-trajectory baseline reads the training episodes: found before anything runs
        from crane_x7_vla.episode.reader import DatasetError, require_episodes

        train_config = config.get("train_config")
        trained_on = data_root or (train_config.get("data_root") if isinstance(train_config, dict) else None)
        if not trained_on:
            raise DatasetError(f"{checkpoint} does not say which episodes it was trained on: pass --data-root "
                               "(for the mean-trajectory baseline) or --no-baselines")
        root = Path(trained_on)
        require_episodes(root)
    results = {}
    log(f"evaluating {checkpoint} on '{task}', {episodes} held-out seeds from {first_seed}")
    outcomes = run_closed_loop(checkpoint, task=task, episodes=episodes, first_seed=first_seed, timeout=timeout,
                               out_dir=out_dir / "policy", device=device)
    results["policy"] = summarize_episodes(outcomes)
    log(f"  policy: {format_rate(results['policy'])}")
    achieved = format_achieved_rates(results["policy"])
    if achieved:
        log(f"  the inference node achieved {achieved}; it was asked for "
            f"{float(config.get('control_rate_hz') or 10.0):g} Hz and {CONTROL_RATE:g} Hz (simulated time)")
    _warn_timeouts("policy", results["policy"], log)
    if baselines:
        from concurrent.futures import ThreadPoolExecutor

        made = make_baselines(config, root, out_dir)
        # The baselines need no model, so both run at once, each with its own simulator and
        # node in its own ROS domain (the policy ran alone: its timing is the one that matters).
        with ThreadPoolExecutor(len(made)) as pool:
            runs = {name: pool.submit(run_closed_loop, ckpt, task=task, episodes=episodes, first_seed=first_seed,
                                      timeout=timeout, out_dir=out_dir / ckpt.name, frames=False)
                    for name, ckpt in made.items()}
            for name, future in runs.items():
                results[name] = summarize_episodes(future.result())
                log(f"  {name}: {format_rate(results[name])}")
                _warn_timeouts(name, results[name], log)
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    return results


def _warn_timeouts(name: str, summary: dict, log) -> None:
    """A lockstep wait that ran out let the simulation go on without the node's command: say so."""
    missed = summary.get("lockstep_timeouts") or 0
    if missed:
        log(f"  warning: {name}: {missed} lockstep wait(s) ran out (the simulator went on without the node's "
            f"command, or the node without its inputs); these episodes' outcomes may depend on the machine's load")
