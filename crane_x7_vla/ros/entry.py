"""Console entry points of the ROS 2 nodes (`ros2 run crane_x7_vla NAME`, launch files).

Each one first makes Ctrl-C and SIGTERM end the program quietly (exit code 128 + the signal)
and only then loads the node's module: a launch that stops while a node is still loading
numpy, MuJoCo or rclpy (another node failed at start, the user pressed Ctrl-C at once) ends
it without a traceback. node_main.run replaces the handlers with its own once the node spins.
"""

from __future__ import annotations

import importlib
import signal


def _quiet_exit(signum, _frame):
    raise SystemExit(128 + signum)


def entry(module: str):
    """The entry point that loads `module` (dotted name) quietly interruptible and runs its main()."""

    def main():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _quiet_exit)
        return importlib.import_module(module).main()

    main.__name__ = module.rsplit(".", 1)[-1]
    main.node_module = module  # the module it loads (tools that read a node's source look there)
    return main


crane_x7_sim = entry("crane_x7_vla.ros.sim_node")
scripted_expert = entry("crane_x7_vla.ros.expert_node")
teleop_relay = entry("crane_x7_vla.ros.teleop_relay")
data_logger = entry("crane_x7_vla.ros.data_logger")
vla_inference_node = entry("crane_x7_vla.ros.inference_node")
eval_runner = entry("crane_x7_vla.ros.eval_runner")
