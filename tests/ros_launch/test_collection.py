"""Data collection through the real `ros2 launch`: sim_collection.launch.py, and
data_collection.launch.py with stand-ins of the vendor's crane_x7_control launch (both
arms) and of the RealSense node. Each records one episode that validates; Ctrl-C (SIGINT)
ends every process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode.jpeg import decode
from crane_x7_vla.episode.reader import load_episode
from crane_x7_vla.episode.validate import validate_dataset

from .conftest import requires_launch_stack, wait_until

pytestmark = requires_launch_stack


def _record(probe, launch, seconds: float, before_start=None) -> str:
    """Start the logger (again until it records), let it record `seconds`, stop: the answer."""

    def started():
        response = probe.trigger("/data_logger/start")
        return response if response.success else None

    wait_until(started, 60, "/data_logger/start to succeed", launch)
    if before_start is not None:
        before_start()
    time.sleep(seconds)
    response = probe.trigger("/data_logger/stop")
    assert response.success, response.message
    return response.message


def test_sim_collection_records_an_episode(readme_workspace, launches, domain_id, probe, tmp_path):
    out = tmp_path / "episodes"
    launch = launches(readme_workspace, "sim_collection.launch.py", f"output_dir:={out}", "seed:=4", "rate:=10",
                      "camera_width:=160", "camera_height:=120", domain_id=domain_id)
    launch.wait_for_output("logger ready", 90)
    reset = probe.trigger("/crane_x7_sim/reset", timeout=60)
    assert reset.success, reset.message
    _record(probe, launch, 4.0)
    launch.stop_cleanly()
    count, problems = validate_dataset(out)
    assert (count, problems) == (1, [])
    episode = load_episode(next(p for p in out.iterdir() if p.is_dir()))
    assert set(episode.images) == {"wrist", "primary"}
    assert decode(episode.images["primary"][0]).shape == (120, 160, 3)
    # the expert moved the follower during the recording
    moved = np.abs(episode.proprio - episode.proprio[0]).max()
    assert moved > 0.05, moved


def test_data_collection_with_vendor_standins(readme_workspace, launches, domain_id, probe, tmp_path):
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    out = tmp_path / "robot_episodes"
    launch = launches(readme_workspace, "data_collection.launch.py", f"output_dir:={out}",
                      "instruction:=pick up the red cube", "camera_serial:=012345678912",
                      "camera_profile:=320x240x15", "rate:=10", "relay_rate:=30", "max_velocity:=2",
                      "leader_manipulator_config:=/tmp/leader_low_gain.yaml", domain_id=domain_id)
    launch.wait_for_output("logger ready", 90)

    # What reached each vendor launch: its own arguments only, each arm its own port.
    follower = probe.parameters("/fake_arm", ["port_name", "baudrate", "use_d435", "manipulator_config_file_path"])
    leader = probe.parameters("/leader/fake_arm", ["port_name", "baudrate", "use_d435",
                                                  "manipulator_config_file_path"])
    assert follower == {"port_name": "/dev/ttyUSB0", "baudrate": "3000000", "use_d435": "true",
                        "manipulator_config_file_path": ""}
    assert leader == {"port_name": "/dev/ttyUSB1", "baudrate": "3000000", "use_d435": "false",
                      "manipulator_config_file_path": "/tmp/leader_low_gain.yaml"}
    camera = probe.parameters("/camera", ["serial_no", "rgb_camera.color_profile", "enable_depth"])
    assert camera == {"serial_no": "012345678912", "rgb_camera.color_profile": "320x240x15", "enable_depth": False}
    # Camera images travel with the installed large-data Fast DDS profile.
    profile = readme_workspace.package_prefix() / "share" / "crane_x7_vla" / "config" / "fastdds_large_data.xml"
    for pid in launch.session_processes():
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
        if "data_logger" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            assert environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") == str(profile)
            break
    else:
        raise AssertionError("no data_logger process in the launch")
    logger = probe.parameters("/data_logger", ["rate", "camera_names", "camera_topics", "instruction"])
    assert logger == {"rate": 10.0, "camera_names": ["primary"], "camera_topics": ["/camera/color/image_raw"],
                      "instruction": "pick up the red cube"}

    # A person moves the leader (here: its controller is told to); the follower copies it.
    target = robot.HOME_POSE.copy()
    target[0] += 0.4
    target[3] += 0.3
    move = probe.publisher(JointTrajectory, "/leader/crane_x7_arm_controller/joint_trajectory")

    def move_leader():
        msg = JointTrajectory(joint_names=list(robot.JOINT_NAMES[:7]))
        point = JointTrajectoryPoint(positions=[float(v) for v in target])
        point.time_from_start.sec = 2
        msg.points = [point]
        move.publish(msg)

    _record(probe, launch, 4.0, before_start=move_leader)
    launch.stop_cleanly()
    count, problems = validate_dataset(out)
    assert (count, problems) == (1, [])
    episode = load_episode(next(p for p in out.iterdir() if p.is_dir()))
    assert episode.instruction == "pick up the red cube"
    assert decode(episode.images["primary"][0]).shape == (240, 320, 3)
    # the follower followed the leader to the target
    assert abs(episode.proprio[-1, 0] - target[0]) < 0.05, episode.proprio[:, 0]
    assert abs(episode.proprio[0, 0] - robot.HOME_POSE[0]) < 0.05
