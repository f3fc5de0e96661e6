"""Start, spin and stop a node the same way for every console entry point."""

from __future__ import annotations

import difflib
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor


class ConfigError(ValueError):
    """A parameter value the node cannot work with; the message says which and why."""


def check_unknown_parameters(node) -> None:
    """Raise ConfigError when the node was given a parameter it does not declare.

    rclpy drops such values without a word, so a misspelt name in a launch file, a
    `--ros-args -p` or a YAML file would leave the default in place unnoticed.
    """
    given = set(getattr(node, "_parameter_overrides", {}))
    declared = {name for name in given if node.has_parameter(name)}
    unknown = sorted(name for name in given - declared if not name.startswith("qos_overrides."))
    if not unknown:
        return
    known = sorted(node.get_parameters_by_prefix(""))
    words = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        words.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(
        f"{node.get_name()} has no parameter {', '.join(words)}; "
        f"`ros2 param list /{node.get_name()}` lists the ones it has"
    )


def run(factory, argv=None, *, threads: int = 1) -> int:
    """rclpy.init, build the node, spin until Ctrl-C / SIGTERM, then clean up.

    `factory()` returns the node; a ConfigError it raises, or a parameter given to the node
    that it does not declare, ends the program with exit code 2 and the message (no
    traceback). The node may define `close()`, called before it is destroyed (e.g. to
    finish writing files).
    """
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    code = 0
    try:
        node = factory()
        check_unknown_parameters(node)
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C / SIGTERM shuts the ROS context down at once; an executor caught in the
        # middle of taking a message then fails with whatever the binding raises. That is
        # a normal stop; an error while the context is still up is not.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
