"""Leader-follower data collection on the real CRANE-X7 (two arms, one RealSense).

    ros2 launch crane_x7_vla data_collection.launch.py \
        port_follower:=/dev/ttyUSB0 port_leader:=/dev/ttyUSB1 camera_serial:=123456789012 \
        output_dir:=~/crane_x7_data instruction:="pick up the red cube" rate:=10.0

Started here:
* the FOLLOWER arm: the vendor's crane_x7_control launch (use_d435:=true) in the root namespace, so its
  interfaces are the robot's usual ones (/joint_states, /crane_x7_arm_controller/...,
  /crane_x7_gripper_controller/gripper_cmd);
* the LEADER arm: the same vendor launch inside the namespace `leader_namespace`
  (/leader/joint_states, ...). Both arms use the same joint names, so only the namespace
  keeps them apart: the relay reads the leader's namespaced joint states, the logger
  records the follower's. Each vendor launch runs in its own scope and gets only the
  arguments given to it here, so nothing set for one arm reaches the other. Give the leader a
  servo configuration that lets a person move it by hand (low position gain) with
  leader_manipulator_config;
* a RealSense (realsense2_camera) named `camera` in the root namespace, which
  publishes /camera/color/image_raw (the logger's image_topic);
* teleop_relay (leader -> follower, clamped, velocity-limited) and data_logger. When either
  stops on its own (e.g. a parameter it cannot use), the whole launch ends with exit code 1
  rather than going on without recording.

Episodes: call the logger's services from another terminal, or use the keys there:
    crane-x7-vla logger-keys          # s start, e save, d discard, q quit
    ros2 service call /data_logger/start std_srvs/srv/Trigger
"""

from launch import LaunchDescription
from launch.actions import GroupAction, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.substitutions import FindPackageShare

from crane_x7_vla.ros.launch_args import Arg, declare, essential, one_item_list, param, params, string_parameter, typed

ARGUMENTS = {
    "port_follower": Arg("/dev/ttyUSB0", "serial port of the FOLLOWER arm (the one recorded)"),
    "port_leader": Arg("/dev/ttyUSB1", "serial port of the LEADER arm (moved by hand)"),
    "baudrate": Arg("3000000", "Dynamixel baud rate of both arms", int),
    "leader_namespace": Arg("leader", "namespace of the leader arm's nodes and topics"),
    "leader_manipulator_config": Arg("", "servo configuration file of the leader (low gains); empty: vendor default"),
    "camera_serial": Arg("", "RealSense serial number, e.g. 123456789012 (kept as text); empty: the first one found"),
    "camera_profile": Arg("640x480x30", "RealSense colour profile WIDTHxHEIGHTxFPS"),
    "image_topic": Arg("/camera/color/image_raw", "colour image topic the logger records"),
    "camera_name": Arg("primary", "camera name stored in the episodes (observation/image_<name>)"),
    "output_dir": Arg("~/crane_x7_data", "directory the episodes are written into"),
    "instruction": Arg("", "language instruction stored with each episode"),
    "rate": Arg("10.0", "steps recorded per second (Hz)", float),
    "relay_rate": Arg("30.0", "follower commands per second (Hz)", float),
    "max_velocity": Arg("1.5", "largest follower joint speed commanded by the relay (rad/s)", float),
}


def _vendor_control(namespace=None, **arguments):
    """The vendor's crane_x7_control launch in a scope of its own that holds only `arguments`:
    nothing else of this file (nor what the other arm's include sets) reaches it."""
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("crane_x7_control"), "launch", "crane_x7_control.launch.py"])
        )
    )
    if namespace is None:
        return GroupAction([include], scoped=True, forwarding=False, launch_configurations=arguments)
    # PushRosNamespace keeps the namespace in the launch configuration 'ros_namespace': the
    # scope passes that one on, too.
    scope = GroupAction(
        [include],
        scoped=True,
        forwarding=False,
        launch_configurations={**arguments, "ros_namespace": LaunchConfiguration("ros_namespace")},
    )
    return GroupAction([PushRosNamespace(namespace), scope])


def generate_launch_description():
    # Camera images between processes: a shared-memory segment that holds whole frames
    # (with the default one most 640x480 frames are lost; see the file).
    fastdds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        PathJoinSubstitution([FindPackageShare("crane_x7_vla"), "config", "fastdds_large_data.xml"]),
    )
    baudrate = typed("baudrate", ARGUMENTS)
    follower = _vendor_control(port_name=LaunchConfiguration("port_follower"), baudrate=baudrate, use_d435="true")
    leader = _vendor_control(
        LaunchConfiguration("leader_namespace"),
        port_name=LaunchConfiguration("port_leader"),
        baudrate=baudrate,
        manipulator_config_file_path=LaunchConfiguration("leader_manipulator_config"),
    )
    camera = Node(
        package="realsense2_camera",
        executable="realsense2_camera_node",
        name="camera",
        output="screen",
        ros_arguments=string_parameter("serial_no", "camera_serial"),
        parameters=[
            {
                "enable_color": True,
                "enable_depth": False,
                "rgb_camera.color_profile": param("camera_profile", ARGUMENTS),
            }
        ],
    )
    relay = Node(
        package="crane_x7_vla",
        executable="teleop_relay",
        name="teleop_relay",
        output="screen",
        parameters=[
            {
                "leader_joint_states_topic": PathJoinSubstitution(
                    ["/", LaunchConfiguration("leader_namespace"), "joint_states"]
                ),
                "follower_joint_states_topic": "/joint_states",
                "rate": param("relay_rate", ARGUMENTS),
                "max_velocity": param("max_velocity", ARGUMENTS),
            }
        ],
    )
    logger = Node(
        package="crane_x7_vla",
        executable="data_logger",
        name="data_logger",
        output="screen",
        parameters=[
            {
                **params(("output_dir", "instruction", "rate"), ARGUMENTS),
                "joint_states_topic": "/joint_states",
                "camera_names": one_item_list("camera_name"),
                "camera_topics": one_item_list("image_topic"),
            }
        ],
    )
    return LaunchDescription(
        [*declare(ARGUMENTS), fastdds, follower, leader, camera, *essential(relay), *essential(logger)]
    )
