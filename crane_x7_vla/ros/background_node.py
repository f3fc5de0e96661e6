"""An rclpy node in its own context, spun in a background thread.

Used by plain-Python code that talks to our nodes from outside ROS (the collect
driver) and by the DDS tests: one place for init/spin/service-call/shutdown.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


class BackgroundNode:
    def __init__(self, name: str, domain_id: int) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context was shut down under the executor
            pass

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0, check: Callable[[], None] | None = None):
        """Call a service; `check()` runs while waiting (e.g. raise if a node process died)."""
        client = self.node.create_client(srv_type, name)
        try:
            deadline = time.monotonic() + timeout
            while not client.wait_for_service(timeout_sec=0.2):
                if check is not None:
                    check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {name} did not appear within {timeout:g} s")
            future = client.call_async(request if request is not None else srv_type.Request())
            while not future.done():
                if check is not None:
                    check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {name} did not answer within {timeout:g} s")
                time.sleep(0.01)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
