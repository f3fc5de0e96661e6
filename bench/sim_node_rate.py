"""Benchmark: control-loop and render rate of the crane_x7_sim node, measured over DDS.

    .venv/bin/python bench/sim_node_rate.py [--seconds 30] [--size 320x240] [--control-hz 100]
                                            [--camera-rate 30] [--json PATH]

Starts the real node (two cameras), counts /joint_states (one per control step) and
images per camera arriving in this process, reads the simulated clock through
~/check_success at both ends (real-time factor), and the node's CPU share from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOPICS = {"wrist": "/camera/color/image_raw", "primary": "/scene_camera/color/image_raw"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float, size: tuple[int, int], control_hz: float, camera_rate: float, logs: Path) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    from crane_x7_vla.ros import msgs
    from crane_x7_vla.ros.processes import NodeGroup, pick_domain_id, ros_env

    domain = pick_domain_id()
    group = NodeGroup(ros_env(domain), logs)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("bench_sim_client", context=ctx)
    counts = {"joint_states": 0, **{c: 0 for c in TOPICS}}
    lock = threading.Lock()

    def counter(key):
        def on(_msg):
            with lock:
                counts[key] += 1
        return on

    node.create_subscription(JointState, "/joint_states", counter("joint_states"), msgs.STATE_QOS)
    for cam, topic in TOPICS.items():
        node.create_subscription(Image, topic, counter(cam), msgs.SENSOR_QOS)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def sim_time() -> float:
        client = node.create_client(Trigger, "/crane_x7_sim/check_success")
        if not client.wait_for_service(timeout_sec=60):
            raise RuntimeError(f"the simulator did not start; see {logs}")
        fut = client.call_async(Trigger.Request())
        while not fut.done():
            time.sleep(0.005)
        node.destroy_client(client)
        return json.loads(fut.result().message)["time"]

    try:
        sim = group.start("crane_x7_sim", {"camera_width": size[0], "camera_height": size[1],
                                           "control_hz": control_hz, "camera_rate": camera_rate})
        sim_time()
        time.sleep(2.0)  # renderers created, streams flowing
        with lock:
            start = dict(counts)
        s0, c0, t0 = sim_time(), cpu_seconds(sim.pid), time.monotonic()
        time.sleep(seconds)
        s1, c1, t1 = sim_time(), cpu_seconds(sim.pid), time.monotonic()
        with lock:
            end = dict(counts)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        group.stop_all()
    wall = t1 - t0
    return {
        "seconds": round(wall, 2),
        "camera_size": f"{size[0]}x{size[1]}",
        "control_hz_requested": control_hz,
        "control_hz_measured": round((end["joint_states"] - start["joint_states"]) / wall, 1),
        "camera_rate_requested": camera_rate,
        "frames_per_s": {c: round((end[c] - start[c]) / wall, 1) for c in TOPICS},
        "real_time_factor": round((s1 - s0) / wall, 3),
        "sim_cpu_percent_of_one_core": round(100.0 * (c1 - c0) / wall, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", default="320x240", help="camera size WxH (default 320x240)")
    ap.add_argument("--control-hz", type=float, default=100.0)
    ap.add_argument("--camera-rate", type=float, default=30.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="sim_bench_") as tmp:
        r = run(args.seconds, (w, h), args.control_hz, args.camera_rate, Path(tmp))
    print(f"crane_x7_sim, 2 cameras {r['camera_size']}, {r['seconds']:.0f} s (load {r['load_average_1min']}):")
    print(f"  control loop   {r['control_hz_measured']} Hz of {r['control_hz_requested']:g} "
          f"(real-time factor {r['real_time_factor']})")
    print(f"  frames         {r['frames_per_s']} per s of {r['camera_rate_requested']:g}")
    print(f"  node CPU       {r['sim_cpu_percent_of_one_core']} % of one core")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
