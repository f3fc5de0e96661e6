"""Real DDS between real processes: our nodes run as child processes (their console
entry points), the test talks to them from its own rclpy context. Every test module
uses its own ROS_DOMAIN_ID so parallel runs never hear each other."""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")  # noqa: E402  (the ROS wheels are in requirements/ros.txt)

from crane_x7_vla.ros.background_node import BackgroundNode  # noqa: E402
from crane_x7_vla.ros.processes import NodeGroup, domain_lease, ros_env  # noqa: E402


def _require_control_msgs() -> None:
    try:
        import control_msgs.action  # noqa: F401
    except ImportError:
        pytest.fail("control_msgs is not built: run scripts/setup.d/control_msgs.sh (scripts/setup.sh runs it)")


class RosClient(BackgroundNode):
    """An rclpy node of the test, spun in a background thread, in the test's domain."""

    def __init__(self, domain_id: int) -> None:
        super().__init__("test_client", domain_id)

    def trigger(self, name: str, timeout: float = 30.0):
        from std_srvs.srv import Trigger

        return self.call(Trigger, name, timeout=timeout)


def _wait_for(predicate, timeout: float, what: str, nodes: NodeGroup | None = None, poll: float = 0.02):
    """Poll until predicate() is truthy; fail naming `what` (and the nodes' logs) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if nodes is not None:
            nodes.check_alive()
        time.sleep(poll)
    logs = ""
    if nodes is not None:
        logs = "\n".join(f"--- {n.name} ---\n{n.log_tail(15)}" for n in nodes.nodes)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")


@pytest.fixture(scope="session")
def wait_for():
    """wait_for(predicate, timeout, what, nodes=None): poll, fail with the nodes' logs."""
    return _wait_for


@pytest.fixture(scope="module")
def domain_id():
    _require_control_msgs()
    with domain_lease() as domain:
        yield domain


@pytest.fixture(scope="module")
def client(domain_id):
    c = RosClient(domain_id)
    yield c
    c.close()


@pytest.fixture
def nodes(domain_id, tmp_path):
    group = NodeGroup(ros_env(domain_id), tmp_path / "logs")
    yield group
    group.stop_all()
