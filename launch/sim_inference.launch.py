"""Closed loop in simulation: the simulated CRANE-X7 and the inference node, moving at once.

    ros2 launch crane_x7_vla sim_inference.launch.py model_path:=outputs/crane_x7_openpi/checkpoint-final task:=reach

The simulated robot publishes its hand camera ("wrist") on /camera/color/image_raw (as the
RealSense on the real arm) and its scene camera ("primary") on /scene_camera/color/image_raw;
camera_names/camera_topics map them as sim_collection.launch.py records them, so a checkpoint
trained on simulated episodes sees the same cameras under the same names.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGUMENTS = {
    "model_path": ("", "checkpoint directory; empty with policy_server"),
    "policy_server": ("", "remote policy server, e.g. ws://gpu-host:8000"),
    "instruction": ("", "language instruction (empty: the checkpoint's default)"),
    "device": ("", "device for the model"),
    "cpu_threads": ("1", "CPU threads of an openvla model on the CPU (the simulator shares the CPU; 0 = one per core)"),
    "image_topic": ("/camera/color/image_raw", "image topic of the checkpoint's first camera"),
    "camera_names": ("['wrist', 'primary']", "camera names as sim_collection.launch.py records them"),
    "camera_topics": ("['/camera/color/image_raw', '/scene_camera/color/image_raw']", "their topics, same order"),
    "control_rate": ("30.0", "commands per second (Hz)"),
    "max_joint_velocity": ("1.0", "largest joint speed commanded (rad/s)"),
    "task": ("reach", "simulated task"),
    "seed": ("0", "simulated scene seed"),
}


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
    )
    inference = Node(
        package="crane_x7_vla",
        executable="vla_inference_node",
        name="vla_inference_node",
        output="screen",
        parameters=[{
            **{name: _value(name) for name in (
                "model_path", "policy_server", "instruction", "device", "cpu_threads", "image_topic", "camera_names",
                "camera_topics", "control_rate", "max_joint_velocity")},
            "autostart": True,
        }],
    )
    return LaunchDescription([*declared, sim, inference])
