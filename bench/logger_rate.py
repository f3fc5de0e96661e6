"""Benchmark: the episode logger at 30 Hz with two 640x480 cameras.

    .venv/bin/python bench/logger_rate.py [--seconds 300] [--rate 30] [--json PATH]

A publisher process plays the robot (follower joint states at 200 Hz like
crane_x7_control, two rgb8 640x480 cameras at 30 fps each); the real data_logger node
records one episode for --seconds over DDS. Reported: achieved rate, steps lost (timer
ticks that produced no step, plus ticks the timer never ran), stale frames, and the
logger process's CPU use as a share of one core (from /proc, over the recording).
Targets (issue 3): 0 steps lost, CPU < 50 % of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CAMERAS = {"cam_a": "/bench/cam_a/image_raw", "cam_b": "/bench/cam_b/image_raw"}
W, H = 640, 480


def publisher(fps: float, joint_hz: float) -> None:
    """The robot stand-in: joint states and two cameras (run as its own process)."""
    import threading

    import numpy as np
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from crane_x7_vla import robot
    from crane_x7_vla.ros import msgs

    rclpy.init()
    node = Node("bench_robot")
    js = node.create_publisher(JointState, "/joint_states", msgs.STATE_QOS)
    cams = {c: node.create_publisher(Image, t, msgs.SENSOR_QOS) for c, t in CAMERAS.items()}
    node.create_publisher(String, "/instruction", msgs.LATCHED_QOS).publish(String(data="bench the logger"))
    # Smooth frames with a moving block: compress like camera pictures, unlike noise.
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) * 255 // (W + H)], axis=-1).astype(np.uint8)
    frames = []
    for k in range(30):
        f = base.copy()
        f[100:220, 20 * k : 20 * k + 120] = (200, 30, 30)
        frames.append(f)

    def joints():
        t0 = time.monotonic()
        while rclpy.ok():
            q = robot.home_state() + 0.1 * np.sin(time.monotonic() - t0)
            js.publish(msgs.make_joint_state(q, stamp=node.get_clock().now().to_msg()))
            time.sleep(1.0 / joint_hz)

    threading.Thread(target=joints, daemon=True).start()
    k = 0
    next_t = time.monotonic()
    try:
        while rclpy.ok():
            stamp = node.get_clock().now().to_msg()
            for c, pub in cams.items():
                pub.publish(msgs.rgb_to_image(frames[k % 30], stamp=stamp, frame_id=c))
            k += 1
            next_t += 1.0 / fps
            time.sleep(max(0.0, next_t - time.monotonic()))
    except KeyboardInterrupt:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run(seconds: float, rate: float, fps: float, out: Path, logs: Path) -> dict:
    import subprocess

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    from std_srvs.srv import Trigger

    from crane_x7_vla.ros.processes import NodeGroup, pick_domain_id, ros_env

    domain = pick_domain_id()
    env = ros_env(domain)
    group = NodeGroup(env, logs)
    pub = subprocess.Popen(
        [sys.executable, __file__, "--publisher", "--fps", str(fps)],
        env=env,
        stdout=open(logs / "publisher.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("bench_client", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)

    def call(name):
        client = node.create_client(Trigger, name)
        if not client.wait_for_service(timeout_sec=60):
            raise RuntimeError(f"{name} did not appear; see {logs}")
        fut = client.call_async(Trigger.Request())
        executor.spin_until_future_complete(fut, timeout_sec=120)
        return fut.result()

    try:
        logger = group.start(
            "data_logger",
            {
                "output_dir": str(out),
                "rate": rate,
                "camera_names": list(CAMERAS),
                "camera_topics": list(CAMERAS.values()),
                "keyboard": False,
            },
        )
        deadline = time.monotonic() + 60
        while True:
            res = call("/data_logger/start")
            if res.success:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"logger did not start: {res.message}")
            time.sleep(0.5)
        cpu0, t0 = cpu_seconds(logger.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(logger.pid), time.monotonic()
        res = call("/data_logger/stop")
        if not res.success:
            raise RuntimeError(f"logger did not save: {res.message}")
        summary = json.loads(res.message)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        group.stop_all()
        pub.terminate()
        pub.wait(10)
    elapsed = t1 - t0
    expected_ticks = int(round(elapsed * rate))
    return {
        "seconds": round(elapsed, 2),
        "requested_hz": rate,
        "camera_fps": fps,
        "cameras": f"2 x {W}x{H} rgb8",
        "achieved_hz": summary["achieved_hz"],
        "steps": summary["steps"],
        "timer_ticks": summary["ticks"],
        "dropped_steps": summary["dropped_steps"],
        "ticks_missed": max(0, expected_ticks - summary["ticks"]),
        "steps_lost": summary["dropped_steps"] + max(0, expected_ticks - summary["ticks"]),
        "stale_frames": summary["stale_frames"],
        "stale_joint_states": summary["stale_joint_states"],
        "repeated_frames": summary["repeated_frames"],
        "writer_backlog_at_stop": summary["writer_backlog_at_stop"],
        "logger_cpu_percent_of_one_core": round(100.0 * (cpu1 - cpu0) / elapsed, 1),
        "machine_cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0, help="recording length (default 300)")
    ap.add_argument("--rate", type=float, default=30.0, help="logger rate (Hz, default 30)")
    ap.add_argument("--fps", type=float, default=30.0, help="camera frame rate (default 30)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publisher:
        publisher(args.fps, 200.0)
        return 0
    with tempfile.TemporaryDirectory(prefix="logger_bench_") as tmp:
        tmp = Path(tmp)
        (tmp / "logs").mkdir()
        result = run(args.seconds, args.rate, args.fps, tmp / "episodes", tmp / "logs")
        from crane_x7_vla.episode.validate import validate_dataset

        count, problems = validate_dataset(tmp / "episodes")
        result["episode_valid"] = count == 1 and not problems
    print(
        f"logger {result['requested_hz']:g} Hz, {result['cameras']} at {result['camera_fps']:g} fps, "
        f"{result['seconds']:.0f} s:"
    )
    print(f"  achieved rate      {result['achieved_hz']} Hz ({result['steps']} steps)")
    print(
        f"  steps lost         {result['steps_lost']} (dropped ticks {result['dropped_steps']}, "
        f"missed ticks {result['ticks_missed']}); stale frames {result['stale_frames']}"
    )
    print(
        f"  logger CPU         {result['logger_cpu_percent_of_one_core']} % of one core "
        f"(machine: {result['machine_cpus']} CPUs, load {result['load_average_1min']})"
    )
    print(
        f"  writer backlog     {result['writer_backlog_at_stop']} steps at stop; "
        f"episode valid: {result['episode_valid']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
