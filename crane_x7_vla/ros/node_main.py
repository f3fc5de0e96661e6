"""Start, spin and stop a node the same way for every console entry point."""

from __future__ import annotations

import difflib
import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from crane_x7_vla.errors import ConfigError

#: Longest wait of the spin loop before it looks whether Ctrl-C / SIGTERM arrived (s).
STOP_POLL_S = 0.1


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

    Ctrl-C and SIGTERM only set a flag that the spin loop reads between waits (at most
    STOP_POLL_S later): the node then stops with its ROS context still up, so close() can
    still publish and end action goals. (rclpy's own handlers raise KeyboardInterrupt
    wherever the main thread is, even inside a message take, where it surfaces as another
    error.)
    """
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    rclpy.init(args=argv if argv is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO if in_main else SignalHandlerOptions.ALL)
    previous = {}
    if in_main:
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    code = 0
    try:
        node = factory()
        check_unknown_parameters(node)
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=STOP_POLL_S)
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
