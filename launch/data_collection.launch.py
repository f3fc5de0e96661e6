"""Leader-follower data collection on the real CRANE-X7 (two arms, one RealSense).

    ros2 launch crane_x7_vla data_collection.launch.py \
        port_follower:=/dev/ttyUSB0 port_leader:=/dev/ttyUSB1 camera_serial:="'123456789012'" \
        output_dir:=~/crane_x7_data instruction:="pick up the red cube" rate:=10.0

Started here:
* the FOLLOWER arm: the vendor's crane_x7_control launch in the root namespace, so its
  interfaces are the robot's usual ones (/joint_states, /crane_x7_arm_controller/...,
  /crane_x7_gripper_controller/gripper_cmd);
* the LEADER arm: the same vendor launch inside the namespace `leader_namespace`
  (/leader/joint_states, ...). Both arms use the same joint names, so only the namespace
  keeps them apart: the relay reads the leader's namespaced joint states, the logger
  records the follower's. Give the leader a servo configuration that lets a person move
  it by hand (low position gain) with leader_manipulator_config;
* a RealSense (realsense2_camera) named `camera` in the root namespace, which
  publishes /camera/color/image_raw (the logger's image_topic);
* teleop_relay (leader -> follower, clamped, velocity-limited) and data_logger.

Episodes: call the logger's services from another terminal, or use the keys there:
    crane-x7-vla logger-keys          # s start, e save, d discard, q quit
    ros2 service call /data_logger/start std_srvs/srv/Trigger
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "port_follower": ("/dev/ttyUSB0", "serial port of the FOLLOWER arm (the one recorded)"),
    "port_leader": ("/dev/ttyUSB1", "serial port of the LEADER arm (moved by hand)"),
    "baudrate": ("3000000", "Dynamixel baud rate of both arms"),
    "leader_namespace": ("leader", "namespace of the leader arm's nodes and topics"),
    "leader_manipulator_config": ("", "servo configuration file of the leader (low gains); empty: vendor default"),
    "camera_serial": ("", "RealSense serial number (quoted, e.g. \"'123456789012'\"); empty: the first one found"),
    "camera_profile": ("640x480x30", "RealSense colour profile WIDTHxHEIGHTxFPS"),
    "image_topic": ("/camera/color/image_raw", "colour image topic the logger records"),
    "camera_name": ("primary", "camera name stored in the episodes (observation/image_<name>)"),
    "output_dir": ("~/crane_x7_data", "directory the episodes are written into"),
    "instruction": ("", "language instruction stored with each episode"),
    "rate": ("10.0", "steps recorded per second (Hz)"),
    "relay_rate": ("30.0", "follower commands per second (Hz)"),
    "max_velocity": ("1.5", "largest follower joint speed commanded by the relay (rad/s)"),
}

#: Passed as text as typed (an instruction such as "yes" or a serial number must stay a string).
STRING_ARGUMENTS = ("output_dir", "instruction", "image_topic", "camera_name", "camera_serial")


def _arg(name):
    if name in STRING_ARGUMENTS:
        return ParameterValue(LaunchConfiguration(name), value_type=str)
    return LaunchConfiguration(name)


def _vendor_control(port, extra=None):
    return IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("crane_x7_control"), "launch", "crane_x7_control.launch.py"])
        ),
        launch_arguments={"port_name": port, "baudrate": LaunchConfiguration("baudrate"), **(extra or {})}.items(),
    )


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in ARGUMENTS.items()]
    # Camera images between processes: a shared-memory segment that holds whole frames
    # (with the default one most 640x480 frames are lost; see the file).
    fastdds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        PathJoinSubstitution([FindPackageShare("crane_x7_vla"), "config", "fastdds_large_data.xml"]),
    )
    follower = _vendor_control(LaunchConfiguration("port_follower"), {"use_d435": "true"})
    leader = GroupAction([
        PushRosNamespace(LaunchConfiguration("leader_namespace")),
        _vendor_control(
            LaunchConfiguration("port_leader"),
            {"manipulator_config_file_path": LaunchConfiguration("leader_manipulator_config")},
        ),
    ])
    camera = Node(
        package="realsense2_camera",
        executable="realsense2_camera_node",
        name="camera",
        output="screen",
        parameters=[{
            "serial_no": _arg("camera_serial"),
            "enable_color": True,
            "enable_depth": False,
            "rgb_camera.color_profile": LaunchConfiguration("camera_profile"),
        }],
    )
    relay = Node(
        package="crane_x7_vla",
        executable="teleop_relay",
        name="teleop_relay",
        output="screen",
        parameters=[{
            "leader_joint_states_topic": PathJoinSubstitution(["/", LaunchConfiguration("leader_namespace"), "joint_states"]),
            "follower_joint_states_topic": "/joint_states",
            "rate": LaunchConfiguration("relay_rate"),
            "max_velocity": LaunchConfiguration("max_velocity"),
        }],
    )
    logger = Node(
        package="crane_x7_vla",
        executable="data_logger",
        name="data_logger",
        output="screen",
        parameters=[{
            "output_dir": _arg("output_dir"),
            "instruction": _arg("instruction"),
            "rate": LaunchConfiguration("rate"),
            "joint_states_topic": "/joint_states",
            "camera_names": [LaunchConfiguration("camera_name")],
            "camera_topics": [LaunchConfiguration("image_topic")],
        }],
    )
    return LaunchDescription([*declared, fastdds, follower, leader, camera, relay, logger])
