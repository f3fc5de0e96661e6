"""Run a trained policy on the CRANE-X7 (or on the simulated one with use_sim:=true).

    ros2 launch crane_x7_vla vla_inference.launch.py model_path:=/path/to/checkpoint-final \\
        instruction:="pick up the red cube"
    ros2 service call /vla_inference_node/start std_srvs/srv/Trigger      # the node starts paused
    ros2 topic pub --once /emergency_stop std_msgs/msg/Bool "{data: true}"

Remote inference: policy_server:=ws://gpu-host:8000 instead of model_path (see `crane-x7-vla serve`).
A checkpoint with more than one camera needs their topics:
    camera_names:="['primary', 'wrist']" camera_topics:="['/scene/image_raw', '/camera/color/image_raw']"
The robot's controllers (crane_x7_control) are started separately; with use_sim:=true the
simulated CRANE-X7 (crane_x7_sim) stands in for them and the cameras.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGUMENTS = {
    "model_path": ("", "checkpoint directory (policy_config.json + weights); empty with policy_server"),
    "policy_server": ("", "remote policy server, e.g. ws://gpu-host:8000 (instead of model_path)"),
    "policy_token": ("", "token of the policy server"),
    "instruction": ("", "language instruction (empty: the checkpoint's default)"),
    "device": ("", "device for the model: cpu, cuda, cuda:0 (empty: the backend's choice)"),
    "cpu_threads": ("0", "CPU threads of an openvla model on the CPU (0 = one per core; 1 beside a simulator)"),
    "image_topic": ("/camera/color/image_raw", "image topic of the checkpoint's first camera"),
    "camera_names": ("['']", "further cameras with their own topic, e.g. ['wrist']"),
    "camera_topics": ("['']", "their topics, same order"),
    "control_rate": ("30.0", "commands per second (Hz)"),
    "inference_rate": ("5.0", "policy calls per second at most (Hz)"),
    "max_joint_velocity": ("1.0", "largest joint speed commanded (rad/s)"),
    "stale_timeout": ("0.5", "hold when the image or joint state is older than this (s)"),
    "dry_run": ("false", "compute commands without sending them to the controllers"),
    "autostart": ("false", "start moving without waiting for ~/start"),
    "use_sim": ("false", "also start the simulated CRANE-X7 (crane_x7_sim)"),
    "task": ("reach", "simulated task (use_sim only)"),
    "seed": ("0", "simulated scene seed (use_sim only)"),
}

NODE_PARAMETERS = (
    "model_path", "policy_server", "policy_token", "instruction", "device", "cpu_threads", "image_topic", "camera_names",
    "camera_topics", "control_rate", "inference_rate", "max_joint_velocity", "stale_timeout", "dry_run", "autostart",
)


#: Parameters passed as text as typed (an instruction such as "yes" must not become a boolean).
STRING_PARAMETERS = ("model_path", "policy_server", "policy_token", "instruction", "device", "image_topic")


def _value(name):
    if name in STRING_PARAMETERS:
        return ParameterValue(LaunchConfiguration(name), value_type=str)
    return LaunchConfiguration(name)


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in ARGUMENTS.items()]
    sim = Node(
        package="crane_x7_vla",
        executable="crane_x7_sim",
        name="crane_x7_sim",
        output="screen",
        parameters=[{"task": LaunchConfiguration("task"), "seed": LaunchConfiguration("seed")}],
        condition=IfCondition(LaunchConfiguration("use_sim")),
    )
    inference = Node(
        package="crane_x7_vla",
        executable="vla_inference_node",
        name="vla_inference_node",
        output="screen",
        parameters=[{name: _value(name) for name in NODE_PARAMETERS}],
    )
    return LaunchDescription([*declared, sim, inference])
