"""teleop_relay as a process: clamping joint by joint, velocity limit, leader timeout,
rejection of foreign joint states, the hold (clutch) service, and refusal to mix leader and
follower topics."""

from __future__ import annotations

import threading
import time

import numpy as np
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from crane_x7_vla import robot
from crane_x7_vla.ros import msgs

RATE = 30.0
MAX_VEL = 6.0
TIMEOUT = 0.4


class Commands:
    def __init__(self, client) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, np.ndarray]] = []
        client.node.create_subscription(JointTrajectory, robot.ARM_TRAJECTORY_TOPIC, self._on, msgs.STATE_QOS)

    def _on(self, msg: JointTrajectory) -> None:
        assert list(msg.joint_names) == list(robot.ARM_JOINTS)
        assert len(msg.points) == 1
        with self.lock:
            self.items.append((time.monotonic(), np.array(msg.points[0].positions)))

    def snapshot(self):
        with self.lock:
            return list(self.items)


def _publish_loop(stop, pub, get_msg, rate=100.0):
    while not stop.is_set():
        msg = get_msg()
        if msg is not None:
            pub.publish(msg)
        time.sleep(1.0 / rate)


def _stop_publishing(stop, threads, node, *publishers) -> None:
    stop.set()
    for t in threads:
        t.join(2.0)
    for pub in publishers:
        node.destroy_publisher(pub)


def test_relay_clamps_joint_by_joint_limits_velocity_and_stops_on_silence(client, nodes, wait_for):
    node = client.node
    follower_pub = node.create_publisher(JointState, robot.JOINT_STATES_TOPIC, msgs.STATE_QOS)
    leader_pub = node.create_publisher(JointState, "/leader/joint_states", msgs.STATE_QOS)
    commands = Commands(client)
    follower_q = robot.home_state()
    leader_q = robot.home_state().copy()
    leader_q[1] = 3.0  # tilt: beyond +90 deg
    leader_q[6] = -5.0  # wrist: beyond -167 deg
    leader_q[0] = 0.4  # pan: in range, must pass unchanged
    mode = {"leader": "good"}

    def leader_msg():
        stamp = node.get_clock().now().to_msg()
        if mode["leader"] == "good":
            return msgs.make_joint_state(leader_q, stamp=stamp)
        if mode["leader"] == "foreign":  # another robot's joints: must never reach the follower
            m = JointState(name=[f"other_arm_joint{i}" for i in range(8)], position=[9.0] * 8)
            m.header.stamp = stamp
            return m
        return None

    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_publish_loop,
            args=(stop, follower_pub, lambda: msgs.make_joint_state(follower_q, stamp=node.get_clock().now().to_msg())),
            daemon=True,
        ),
        threading.Thread(target=_publish_loop, args=(stop, leader_pub, leader_msg), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        relay = nodes.start(
            "teleop_relay", {"rate": RATE, "max_velocity": MAX_VEL, "leader_timeout": TIMEOUT, "use_gripper": False}
        )
        expected = robot.clamp_to_limits(leader_q)[:7]

        def converged():
            items = commands.snapshot()
            return items and np.allclose(items[-1][1], expected, atol=1e-9)

        wait_for(converged, 20.0, "the follower command to reach the clamped leader pose", nodes)
        items = commands.snapshot()
        cmds = np.array([c for _, c in items])
        # Clamped joint by joint: tilt at its upper, wrist at its lower limit, the rest as commanded.
        assert cmds[-1][1] == robot.UPPER_LIMITS[1]
        assert cmds[-1][6] == robot.LOWER_LIMITS[6]
        np.testing.assert_allclose(cmds[-1][[0, 2, 3, 4, 5]], leader_q[[0, 2, 3, 4, 5]])
        assert np.all(cmds >= robot.LOWER_LIMITS[:7]) and np.all(cmds <= robot.UPPER_LIMITS[:7])
        # The first command starts at the follower's pose; no step exceeds the velocity limit.
        assert np.abs(cmds[0] - follower_q[:7]).max() <= MAX_VEL * 2.0 / RATE + 1e-9
        assert np.abs(np.diff(cmds, axis=0)).max() <= MAX_VEL * 2.0 / RATE + 1e-9
        assert len(cmds) >= 3  # 1.2 rad at 6 rad/s takes several ticks: it was limited

        # Foreign joint states are rejected: the leader is effectively silent, the relay stops.
        mode["leader"] = "foreign"
        time.sleep(TIMEOUT + 0.5)
        n_before = len(commands.snapshot())
        time.sleep(1.0)
        after = commands.snapshot()
        assert len(after) == n_before, "relay kept commanding after the leader went silent"
        assert all(np.all(c <= robot.UPPER_LIMITS[:7]) for _, c in after)
        assert all(abs(c[0] - 9.0) > 1 for _, c in after), "a foreign joint state reached the follower"

        # The leader comes back: following resumes from the follower's measured pose.
        mode["leader"] = "good"
        wait_for(lambda: len(commands.snapshot()) > n_before, 10.0, "following to resume", nodes)
        resumed = commands.snapshot()[n_before][1]
        assert np.abs(resumed - follower_q[:7]).max() <= MAX_VEL * 2.0 / RATE + 1e-9

        relay_log = relay.log_path.read_text()
        assert "clamped joint by joint" in relay_log and robot.ARM_JOINTS[1] in relay_log
        assert "rejected a leader message" in relay_log and "other_arm_joint0" in relay_log
        assert "leader silent" in relay_log
    finally:
        _stop_publishing(stop, threads, node, follower_pub, leader_pub)


def test_hold_is_a_clutch_and_following_resumes_from_the_follower(client, nodes, wait_for):
    from std_srvs.srv import SetBool

    node = client.node
    follower_pub = node.create_publisher(JointState, robot.JOINT_STATES_TOPIC, msgs.STATE_QOS)
    leader_pub = node.create_publisher(JointState, "/leader/joint_states", msgs.STATE_QOS)
    commands = Commands(client)
    pose = {"follower": robot.home_state().copy(), "leader": robot.home_state().copy()}
    pose["leader"][0] = 0.5
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_publish_loop,
            args=(stop, pub, (lambda k=k: msgs.make_joint_state(pose[k], stamp=node.get_clock().now().to_msg()))),
            daemon=True,
        )
        for pub, k in ((follower_pub, "follower"), (leader_pub, "leader"))
    ]
    for t in threads:
        t.start()
    try:
        nodes.start(
            "teleop_relay", {"rate": RATE, "max_velocity": MAX_VEL, "leader_timeout": TIMEOUT, "use_gripper": False}
        )
        wait_for(lambda: (c := commands.snapshot()) and abs(c[-1][1][0] - 0.5) < 1e-9, 20.0, "following", nodes)
        res = client.call(SetBool, "/teleop_relay/hold", SetBool.Request(data=True))
        assert res.success and "holding" in res.message
        time.sleep(0.2)  # a command already on its way
        n_held = len(commands.snapshot())
        pose["leader"][0] = -0.5  # the leader moves freely ...
        pose["follower"][0] = 1.0  # ... and the follower is put elsewhere (a simulator reset)
        time.sleep(0.6)
        assert len(commands.snapshot()) == n_held, "the relay commanded the follower while held"
        res = client.call(SetBool, "/teleop_relay/hold", SetBool.Request(data=False))
        assert res.success
        wait_for(lambda: len(commands.snapshot()) > n_held, 10.0, "following to resume after the hold", nodes)
        first = commands.snapshot()[n_held][1]
        # from where the follower is now, not from the last command before the hold (0.5)
        assert abs(first[0] - 1.0) <= MAX_VEL * 2.0 / RATE + 1e-9, first[0]
        wait_for(lambda: abs(commands.snapshot()[-1][1][0] + 0.5) < 1e-9, 20.0, "the leader's new pose", nodes)
    finally:
        _stop_publishing(stop, threads, node, follower_pub, leader_pub)


def test_relay_refuses_leader_topic_equal_to_follower_topic(nodes):
    relay = nodes.start("teleop_relay", {"leader_joint_states_topic": "/joint_states", "use_gripper": False})
    code = relay.proc.wait(30)
    assert code == 2
    assert "own namespace" in relay.log_path.read_text()
