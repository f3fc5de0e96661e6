"""Data collection in simulation: simulated CRANE-X7 + scripted expert + relay + logger.

    ros2 launch crane_x7_vla sim_collection.launch.py task:=pick_place output_dir:=~/crane_x7_sim_data

The same chain as on the real robot, with the scripted expert as the leader arm:
scripted_expert (the simulator with its expert on) publishes /leader/joint_states,
teleop_relay commands the simulated follower, data_logger records the follower's
/joint_states, the hand camera (wrist, /camera/color/image_raw) and the scene camera
(primary, /scene_camera/color/image_raw), the instruction (/instruction) and the task's
success flag (/crane_x7_sim/success). Drive episodes through the services
(/crane_x7_sim/reset, /data_logger/start|stop|discard), with `crane-x7-vla logger-keys`,
or let `crane-x7-vla collect --sim` do all of it. Here the expert moves `expert_start_delay`
(0.5 s) after each reset, so start the logger right after the reset; `collect --sim` holds the
expert instead (`expert_waits_for_start`) and calls /crane_x7_sim/start_expert once the logger
records, so that every episode begins with the arm at rest, as a deployed policy first sees it.
"""

from launch import LaunchDescription
from launch.actions import SetEnvironmentVariable
from launch.substitutions import PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from crane_x7_vla.ros.launch_args import Arg, declare, essential, params

ARGUMENTS = {
    "task": Arg("reach", "simulated task: reach or pick_place"),
    "seed": Arg("0", "seed of the first scene (each reset adds one)", int),
    "camera_width": Arg("320", "simulated camera width (pixels)", int),
    "camera_height": Arg("240", "simulated camera height (pixels)", int),
    "output_dir": Arg("~/crane_x7_sim_data", "directory the episodes are written into"),
    "rate": Arg("10.0", "steps recorded per second (Hz)", float),
    "start_near": Arg(
        "0.0", "share 0..1 of the resets that start with the hand a few cm from a cube (recovery demonstrations)", float
    ),
}

CAMERAS = ["wrist", "primary"]
CAMERA_TOPICS = ["/camera/color/image_raw", "/scene_camera/color/image_raw"]


def generate_launch_description():
    # Camera images between processes: a shared-memory segment that holds whole frames
    # (with the default one most 640x480 frames are lost; see the file).
    fastdds = SetEnvironmentVariable(
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        PathJoinSubstitution([FindPackageShare("crane_x7_vla"), "config", "fastdds_large_data.xml"]),
    )
    sim = Node(
        package="crane_x7_vla",
        executable="scripted_expert",
        name="crane_x7_sim",
        output="screen",
        parameters=[
            {
                **params(("task", "seed", "start_near", "camera_width", "camera_height"), ARGUMENTS),
                "cameras": CAMERAS,
                "camera_topics": CAMERA_TOPICS,
                "leader_joint_states_topic": "/leader/joint_states",
            }
        ],
    )
    relay = Node(
        package="crane_x7_vla",
        executable="teleop_relay",
        name="teleop_relay",
        output="screen",
        parameters=[
            {"leader_joint_states_topic": "/leader/joint_states", "follower_joint_states_topic": "/joint_states"}
        ],
    )
    logger = Node(
        package="crane_x7_vla",
        executable="data_logger",
        name="data_logger",
        output="screen",
        parameters=[
            {
                **params(("output_dir", "rate", "task"), ARGUMENTS),
                "camera_names": CAMERAS,
                "camera_topics": CAMERA_TOPICS,
                "success_topic": "/crane_x7_sim/success",
            }
        ],
    )
    return LaunchDescription([*declare(ARGUMENTS), fastdds, *essential(sim), *essential(relay), *essential(logger)])
