"""Start, spin and stop a node the same way for every console entry point."""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor


class ConfigError(ValueError):
    """A parameter value the node cannot work with; the message says which and why."""


def run(factory, argv=None, *, threads: int = 1) -> int:
    """rclpy.init, build the node, spin until Ctrl-C / SIGTERM, then clean up.

    `factory()` returns the node; a ConfigError it raises ends the program with
    exit code 2 and the message (no traceback). The node may define `close()`,
    called before it is destroyed (e.g. to finish writing files).
    """
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    code = 0
    try:
        node = factory()
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
