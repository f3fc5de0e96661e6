"""The collection launch files, read without running them (`ros2 launch` is not
installable here): every package, executable, launch file, launch argument and node
parameter they name must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Our executables (setup.py console scripts) and the modules whose parameters they declare.
NODE_MODULES = {
    "crane_x7_sim": ["crane_x7_vla/ros/sim_node.py"],
    "scripted_expert": ["crane_x7_vla/ros/expert_node.py", "crane_x7_vla/ros/sim_node.py"],
    "teleop_relay": ["crane_x7_vla/ros/teleop_relay.py"],
    "data_logger": ["crane_x7_vla/ros/data_logger.py"],
}
# Other packages' interfaces, as published by their maintainers:
# rt-net/crane_x7_ros (jazzy) crane_x7_control/launch/crane_x7_control.launch.py arguments,
VENDOR_LAUNCH_ARGUMENTS = {
    ("crane_x7_control", "crane_x7_control.launch.py"): {
        "port_name", "baudrate", "timeout_seconds", "manipulator_config_file_path",
        "manipulator_links_file_path", "use_gazebo", "use_d435", "use_mock_components",
        "gz_control_config_package", "gz_control_config_file_path",
    },
}
# and realsense-ros 4.x realsense2_camera_node parameters used here.
EXTERNAL_NODE_PARAMETERS = {
    ("realsense2_camera", "realsense2_camera_node"): {
        "serial_no", "camera_name", "camera_namespace", "enable_color", "enable_depth",
        "rgb_camera.color_profile", "rgb_camera.color_format",
    },
}


def console_scripts() -> set[str]:
    return set(re.findall(r'"([\w-]+) = [\w.]+:main"', (ROOT / "setup.py").read_text()))


def declared_parameters(executable: str) -> set[str]:
    """Names passed to msgs.declare(self, NAME, ...) or its `p(NAME, ...)` shorthand."""
    names = set()
    for rel in NODE_MODULES[executable]:
        tree = ast.parse((ROOT / rel).read_text())
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            func = call.func
            is_declare = (isinstance(func, ast.Attribute) and func.attr == "declare") or (
                isinstance(func, ast.Name) and func.id == "p")
            args = call.args[1:] if isinstance(func, ast.Attribute) else call.args
            if is_declare and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                names.add(args[0].value)
    return names


def package_dependencies() -> set[str]:
    return set(re.findall(r"<(?:exec_)?depend>([\w]+)</", (ROOT / "package.xml").read_text()))


def _keys(node) -> set[str]:
    """Literal keys of a dict display (following ** of dict displays and `x or {}`)."""
    keys = set()
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if k is None:
                keys |= _keys(v)
            else:
                keys.add(ast.literal_eval(k))
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            keys |= _keys(v)
    return keys


def inspect_launch(path: Path) -> dict:
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    assert "generate_launch_description" in functions, f"{path.name}: no generate_launch_description()"
    constants = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            try:
                constants[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    name_of = lambda c: getattr(c.func, "id", getattr(c.func, "attr", None))  # noqa: E731

    arguments = set(constants.get("ARGUMENTS", {}))
    for c in calls:
        if name_of(c) == "DeclareLaunchArgument" and isinstance(c.args[0], ast.Constant):
            arguments.add(c.args[0].value)
    configurations = {c.args[0].value for c in calls
                      if name_of(c) == "LaunchConfiguration" and isinstance(c.args[0], ast.Constant)}
    dynamic = [c for c in calls if name_of(c) == "LaunchConfiguration" and not isinstance(c.args[0], ast.Constant)]
    assert not dynamic or all(isinstance(c.args[0], ast.Name) and c.args[0].id == "name" for c in dynamic)
    # _arg(name) helpers: their literal arguments are launch configurations too.
    for c in calls:
        if name_of(c) == "_arg" and isinstance(c.args[0], ast.Constant):
            configurations.add(c.args[0].value)

    nodes = []
    for c in calls:
        if name_of(c) != "Node":
            continue
        kw = {k.arg: k.value for k in c.keywords}
        params = set()
        for entry in kw["parameters"].elts:
            params |= _keys(entry)
        nodes.append((ast.literal_eval(kw["package"]), ast.literal_eval(kw["executable"]), params))

    includes = []
    for c in calls:
        if name_of(c) != "IncludeLaunchDescription":
            continue
        packages = [s.args[0].value for s in ast.walk(c) if isinstance(s, ast.Call) and name_of(s) == "FindPackageShare"]
        files = [s.value for s in ast.walk(c) if isinstance(s, ast.Constant) and str(s.value).endswith(".launch.py")]
        kw = {k.arg: k.value for k in c.keywords}
        given = set()
        for sub in ast.walk(kw["launch_arguments"]):
            given |= _keys(sub) if isinstance(sub, ast.Dict) else set()
        # Arguments added by callers of the helper function that holds this include.
        holder = next(f for f in functions.values() if c in list(ast.walk(f)))
        uses = 1
        if holder.name != "generate_launch_description":
            holder_calls = [call for call in calls if name_of(call) == holder.name]
            uses = len(holder_calls)
            for call in holder_calls:
                if len(call.args) > 1:
                    given |= _keys(call.args[1])
        includes += [(packages[0], files[0], given)] * uses
    return {"arguments": arguments, "configurations": configurations, "nodes": nodes, "includes": includes,
            "constants": constants}


def check(path: Path) -> list[str]:
    info = inspect_launch(path)
    problems = []
    scripts = console_scripts()
    deps = package_dependencies()
    for conf in sorted(info["configurations"] - info["arguments"]):
        problems.append(f"LaunchConfiguration('{conf}') has no DeclareLaunchArgument")
    for package, executable, params in info["nodes"]:
        if package == "crane_x7_vla":
            if executable not in scripts:
                problems.append(f"crane_x7_vla has no executable '{executable}'")
                continue
            unknown = params - declared_parameters(executable)
        elif (package, executable) in EXTERNAL_NODE_PARAMETERS:
            unknown = params - EXTERNAL_NODE_PARAMETERS[(package, executable)]
            if package not in deps:
                problems.append(f"package.xml does not depend on {package}")
        else:
            problems.append(f"unknown node {package}/{executable}")
            continue
        problems += [f"{executable} has no parameter '{p}'" for p in sorted(unknown)]
    for package, launch_file, given in info["includes"]:
        known = VENDOR_LAUNCH_ARGUMENTS.get((package, launch_file))
        if known is None:
            problems.append(f"unknown launch file {package}/{launch_file}")
            continue
        if package not in deps:
            problems.append(f"package.xml does not depend on {package}")
        problems += [f"{package}/{launch_file} has no argument '{a}'" for a in sorted(given - known)]
    return problems


@pytest.mark.parametrize("name", ["data_collection.launch.py", "sim_collection.launch.py"])
def test_collection_launch_files_name_only_things_that_exist(name):
    path = ROOT / "launch" / name
    assert check(path) == []
    info = inspect_launch(path)
    executables = {e for _, e, _ in info["nodes"]}
    assert {"teleop_relay", "data_logger"} <= executables
    for package, executable, params in info["nodes"]:
        assert params, f"{name}: {executable} gets no parameters"


def test_real_robot_launch_keeps_leader_and_follower_apart():
    info = inspect_launch(ROOT / "launch" / "data_collection.launch.py")
    assert {"port_leader", "port_follower", "camera_serial", "output_dir", "instruction", "rate"} <= info["arguments"]
    assert [i[0] for i in info["includes"]] == ["crane_x7_control", "crane_x7_control"]
    assert {"port_name"} <= info["includes"][0][2]
    text = (ROOT / "launch" / "data_collection.launch.py").read_text()
    assert "PushRosNamespace" in text  # the leader's vendor launch runs in its own namespace
    # The repos file brings the vendor package that holds crane_x7_control.
    assert "rt-net/crane_x7_ros" in (ROOT / "ros2_ws" / "crane_x7.repos").read_text()


def test_sim_launch_records_the_simulators_cameras_and_success():
    info = inspect_launch(ROOT / "launch" / "sim_collection.launch.py")
    nodes = {e: p for _, e, p in info["nodes"]}
    assert {"scripted_expert", "teleop_relay", "data_logger"} == set(nodes)
    assert {"success_topic", "camera_names", "camera_topics"} <= nodes["data_logger"]
    assert len(info["constants"]["CAMERAS"]) == len(info["constants"]["CAMERA_TOPICS"])


def test_the_checker_catches_mistakes(tmp_path):
    bad = tmp_path / "bad.launch.py"
    bad.write_text(
        "from launch_ros.actions import Node\n"
        "def generate_launch_description():\n"
        "    a = Node(package='crane_x7_vla', executable='data_logger', parameters=[{'ouput_dir': LaunchConfiguration('out')}])\n"
        "    b = Node(package='crane_x7_vla', executable='teleop_relayy', parameters=[{'rate': 1.0}])\n"
        "    c = IncludeLaunchDescription(PythonLaunchDescriptionSource(PathJoinSubstitution([\n"
        "        FindPackageShare('crane_x7_control'), 'launch', 'crane_x7_control.launch.py'])),\n"
        "        launch_arguments={'port': '/dev/ttyUSB0'}.items())\n"
    )
    problems = check(bad)
    assert "LaunchConfiguration('out') has no DeclareLaunchArgument" in problems
    assert "data_logger has no parameter 'ouput_dir'" in problems
    assert "crane_x7_vla has no executable 'teleop_relayy'" in problems
    assert "crane_x7_control/crane_x7_control.launch.py has no argument 'port'" in problems


@pytest.mark.parametrize("name", ["data_collection.launch.py", "sim_collection.launch.py"])
def test_launch_files_load_the_installed_fastdds_profile(name):
    tree = ast.parse((ROOT / "launch" / name).read_text())
    env_calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "SetEnvironmentVariable"]
    assert len(env_calls) == 1 and env_calls[0].args[0].value == "FASTRTPS_DEFAULT_PROFILES_FILE"
    parts = [n.value for n in ast.walk(env_calls[0]) if isinstance(n, ast.Constant)][1:]
    packages = [c.args[0].value for c in ast.walk(env_calls[0])
                if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "FindPackageShare"]
    assert packages == ["crane_x7_vla"] and {"config", "fastdds_large_data.xml"} <= set(parts)
    assert (ROOT / "config" / "fastdds_large_data.xml").exists()
    assert 'glob("config/*.xml")' in (ROOT / "setup.py").read_text()  # installed into share/crane_x7_vla/config
    import xml.etree.ElementTree as ET

    ET.parse(ROOT / "config" / "fastdds_large_data.xml")  # well-formed
