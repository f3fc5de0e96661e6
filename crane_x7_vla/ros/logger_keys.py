"""Keyboard front end of a running data_logger: keys call its Trigger services.

    crane-x7-vla logger-keys [--logger /data_logger]

    s  start an episode         e or space  stop and save
    d  discard the episode      q           quit (the logger keeps running)

Run it in its own terminal beside `ros2 launch ... data_collection.launch.py` (launch
gives the nodes no keyboard). Uses the shell's ROS_DOMAIN_ID like every ROS 2 tool.
"""

from __future__ import annotations

import sys
import time


def run(logger: str = "/data_logger", *, keys=None, out=print) -> int:
    import rclpy
    from rclpy.node import Node
    from std_srvs.srv import Trigger

    rclpy.init()
    node = Node("crane_x7_logger_keys")
    clients = {k: node.create_client(Trigger, f"{logger}/{v}") for k, v in
               (("s", "start"), ("e", "stop"), (" ", "stop"), ("d", "discard"))}
    out(f"[logger-keys] {logger}: s = start, e/space = stop and save, d = discard, q = quit")
    try:
        for key in keys if keys is not None else _read_keys():
            if key in ("q", "\x04"):
                break
            client = clients.get(key)
            if client is None:
                continue
            if not client.wait_for_service(timeout_sec=2.0):
                out(f"[logger-keys] {client.srv_name} is not available: is the logger running in this ROS_DOMAIN_ID?")
                continue
            future = client.call_async(Trigger.Request())
            rclpy.spin_until_future_complete(node, future, timeout_sec=60.0)
            res = future.result()
            out(f"[logger-keys] {'ok' if res and res.success else 'refused'}: {res.message if res else 'no answer'}")
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _read_keys():
    if not sys.stdin.isatty():  # piped keys, one per character
        while True:
            ch = sys.stdin.read(1)
            if not ch:
                return
            yield ch
            time.sleep(0.05)
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while True:
            yield sys.stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
