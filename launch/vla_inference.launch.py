"""Run a trained policy on the CRANE-X7 (or on the simulated one with use_sim:=true).

    ros2 launch crane_x7_vla vla_inference.launch.py model_path:=/path/to/checkpoint-final \\
        instruction:="pick up the red cube"
    ros2 service call /vla_inference_node/start std_srvs/srv/Trigger      # the node starts paused
    ros2 topic pub --once /emergency_stop std_msgs/msg/Bool "{data: true}"

Remote inference: policy_server:=ws://gpu-host:8000 instead of model_path (see `crane-x7-vla serve`).
A checkpoint with more than one camera needs their topics:
    camera_names:="['primary', 'wrist']" camera_topics:="['/scene/image_raw', '/camera/color/image_raw']"
The robot's controllers (crane_x7_control) are started separately; with use_sim:=true the
simulated CRANE-X7 (crane_x7_sim) stands in for them and the cameras. The launch ends (exit
code 1) when the inference node or the simulator stops on its own, e.g. on a bad parameter.
"""

from launch import LaunchDescription
from launch.conditions import IfCondition
from launch_ros.actions import Node

from crane_x7_vla.ros.launch_args import Arg, declare, essential, params, typed

ARGUMENTS = {
    "model_path": Arg("", "checkpoint directory (policy_config.json + weights); empty with policy_server"),
    "policy_server": Arg("", "remote policy server, e.g. ws://gpu-host:8000 (instead of model_path)"),
    "policy_token": Arg("", "token of the policy server"),
    "instruction": Arg("", "language instruction (empty: the checkpoint's default)"),
    "device": Arg("", "device for the model: cpu, cuda, cuda:0 (empty: the backend's choice)"),
    "cpu_threads": Arg("0", "CPU threads of an openvla model on the CPU (0 = one per core; 1 beside a simulator)", int),
    "image_topic": Arg("/camera/color/image_raw", "image topic of the checkpoint's first camera"),
    "camera_names": Arg("['']", "further cameras with their own topic, e.g. ['wrist']", list),
    "camera_topics": Arg("['']", "their topics, same order", list),
    "control_rate": Arg("30.0", "commands per second (Hz)", float),
    "inference_rate": Arg("5.0", "policy calls per second at most (Hz)", float),
    "max_joint_velocity": Arg("1.0", "largest joint speed commanded (rad/s)", float),
    "stale_timeout": Arg(
        "0.5", "hold when the image or joint state is older than this or stamped in the future (s)", float
    ),
    "dry_run": Arg("false", "compute commands without sending them to the controllers", bool),
    "autostart": Arg("false", "start moving without waiting for ~/start", bool),
    "use_sim": Arg("false", "also start the simulated CRANE-X7 (crane_x7_sim)", bool),
    "task": Arg("reach", "simulated task (use_sim only)"),
    "seed": Arg("0", "simulated scene seed (use_sim only)", int),
}

#: Launch arguments that are parameters of the inference node under the same name.
NODE_PARAMETERS = (
    "model_path",
    "policy_server",
    "policy_token",
    "instruction",
    "device",
    "cpu_threads",
    "image_topic",
    "camera_names",
    "camera_topics",
    "control_rate",
    "inference_rate",
    "max_joint_velocity",
    "stale_timeout",
    "dry_run",
    "autostart",
)


def generate_launch_description():
    sim = Node(
        package="crane_x7_vla",
        executable="crane_x7_sim",
        name="crane_x7_sim",
        output="screen",
        parameters=[params(("task", "seed"), ARGUMENTS)],
        condition=IfCondition(typed("use_sim", ARGUMENTS)),
    )
    inference = Node(
        package="crane_x7_vla",
        executable="vla_inference_node",
        name="vla_inference_node",
        output="screen",
        parameters=[params(NODE_PARAMETERS, ARGUMENTS)],
    )
    return LaunchDescription([*declare(ARGUMENTS), *essential(sim), *essential(inference)])
