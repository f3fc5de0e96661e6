"""Simulator speeds: physics control-loop rate and camera render rates.

    .venv/bin/python bench/sim_rates.py [--task reach] [--seconds 3] [--json out.json]

Control loop: one iteration = a one-point arm trajectory + gripper command + env.step(1/control_hz),
as the sim node runs it (with 500 Hz physics substeps inside). Render: frames per second for
each camera alone and for both cameras together, at 320x240 and 640x480.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


from crane_x7_vla.sim import ScriptedExpert, SimEnv


def control_loop_rate(task: str, control_hz: float, seconds: float) -> dict:
    env = SimEnv(task, seed=0, cameras=("primary",))
    expert = ScriptedExpert(env, rng=np.random.default_rng(0))
    dt = 1.0 / control_hz
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        q = expert.target()
        env.set_arm_trajectory([(dt, q[:7])])
        env.set_gripper(q[7])
        env.step(dt)
        n += 1
        if expert.done or expert.failed:
            env.reset(env.seed + 1)
            expert.reset()
    wall = time.perf_counter() - start
    return {"control_hz": control_hz, "iterations_per_s": n / wall,
            "physics_steps_per_s": n * round(dt / env.model.opt.timestep) / wall,
            "realtime_factor": n * dt / wall}


def render_rate(task: str, size: tuple[int, int], cameras: tuple[str, ...], seconds: float) -> dict:
    env = SimEnv(task, seed=0, camera_size=size)
    for cam in cameras:  # create the GL context and upload the scene before timing
        env.render(cam)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for cam in cameras:
            env.render(cam)
        env.step(0.01)
        n += 1
    wall = time.perf_counter() - start
    env.close()
    return {"size": f"{size[0]}x{size[1]}", "cameras": list(cameras), "frames_per_s": n * len(cameras) / wall,
            "sets_per_s": n / wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pick_place")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    results = {"mujoco_gl": os.environ.get("MUJOCO_GL"), "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "task": args.task, "control": [], "render": []}
    for hz in (100.0, 200.0):
        r = control_loop_rate(args.task, hz, args.seconds)
        results["control"].append(r)
        print(f"control loop @ {hz:.0f} Hz steps: {r['iterations_per_s']:8.0f} it/s "
              f"({r['physics_steps_per_s']:.0f} physics steps/s, {r['realtime_factor']:.1f}x real time)")
    for size in ((320, 240), (640, 480)):
        for cams in (("primary",), ("wrist",), ("primary", "wrist")):
            r = render_rate(args.task, size, cams, args.seconds)
            results["render"].append(r)
            print(f"render {r['size']:>8} {'+'.join(cams):15}: {r['frames_per_s']:7.1f} frames/s "
                  f"({r['sets_per_s']:.1f} sets/s incl. a 10 ms physics step)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
