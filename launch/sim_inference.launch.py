"""Closed loop in simulation: the simulated CRANE-X7 and the inference node, moving at once.

    ros2 launch crane_x7_vla sim_inference.launch.py model_path:=outputs/crane_x7_openpi/checkpoint-final task:=reach

This is vla_inference.launch.py with use_sim:=true and autostart:=true, and camera names
and topics as sim_collection.launch.py records them: the simulated robot publishes its hand
camera ("wrist") on /camera/color/image_raw (as the RealSense on the real arm) and its scene
camera ("primary") on /scene_camera/color/image_raw, so a checkpoint trained on simulated
episodes sees the same cameras under the same names. Every argument of
vla_inference.launch.py can be given here too.
"""

from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from crane_x7_vla.ros.launch_args import Arg, declare

#: Arguments whose defaults differ from vla_inference.launch.py's for the simulated arm.
ARGUMENTS = {
    "cpu_threads": Arg(
        "1", "CPU threads of an openvla model on the CPU (the simulator shares the CPU; 0 = one per core)", int
    ),
    "camera_names": Arg("['wrist', 'primary']", "camera names as sim_collection.launch.py records them", list),
    "camera_topics": Arg(
        "['/camera/color/image_raw', '/scene_camera/color/image_raw']", "their topics, same order", list
    ),
    "autostart": Arg("true", "start moving without waiting for ~/start", bool),
}


def generate_launch_description():
    inference = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("crane_x7_vla"), "launch", "vla_inference.launch.py"])
        ),
        launch_arguments={"use_sim": "true", **{name: LaunchConfiguration(name) for name in ARGUMENTS}}.items(),
    )
    return LaunchDescription([*declare(ARGUMENTS), inference])
