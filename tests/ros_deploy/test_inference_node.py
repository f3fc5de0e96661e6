import json
import time

import numpy as np
from std_msgs.msg import Bool

from crane_x7_vla import robot
from crane_x7_vla.policy.loader import load_policy

from .conftest import now_ns, publish_when_matched, wait_for

CONTROL_RATE = 30.0
VMAX = 0.8


def first_points(trajs):
    return np.array([r.msg.points[0].positions for r in trajs])


def check_commands(trajs):
    """Every published point inside the limits; consecutive first points within the velocity limit."""
    dt = 1.0 / CONTROL_RATE
    for r in trajs:
        assert list(r.msg.joint_names) == list(robot.ARM_JOINTS)
        for pt in r.msg.points:
            q = np.array(pt.positions)
            assert np.all(np.isfinite(q)) and robot.within_limits(np.append(q, 0.5)).all()
    pts = first_points(trajs)
    if len(pts) > 1:
        # One control period apart, a command moves at most VMAX * dt; commands this subscriber
        # did not get (a keep-last queue on a busy machine) show as gaps in the writer's
        # sequence numbers, and the step between the commands received spans that many periods.
        seqs = np.array([r.seq for r in trajs])
        periods = np.diff(seqs)
        assert np.all(periods >= 1), "the node's commands arrived out of order or twice"
        steps = np.abs(np.diff(pts, axis=0)).max(axis=1)
        assert np.all(steps <= VMAX * dt * periods + 1e-9), (steps / (VMAX * dt * periods)).max()


def start_node(env, ckpt, **extra):
    params = dict(model_path=str(ckpt), control_rate=CONTROL_RATE, inference_rate=5.0,
                  max_joint_velocity=VMAX, stale_timeout=0.4, autostart=True, use_gripper=False)
    params.update(extra)
    return env.launch("vla_inference_node", **params)


def test_mean_trajectory_checkpoint_drives_the_arm(ros_env, mean_ckpt):
    arm = ros_env.robot()
    proc = start_node(ros_env, mean_ckpt)
    wait_for(lambda: len(arm.trajectories) > 20 or proc.poll() is not None, 30, "trajectory commands")
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(3.0)  # the mean trajectory lasts 3 s at 10 Hz
    trajs = arm.traj_since(0)
    check_commands(trajs)
    goal = load_policy(mean_ckpt).trajectory[-1]
    start_err = np.abs(robot.home_state()[:7] - goal[:7]).max()
    assert start_err > 0.1
    wait_for(lambda: np.abs(arm.q[:7] - goal[:7]).max() < 0.05, 30, "the arm to reach the end of the mean trajectory")
    # short-horizon trajectories: several points a control period apart (a command that holds,
    # e.g. on a frame that came late, is the one point)
    ahead = [r.msg for r in trajs if len(r.msg.points) > 1]
    assert ahead and all(len(m.points) == 3 for m in ahead)
    times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in ahead[-1].points]
    np.testing.assert_allclose(times, np.arange(1, 4) / CONTROL_RATE, atol=1e-6)
    wait_for(lambda: arm.diagnostics and arm.diagnostics[-1]["counts"]["inferences"] > 5, 30,
             "more than 5 policy calls in the diagnostics")
    diag = arm.diagnostics[-1]
    assert diag["mode"] == "running"
    assert diag["latency_ms"]["model_ms"]["n"] > 0 and diag["latency_ms"]["image_to_command_ms"]["p50"] > 0
    delivery = diag["latency_ms"]["image_delivery_ms"]
    assert delivery["n"] >= diag["latency_ms"]["model_ms"]["n"]  # every frame, not only those the policy used
    assert 0.0 <= delivery["p50"] <= delivery["p99"]


def test_stale_image_holds_and_emergency_stop_freezes(ros_env, mean_ckpt):
    arm = ros_env.robot()
    proc = start_node(ros_env, mean_ckpt)
    wait_for(lambda: len(arm.trajectories) > 10 or proc.poll() is not None, 30, "trajectory commands")
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.5)
    # camera stops: after stale_timeout every command the node publishes repeats the last one
    arm.send_images = False
    time.sleep(0.4 + 0.3)
    t_stale = now_ns()
    wait_for(lambda: len(arm.traj_since(t_stale)) > 10, 30, "commands published after the frames went stale")
    held = first_points(arm.traj_since(t_stale))
    assert np.ptp(held, axis=0).max() == 0.0
    wait_for(lambda: arm.diagnostics and arm.diagnostics[-1]["interventions"]["stale_image"] > 0, 30,
             "stale_image in diagnostics")
    # camera back: motion resumes
    arm.send_images = True
    t_back = now_ns()
    wait_for(lambda: len(arm.traj_since(t_back)) > 3 and np.ptp(first_points(arm.traj_since(t_back)), axis=0).max() > 0,
             30, "motion to resume")
    # emergency stop: at most one (holding) message, then nothing; the arm stays put
    publish_when_matched(arm.estop_pub, Bool(data=True))
    wait_for(lambda: arm.diagnostics and arm.diagnostics[-1]["mode"] == "emergency_stop", 30, "emergency stop")
    t_stop = now_ns()
    wait_for(lambda: arm.at_rest(), 30, "the arm to come to rest on the last command")
    q_stop = arm.q.copy()
    time.sleep(1.0)
    assert arm.traj_since(t_stop) == []
    assert np.abs(arm.q - q_stop).max() < 1e-9
    check_commands(arm.traj_since(0))
    resp = arm.call("start")
    assert not resp.success and "reset" in resp.message
    assert arm.call("reset").success
    time.sleep(0.5)
    assert arm.traj_since(t_stop) == []  # reset leaves the node paused
    assert arm.call("start").success
    wait_for(lambda: len(arm.traj_since(t_stop)) > 5, 30, "commands after start")


def test_images_stamped_long_ago_or_in_the_future_hold_the_arm(ros_env, mean_ckpt):
    arm = ros_env.robot()
    arm.image_stamp_offset = -10.0
    proc = start_node(ros_env, mean_ckpt)
    wait_for(lambda: len(arm.trajectories) > 10 or proc.poll() is not None, 30, "trajectory commands")
    assert proc.poll() is None, proc.stdout.read()
    for offset in (-10.0, 10.0):
        arm.image_stamp_offset = offset
        t = now_ns()
        wait_for(lambda: len(arm.traj_since(t)) > 10, 30, f"commands with frames stamped {offset:+g} s")
        held = first_points(arm.traj_since(t))
        assert np.all(held == robot.home_state()[:7])  # never moved from where it started
    wait_for(lambda: arm.diagnostics and sum(arm.diagnostics[-1]["counts"]["images_stale"].values()) > 20, 30,
             "stale frames counted in diagnostics")
    diag = arm.diagnostics[-1]
    assert diag["counts"]["inferences"] == 0 and diag["interventions"]["stale_image"] > 0
    # frames stamped now: motion starts
    arm.image_stamp_offset = 0.0
    wait_for(lambda: np.ptp(first_points(arm.traj_since(0)), axis=0).max() > 0, 30, "motion on fresh frames")
    check_commands(arm.traj_since(0))


def test_estop_service_and_pause(ros_env, mean_ckpt):
    arm = ros_env.robot()
    proc = start_node(ros_env, mean_ckpt, autostart=False)
    wait_for(lambda: arm.triggers["start"].service_is_ready() or proc.poll() is not None, 30, "services")
    time.sleep(0.5)
    assert arm.trajectories == []  # paused until ~/start
    wait_for(lambda: arm.call("start").success, 60, "start to succeed (policy loaded)")
    wait_for(lambda: len(arm.trajectories) > 5, 30, "commands")
    assert arm.call("pause").success
    t = now_ns()  # the pause publishes one last (holding) command before it answers, then nothing
    time.sleep(0.5)
    assert len(arm.traj_since(t)) == 0
    assert arm.call("start").success
    t = now_ns()
    wait_for(lambda: len(arm.traj_since(t)) > 2, 30, "commands after restart")
    assert arm.call("estop").success
    t = now_ns()  # the stop, too, publishes its last command before it answers
    time.sleep(0.6)
    assert arm.traj_since(t) == []


def test_refuses_a_checkpoint_with_another_joint_order(ros_env, mean_ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(mean_ckpt, bad)
    cfg = json.loads((bad / "policy_config.json").read_text())
    cfg["joint_names"][0], cfg["joint_names"][1] = cfg["joint_names"][1], cfg["joint_names"][0]
    (bad / "policy_config.json").write_text(json.dumps(cfg))
    proc = start_node(ros_env, bad)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "orders the joints differently" in out


def test_remote_policy_server_mode(ros_env, mean_ckpt):
    from crane_x7_vla.policy.server import PolicyServer

    server = PolicyServer(load_policy(mean_ckpt), port=0, token="tok").start()
    try:
        arm = ros_env.robot()
        proc = ros_env.launch("vla_inference_node", policy_server=server.url, policy_token="tok",
                              control_rate=CONTROL_RATE, max_joint_velocity=VMAX, autostart=True, use_gripper=False)
        wait_for(lambda: len(arm.trajectories) > 20 or proc.poll() is not None, 30, "commands from the remote policy")
        assert proc.poll() is None, proc.stdout.read()
        wait_for(lambda: server.calls > 2, 30, "more than two calls of the policy server")
        check_commands(arm.traj_since(0))
    finally:
        server.stop()
