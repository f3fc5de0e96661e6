"""teleop_relay: the leader arm's joint states become follower commands.

    /leader/joint_states (sensor_msgs/JointState)
        -> /crane_x7_arm_controller/joint_trajectory   (trajectory_msgs/JointTrajectory)
        -> /crane_x7_gripper_controller/gripper_cmd    (control_msgs/action/GripperCommand)

Safety rules, each one joint at a time:

* every joint is clamped to its position limit (an out-of-range joint is clamped and
  reported; the other joints of the command go through unchanged);
* a joint whose leader value is NaN/inf holds its last command;
* each joint moves at most `max_velocity` rad/s from the last command;
* when the leader goes silent for `leader_timeout` s the relay stops commanding (the
  follower holds its last target); following resumes from the follower's measured
  position, so it never jumps.

`~/hold` (std_srvs/SetBool) is a clutch: `data: true` stops commanding at once and the
follower holds where it is while the leader is moved freely (to put it back at a start
pose, or while the simulator resets the follower); `data: false` follows again, starting
from the follower's first joint state measured after the call, so it never jumps.

The leader and follower are told apart by topic namespace only (both arms use the same
joint names): the relay refuses to start when the leader topic is the follower's, and
rejects (and counts) any leader message whose joint names are not exactly CRANE-X7
joints, so two arms never mix in one command.
"""

from __future__ import annotations

import time

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from crane_x7_vla import robot
from crane_x7_vla.ros import msgs
from crane_x7_vla.ros.node_main import ConfigError, run


def _load_gripper_action():
    try:
        from control_msgs.action import GripperCommand
    except ImportError as exc:
        raise ConfigError(
            "control_msgs is not installed, so gripper commands cannot be sent. On the robot "
            "PC source your ROS 2 install (it provides control_msgs); in this repository run "
            "scripts/setup.d/control_msgs.sh; or start the relay with -p use_gripper:=false"
        ) from exc
    return GripperCommand


class TeleopRelay(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("teleop_relay", **kwargs)
        p = lambda *a: msgs.declare(self, *a)  # noqa: E731
        self.leader_topic = p("leader_joint_states_topic", "/leader/joint_states",
                              "JointState topic of the LEADER arm (its own namespace)")
        self.follower_topic = p("follower_joint_states_topic", robot.JOINT_STATES_TOPIC,
                                "JointState topic of the FOLLOWER arm (where following starts from)")
        self.trajectory_topic = p("trajectory_topic", robot.ARM_TRAJECTORY_TOPIC,
                                  "Follower arm controller's JointTrajectory command topic")
        self.gripper_action_name = p("gripper_action", robot.GRIPPER_ACTION,
                                     "Follower gripper controller's GripperCommand action")
        self.rate = float(p("rate", 30.0, "Arm command rate (Hz)"))
        self.max_velocity = float(p("max_velocity", 3.0, "Largest joint speed commanded (rad/s)"))
        self.leader_timeout = float(p("leader_timeout", 0.5,
                                      "Stop following when the leader has been silent this long (s)"))
        self.lookahead = float(p("lookahead", 0.1,
                                 "time_from_start of each command point (s): the controller's interpolation time"))
        self.use_gripper = bool(p("use_gripper", True, "Relay the leader's gripper joint as GripperCommand goals"))
        self.gripper_rate = float(p("gripper_rate", 5.0, "Most gripper goals sent per second"))
        self.gripper_deadband = float(p("gripper_deadband", 0.02,
                                        "Send a new gripper goal only when the target moved this much (rad)"))
        self.gripper_max_effort = float(p("gripper_max_effort", 5.0, "max_effort of gripper goals"))
        self._check_config()

        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self._leader_q: np.ndarray | None = None
        self._leader_rx = 0.0
        self._follower_q: np.ndarray | None = None
        self._last_cmd: np.ndarray | None = None
        self._last_tick = None
        self._last_goal_pos: float | None = None
        self._last_goal_time = 0.0
        self.rejected = 0
        self.clamped = 0
        self._held = False
        self._follower_seq = 0  # follower joint states received
        self._resume_after = -1  # follow only from a follower state newer than this count

        self.create_subscription(JointState, self.leader_topic, self._on_leader, msgs.STATE_QOS)
        self.create_subscription(JointState, self.follower_topic, self._on_follower, msgs.STATE_QOS)
        self._traj_pub = self.create_publisher(JointTrajectory, self.trajectory_topic, msgs.STATE_QOS)
        self._gripper = None
        if self.use_gripper:
            from rclpy.action import ActionClient

            self._gripper_type = _load_gripper_action()
            self._gripper = ActionClient(self, self._gripper_type, self.gripper_action_name)
        from std_srvs.srv import SetBool

        self.create_service(SetBool, "~/hold", self._on_hold)
        self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(
            f"relaying {self.resolve_topic_name(self.leader_topic)} -> {self.resolve_topic_name(self.trajectory_topic)}"
            f"{' + ' + self.gripper_action_name if self.use_gripper else ''} at {self.rate:g} Hz, "
            f"max {self.max_velocity:g} rad/s, leader timeout {self.leader_timeout:g} s"
        )

    def _check_config(self) -> None:
        for name in ("rate", "max_velocity", "leader_timeout", "lookahead", "gripper_rate"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"parameter '{name}' must be a positive number, got {value}")
        leader = self.resolve_topic_name(self.leader_topic)
        follower = self.resolve_topic_name(self.follower_topic)
        if leader == follower:
            raise ConfigError(
                f"leader_joint_states_topic and follower_joint_states_topic are both {leader}: the "
                "leader arm must run in its own namespace (e.g. /leader/joint_states) so the two arms never mix"
            )

    # -- inputs ---------------------------------------------------------------------------
    def _on_leader(self, msg: JointState) -> None:
        try:
            q = msgs.joint_state_vector(msg)
        except (KeyError, ValueError) as exc:
            self.rejected += 1
            self.get_logger().warning(
                f"rejected a leader message on {self.leader_topic} ({self.rejected} so far): {exc}",
                throttle_duration_sec=2.0,
            )
            return
        self._leader_q = q
        self._leader_rx = self._now()

    def _on_follower(self, msg: JointState) -> None:
        try:
            self._follower_q = msgs.joint_state_vector(msg)
            self._follower_seq += 1
        except (KeyError, ValueError) as exc:
            self.get_logger().warning(f"ignored a follower joint state: {exc}", throttle_duration_sec=5.0)

    def _on_hold(self, request, response):
        self._held = bool(request.data)
        self._last_cmd = None
        self._resume_after = self._follower_seq
        response.success = True
        response.message = ("holding: the follower stays where it is" if self._held
                            else "following from the follower's next measured position")
        self.get_logger().info(response.message)
        return response

    # -- output ---------------------------------------------------------------------------
    def _now(self) -> float:
        """Seconds on the node's clock: simulated time with use_sim_time, else monotonic wall time."""
        if self._sim_time:
            return self.get_clock().now().nanoseconds * 1e-9
        return time.monotonic()

    def _tick(self) -> None:
        now = self._now()
        if self._held:
            return
        if self._leader_q is None or now - self._leader_rx > self.leader_timeout:
            if self._last_cmd is not None:
                silent = now - self._leader_rx
                self.get_logger().warning(
                    f"leader silent for {silent:.2f} s (timeout {self.leader_timeout:g} s): "
                    "stopped following; the follower holds its last target"
                )
            self._last_cmd = None
            return
        if self._last_cmd is None:
            if self._follower_q is None or self._follower_seq <= self._resume_after:
                self.get_logger().warning(
                    f"waiting for follower joint states on {self.follower_topic}", throttle_duration_sec=2.0
                )
                return
            self._last_cmd = robot.clamp_to_limits(self._follower_q)
            self._last_tick = now
            self._last_goal_pos = None
            self.get_logger().info("leader active: following")
        target = self.safe_target(self._leader_q, self._last_cmd)
        dt = min(max(now - self._last_tick, 0.0), 2.0 / self.rate)
        self._last_tick = now
        limit = self.max_velocity * dt
        cmd = robot.clamp_to_limits(self._last_cmd + np.clip(target - self._last_cmd, -limit, limit))
        self._last_cmd = cmd
        self._publish_arm(cmd[: robot.NUM_ARM_JOINTS])
        if self._gripper is not None:
            self._send_gripper(float(cmd[-1]), now)

    def safe_target(self, leader: np.ndarray, last_cmd: np.ndarray) -> np.ndarray:
        """Joint by joint: non-finite -> hold last command; out of range -> clamp (reported)."""
        target = np.where(np.isfinite(leader), leader, last_cmd)
        clamped = robot.clamp_to_limits(target)
        off = np.flatnonzero(clamped != target)
        bad = np.flatnonzero(~np.isfinite(leader))
        if off.size or bad.size:
            self.clamped += 1
            parts = [
                f"{robot.JOINT_NAMES[j]} {target[j]:.3f} -> {clamped[j]:.3f} rad" for j in off
            ] + [f"{robot.JOINT_NAMES[j]} is {leader[j]} (holding)" for j in bad]
            self.get_logger().warning(
                "leader command outside the follower's limits, clamped joint by joint: " + "; ".join(parts),
                throttle_duration_sec=1.0,
            )
        return clamped

    def _publish_arm(self, q7: np.ndarray) -> None:
        msg = JointTrajectory()
        # A zero stamp means "start now" to a joint trajectory controller.
        msg.joint_names = list(robot.ARM_JOINTS)
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in q7]
        secs = int(self.lookahead)
        point.time_from_start = Duration(sec=secs, nanosec=int(round((self.lookahead - secs) * 1e9)))
        msg.points = [point]
        self._traj_pub.publish(msg)

    def _send_gripper(self, position: float, now: float) -> None:
        if self._last_goal_pos is not None and abs(position - self._last_goal_pos) < self.gripper_deadband:
            return
        if now - self._last_goal_time < 1.0 / self.gripper_rate:
            return
        if not self._gripper.server_is_ready():
            self.get_logger().warning(
                f"gripper action server {self.gripper_action_name} is not available", throttle_duration_sec=5.0
            )
            return
        goal = self._gripper_type.Goal()
        goal.command.position = position
        goal.command.max_effort = self.gripper_max_effort
        self._gripper.send_goal_async(goal)
        self._last_goal_pos = position
        self._last_goal_time = now


def main(argv=None) -> int:
    return run(TeleopRelay, argv)


if __name__ == "__main__":
    raise SystemExit(main())
