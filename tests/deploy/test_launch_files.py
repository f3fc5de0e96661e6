from pathlib import Path

import pytest

from .launch_check import console_scripts, inspect_launch, node_parameters

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = console_scripts(ROOT / "setup.py")


def module_file(executable):
    return ROOT / (SCRIPTS[executable].replace(".", "/") + ".py")


@pytest.mark.parametrize("name", ["vla_inference.launch.py", "sim_inference.launch.py"])
def test_launch_file_refers_to_real_executables_parameters_and_arguments(name):
    info = inspect_launch(ROOT / "launch" / name)
    assert {n.executable for n in info.nodes} == {"vla_inference_node", "crane_x7_sim"}
    for node in info.nodes:
        assert node.package == "crane_x7_vla"
        assert node.executable in SCRIPTS, f"{name}: no console script {node.executable}"
        declared = node_parameters(module_file(node.executable))
        unknown = node.parameters - declared
        assert not unknown, f"{name}: {node.executable} declares no parameter(s) {sorted(unknown)}"
        assert node.parameters, f"{name}: {node.executable} gets no parameters"
    undeclared = info.configurations - set(info.arguments)
    assert not undeclared, f"{name}: LaunchConfiguration without DeclareLaunchArgument: {sorted(undeclared)}"


def test_vla_inference_launch_has_the_documented_arguments():
    info = inspect_launch(ROOT / "launch" / "vla_inference.launch.py")
    for arg in ("model_path", "instruction", "device", "image_topic", "control_rate", "policy_server", "use_sim"):
        assert arg in info.arguments
    assert info.arguments["image_topic"] == "/camera/color/image_raw"
    inference = next(n for n in info.nodes if n.executable == "vla_inference_node")
    assert {"model_path", "policy_server", "instruction", "device", "image_topic", "control_rate"} <= inference.parameters


def test_the_checker_catches_mistakes(tmp_path):
    bad = tmp_path / "bad.launch.py"
    bad.write_text(
        "from launch import LaunchDescription\n"
        "from launch_ros.actions import Node\n"
        "from launch.substitutions import LaunchConfiguration\n"
        "def generate_launch_description():\n"
        "    return LaunchDescription([Node(package='crane_x7_vla', executable='vla_inference_node',\n"
        "        parameters=[{'modelpath': LaunchConfiguration('model_path')}])])\n"
    )
    info = inspect_launch(bad)
    node = info.nodes[0]
    assert node.parameters - node_parameters(module_file(node.executable)) == {"modelpath"}
    assert info.configurations - set(info.arguments) == {"model_path"}
