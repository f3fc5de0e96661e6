"""An rclpy node in its own context, spun in a background thread.

Used by plain-Python code that talks to our nodes from outside ROS (the collect
driver) and by the DDS tests: one place for init/spin/service-call/shutdown.

Service clients are made once per service and kept: every new client is a new pair of DDS
endpoints that the server has to discover before it can answer, and a server (rmw_fastrtps)
that has not matched the client's reply reader within its reply writer's max_blocking_time
drops the answer, leaving the caller waiting. Requests that may be repeated safely are sent
again after `resend_after` seconds without an answer.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def wait_for_reply(client, request, deadline: float, *, late: Callable[[], Exception],
                   resend_after: float | None = None, check: Callable[[], None] | None = None):
    """Send `request` on a service client and return the answer; `check()` runs while waiting.

    Past `deadline` (time.monotonic()) the error `late()` is raised. With `resend_after`, a
    request without an answer is sent again that often (only for requests whose repetition
    does no harm); the first answer to any copy counts, the other copies are dropped."""
    futures = [client.call_async(request)]
    resend_at = time.monotonic() + resend_after if resend_after else float("inf")
    try:
        while True:
            done = next((f for f in futures if f.done()), None)
            if done is not None:
                return done.result()
            if check is not None:
                check()
            now = time.monotonic()
            if now > deadline:
                raise late()
            if now >= resend_at:
                futures.append(client.call_async(request))
                resend_at = now + resend_after
            time.sleep(0.01)
    finally:
        for future in futures:
            if not future.done():
                client.remove_pending_request(future)


class BackgroundNode:
    def __init__(self, name: str, domain_id: int) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict = {}
        self._clients_lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context was shut down under the executor
            pass

    def client(self, srv_type, name: str):
        """The node's client of service `name` (made on first use, then kept)."""
        with self._clients_lock:
            client = self._clients.get((srv_type, name))
            if client is None:
                client = self._clients[(srv_type, name)] = self.node.create_client(srv_type, name)
            return client

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0, check: Callable[[], None] | None = None,
             resend_after: float | None = None):
        """Call a service; `check()` runs while waiting (e.g. raise if a node process died).
        With `resend_after`, a request without an answer is sent again that often (only for
        requests whose repetition does no harm)."""
        client = self.client(srv_type, name)
        deadline = time.monotonic() + timeout
        while not client.wait_for_service(timeout_sec=0.2):
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} did not appear within {timeout:g} s")
        request = request if request is not None else srv_type.Request()
        return wait_for_reply(client, request, deadline, resend_after=resend_after, check=check,
                              late=lambda: TimeoutError(f"service {name} did not answer within {timeout:g} s"))

    def close(self) -> None:
        # The spin thread must have left the executor before the node's entities are
        # destroyed under it (rclpy's shutdown() does not wait for it).
        self.executor.shutdown(timeout_sec=1.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
