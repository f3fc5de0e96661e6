"""The deploy launch files under the real `ros2 launch`, with a checkpoint: the simulated
CRANE-X7 gets arm commands on its controller topic, and Ctrl-C (SIGINT) ends every process."""

from __future__ import annotations

from crane_x7_vla import robot

from .conftest import requires_launch_stack, wait_until

pytestmark = requires_launch_stack


def _commands_arrive(probe, launch, start_service: bool) -> None:
    from trajectory_msgs.msg import JointTrajectory

    from crane_x7_vla.ros import msgs

    commands = probe.collect(JointTrajectory, robot.ARM_TRAJECTORY_TOPIC, msgs.STATE_QOS)
    launch.wait_for_output("crane_x7_sim", 60)
    if start_service:
        wait_until(lambda: probe.trigger("/vla_inference_node/start").success, 90,
                   "/vla_inference_node/start to succeed", launch)
    wait_until(lambda: len(commands) >= 10, 90, "arm commands on the controller topic", launch)
    assert list(commands[-1].joint_names) == list(robot.JOINT_NAMES[:7])


def test_sim_inference(readme_workspace, launches, domain_id, probe, checkpoint):
    launch = launches(readme_workspace, "sim_inference.launch.py", f"model_path:={checkpoint}", "control_rate:=20",
                      domain_id=domain_id)
    _commands_arrive(probe, launch, start_service=False)
    node = probe.parameters("/vla_inference_node", ["control_rate", "camera_names", "autostart", "cpu_threads"])
    assert node == {"control_rate": 20.0, "camera_names": ["wrist", "primary"], "autostart": True, "cpu_threads": 1}
    launch.stop_cleanly()


def test_vla_inference_use_sim(readme_workspace, launches, domain_id, probe, checkpoint):
    launch = launches(readme_workspace, "vla_inference.launch.py", f"model_path:={checkpoint}", "use_sim:=true",
                      "seed:=2", "max_joint_velocity:=1", domain_id=domain_id)
    _commands_arrive(probe, launch, start_service=True)  # the node starts paused on the robot
    assert probe.parameters("/vla_inference_node", ["max_joint_velocity"]) == {"max_joint_velocity": 1.0}
    assert probe.parameters("/crane_x7_sim", ["seed"])["seed"] >= 2
    launch.stop_cleanly()
