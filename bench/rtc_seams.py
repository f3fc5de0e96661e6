"""The seams between a π0 policy's action chunks, with and without real-time chunking.

    .venv/bin/python bench/rtc_seams.py --checkpoint DIR --episodes DIR [--delay-steps N] [--json out.json]

A recorded episode is replayed as the inference node would drive it: every
`--period-steps` policy steps the policy is called on the recorded picture and joint state
of that instant; its chunk arrives `delay` later (the policy's own median time per call on
this machine, rounded up to whole policy steps, unless --delay-steps says otherwise) and
is executed by `ChunkExecutor`, sampled at the control rate (30 Hz). Both runs use the same
checkpoint, noise draws and delay:

    crossfade   the node's default: each new chunk cross-faded in over --crossfade seconds
    rtc         real-time chunking: each chunk sampled guided towards the targets the
                executor has committed to for its first steps (ChunkExecutor.committed), and
                cross-faded in the same way from its arrival

each with the executor's straight lines between a chunk's 10 Hz points (`linear`, the node's
default) and with its cubic B-spline through them (`bspline`), which takes the corners out of
the chunks themselves.

Figures over the arm joints (the gripper's steps are left out): peak jerk of the command
stream (third difference / dt^3, rad/s^3), the same at the seams only (the control ticks
from a chunk's arrival to the end of its cross-fade) and between them (the jerk of the
chunks themselves, piecewise linear between their 10 Hz points), the largest step between
two commands at a seam (rad), and the gap between the new chunk and the plan it takes over
from at arrival (rad: the seam's jump, what the arm would jump by with no blending).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crane_x7_vla.episode import jpeg  # noqa: E402
from crane_x7_vla.episode.reader import list_episodes, load_episode  # noqa: E402
from crane_x7_vla.policy.executor import ChunkExecutor  # noqa: E402

ARM = slice(0, 7)


def observations(episode_dir, cameras) -> tuple[list[dict], float]:
    """The recorded episode as the policy's observations, and its frame rate."""
    ep = load_episode(episode_dir, cameras=cameras)
    obs = []
    for t in range(len(ep)):
        obs.append({"images": {c: jpeg.decode(ep.images[c][t]) for c in cameras},
                    "state": np.asarray(ep.proprio[t], np.float64), "instruction": ep.instruction})
    return obs, float(ep.fps or 10.0)


def rollout(policy, obs: list[dict], *, rtc: bool, delay_steps: int, period_steps: int, control_rate: float = 30.0,
            crossfade_s: float = 0.2, policy_rate: float = 10.0, interpolation: str = "linear") -> dict:
    """Replay `obs` (one per policy step) through the policy and a ChunkExecutor; returns the
    command stream (T, 8), its tick times, the arrival times and the gaps at arrival."""
    horizon = int(policy.metadata["action_horizon"])
    executor = ChunkExecutor(policy_rate, crossfade_s=crossfade_s, mode="rtc" if rtc else "crossfade",
                             interpolation=interpolation)
    reset = getattr(policy, "reset", None)
    if reset is not None:
        reset()
    delay = delay_steps / policy_rate
    calls = [k for k in range(0, len(obs), period_steps)]
    arrivals, gaps, guided = [], [], []
    dt = 1.0 / control_rate
    end = (len(obs) - 1) / policy_rate
    ticks = np.arange(0.0, end + 1e-9, dt)
    commands, tick_times = [], []
    pending = []  # (arrival time, chunk, obs time, state)
    next_call = 0
    for t in ticks:
        for arrival, chunk, t0, state in [p for p in pending if p[0] <= t + 1e-9]:
            before = executor.sample(arrival)
            new = executor.add_chunk(chunk, t0, arrival, state=state)
            if before is not None:
                gaps.append(float(np.abs(new.at(arrival) - before)[ARM].max()))
                arrivals.append(arrival)
        pending = [p for p in pending if p[0] > t + 1e-9]
        while next_call < len(calls) and calls[next_call] / policy_rate <= t + 1e-9:
            k = calls[next_call]
            t_obs = k / policy_rate
            o = dict(obs[k])
            if rtc and executor.has_chunk:
                o["committed_actions"] = executor.committed(t_obs, horizon)
                o["delay_steps"] = int(delay_steps)
                guided.append(len(o["committed_actions"]))
            chunk = np.asarray(policy.predict(o), np.float64)
            pending.append((t_obs + delay, chunk, t_obs, o["state"]))
            next_call += 1
        if not executor.has_chunk:
            continue
        executor.prune(t)
        commands.append(executor.sample(t))
        tick_times.append(t)
    return {"commands": np.array(commands), "times": np.array(tick_times), "arrivals": arrivals, "gaps": gaps,
            "guided": guided}


def seam_figures(run: dict, control_rate: float = 30.0, crossfade_s: float = 0.2) -> dict:
    """Peak jerk (all ticks and at the seams), the largest command step at a seam, the largest gap."""
    dt = 1.0 / control_rate
    cmd = run["commands"][:, ARM]
    times = run["times"]
    jerk = np.abs(np.diff(cmd, n=3, axis=0)) / dt**3  # jerk[j] spans ticks j..j+3
    step = np.abs(np.diff(cmd, axis=0))  # step[j]: tick j -> j+1
    seam_jerk, seam_step = [0.0], [0.0]
    in_seam = np.zeros(len(jerk), bool)
    for a in run["arrivals"]:
        first = int(np.searchsorted(times, a - 1e-9))  # the first tick at or after the arrival
        last = int(np.searchsorted(times, a + crossfade_s + 1e-9))
        in_seam[max(0, first - 3): max(0, last)] = True
        seam_jerk.append(float(jerk[max(0, first - 3): max(0, last)].max(initial=0.0)))
        seam_step.append(float(step[max(0, first - 1): first + 1].max(initial=0.0)))
    return {"peak_jerk": float(jerk.max()), "seam_peak_jerk": max(seam_jerk),
            "between_seams_peak_jerk": float(jerk[~in_seam].max(initial=0.0)), "seam_max_step": max(seam_step),
            "max_gap": max(run["gaps"], default=0.0), "seams": len(run["arrivals"])}


def measured_delay_steps(policy, obs: list[dict], policy_rate: float, calls: int = 5) -> tuple[int, float]:
    """(whole policy steps, seconds): the policy's median time per call on this machine, rounded up."""
    policy.predict(obs[0])
    times = []
    for k in range(calls):
        t0 = time.perf_counter()
        policy.predict(obs[k % len(obs)])
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    return max(1, math.ceil(seconds * policy_rate)), seconds


def main(argv=None) -> int:
    from crane_x7_vla.policy.loader import load_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a π0 (openpi backend) checkpoint")
    ap.add_argument("--episodes", required=True, help="a dataset folder; its first episode is replayed")
    ap.add_argument("--episode-index", type=int, default=0)
    ap.add_argument("--period-steps", type=int, default=0, help="policy steps between calls (default: H / 2)")
    ap.add_argument("--delay-steps", type=int, default=0, help="inference delay in policy steps (default: measured)")
    ap.add_argument("--crossfade", type=float, default=0.2)
    ap.add_argument("--interpolation", nargs="+", choices=("linear", "bspline"), default=["linear", "bspline"],
                    help="the executor's interpolation(s) to run each mode with (default both)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    policy = load_policy(args.checkpoint, device="cpu")
    refs = list_episodes(args.episodes)
    obs, fps = observations(refs[args.episode_index].path, list(policy.metadata["cameras"]))
    horizon = int(policy.metadata["action_horizon"])
    period = args.period_steps or max(1, horizon // 2)
    if args.delay_steps:
        delay, seconds = args.delay_steps, None
    else:
        delay, seconds = measured_delay_steps(policy, obs, fps)
    delay = min(delay, period)
    figures, ratio = {}, {}
    keys = ("peak_jerk", "seam_peak_jerk", "between_seams_peak_jerk", "seam_max_step", "max_gap")
    for interp in args.interpolation:
        for name, rtc in (("crossfade", False), ("rtc", True)):
            run = rollout(policy, obs, rtc=rtc, delay_steps=delay, period_steps=period, crossfade_s=args.crossfade,
                          policy_rate=fps, interpolation=interp)
            figures[f"{name}/{interp}"] = seam_figures(run, crossfade_s=args.crossfade)
        ratio[interp] = {k: figures[f"crossfade/{interp}"][k] / max(figures[f"rtc/{interp}"][k], 1e-12) for k in keys}
    load = os.getloadavg()
    print(f"episode {refs[args.episode_index].name}: {len(obs)} steps at {fps:g} Hz, chunk H={horizon}, a call every "
          f"{period} steps, delay {delay} step(s)"
          f"{f' (measured {seconds * 1e3:.0f} ms per call)' if seconds is not None else ' (given)'}, "
          f"commands at 30 Hz; load average {load[0]:.2f}")
    print(f"{'':18} {'peak jerk':>11} {'seam jerk':>11} {'other jerk':>11} {'seam step':>10} {'gap':>8}   "
          "(rad/s^3, rad)")

    def row(label, values, fmt):
        return f"{label:18} " + " ".join(f"{values[k]:>{11 if 'jerk' in k else 10 if k == 'seam_max_step' else 8}{fmt}}"
                                         for k in keys)

    for interp in args.interpolation:
        for name in ("crossfade", "rtc"):
            print(row(f"{name}/{interp}", figures[f"{name}/{interp}"], ".4g"))
        print(row(f"ratio/{interp}", ratio[interp], ".2f") + "   (crossfade / rtc)")
    if args.json:
        Path(args.json).write_text(json.dumps({"delay_steps": delay, "measured_call_s": seconds, "period_steps": period,
                                               "figures": figures, "ratio": ratio, "load_average": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
