"""Launch arguments under the real `ros2 launch`: every numeric argument works written as a
whole number and as a decimal and reaches its node with the node's type; list arguments take
one entry or two; a value that does not fit ends the launch with one line naming it; a node
that stops at start-up ends the launch with a non-zero exit code; the compose services'
commands run as written."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import requires_launch_stack, wait_until

pytestmark = requires_launch_stack


def _numbers(values: dict, decimal: bool) -> list[str]:
    return [f"{name}:={float(v) if decimal else int(v)}" for name, v in values.items()]


@pytest.mark.parametrize("decimal", [False, True], ids=["whole", "decimal"])
def test_data_collection_numbers(readme_workspace, launches, domain_id, probe, tmp_path, decimal):
    values = {"rate": 10, "relay_rate": 25, "max_velocity": 2, "baudrate": 1000000}
    launch = launches(readme_workspace, "data_collection.launch.py", f"output_dir:={tmp_path}",
                      *_numbers(values, decimal), domain_id=domain_id)
    launch.wait_for_output("logger ready", 90)
    assert probe.parameters("/data_logger", ["rate"]) == {"rate": 10.0}
    assert probe.parameters("/teleop_relay", ["rate", "max_velocity"]) == {"rate": 25.0, "max_velocity": 2.0}
    # The vendor launch takes the baud rate as text, written as a whole number.
    assert probe.parameters("/fake_arm", ["baudrate"]) == {"baudrate": "1000000"}
    launch.stop_cleanly()


@pytest.mark.parametrize("decimal", [False, True], ids=["whole", "decimal"])
def test_sim_collection_numbers(readme_workspace, launches, domain_id, probe, tmp_path, decimal):
    values = {"seed": 7, "camera_width": 160, "camera_height": 120, "rate": 5, "start_near": 1}
    launch = launches(readme_workspace, "sim_collection.launch.py", f"output_dir:={tmp_path}",
                      *_numbers(values, decimal), domain_id=domain_id)
    launch.wait_for_output("logger ready", 90)
    sim = probe.parameters("/crane_x7_sim", ["seed", "camera_width", "camera_height", "start_near"])
    assert sim.pop("seed") in (7, 8)  # each reset adds one
    assert sim == {"camera_width": 160, "camera_height": 120, "start_near": 1.0}
    assert probe.parameters("/data_logger", ["rate"]) == {"rate": 5.0}
    launch.stop_cleanly()


@pytest.mark.parametrize("decimal", [False, True], ids=["whole", "decimal"])
def test_vla_inference_numbers_and_lists(readme_workspace, launches, domain_id, probe, checkpoint, decimal):
    values = {"cpu_threads": 1, "control_rate": 20, "inference_rate": 4, "max_joint_velocity": 1,
              "stale_timeout": 2, "seed": 3}
    # one camera without brackets (whole) / two in a list (decimal)
    cameras = (["camera_names:=wrist", "camera_topics:=/camera/color/image_raw"] if not decimal else
               ["camera_names:=['wrist', 'primary']",
                "camera_topics:=['/camera/color/image_raw', '/scene_camera/color/image_raw']"])
    launch = launches(readme_workspace, "vla_inference.launch.py", f"model_path:={checkpoint}", "use_sim:=true",
                      "dry_run:=true", *cameras, *_numbers(values, decimal), domain_id=domain_id)
    launch.wait_for_output("crane_x7_sim", 60)
    names = ["cpu_threads", "control_rate", "inference_rate", "max_joint_velocity", "stale_timeout", "dry_run",
             "camera_names", "camera_topics"]
    got = wait_until(lambda: probe.parameters("/vla_inference_node", names), 60, "the inference node's parameters",
                     launch)
    assert got == {
        "cpu_threads": 1, "control_rate": 20.0, "inference_rate": 4.0, "max_joint_velocity": 1.0,
        "stale_timeout": 2.0, "dry_run": True,
        "camera_names": ["wrist"] if not decimal else ["wrist", "primary"],
        "camera_topics": (["/camera/color/image_raw"] if not decimal else
                          ["/camera/color/image_raw", "/scene_camera/color/image_raw"]),
    }
    assert probe.parameters("/crane_x7_sim", ["seed"])["seed"] >= 3
    launch.stop_cleanly()


@pytest.mark.parametrize("launch_file, argument, words", [
    ("sim_collection.launch.py", "rate:=fast", "launch argument rate:='fast' is not a number"),
    ("sim_collection.launch.py", "seed:=3.5", "launch argument seed:='3.5' is not a whole number"),
    ("vla_inference.launch.py", "use_sim:=maybe", "launch argument use_sim:='maybe' is not true or false"),
    ("vla_inference.launch.py", "camera_names:=[[a]]", "launch argument camera_names:='[[a]]' is not a list"),
])
def test_a_value_that_does_not_fit_ends_the_launch(readme_workspace, launches, domain_id, launch_file, argument,
                                                  words):
    launch = launches(readme_workspace, launch_file, argument, domain_id=domain_id)
    assert launch.wait(60) == 1
    errors = [line for line in launch.output().splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and words in errors[0], launch.output()
    assert launch.leftovers() == []


def test_a_node_refusing_its_parameters_ends_the_launch(readme_workspace, launches, domain_id, checkpoint):
    # 50 rad/s is above the arm's limit: the inference node refuses to start.
    launch = launches(readme_workspace, "vla_inference.launch.py", f"model_path:={checkpoint}", "use_sim:=true",
                      "max_joint_velocity:=50", domain_id=domain_id)
    assert launch.wait(90) == 1, launch.output()[-4000:]
    output = launch.output()
    assert re.search(r"\[vla_inference_node-\d\] error: max_joint_velocity 50", output), output[-4000:]
    assert "[ERROR] [launch]: Caught exception in launch (see debug for traceback): /vla_inference_node exited with " \
           "code 2" in output
    assert "Traceback" not in output
    assert launch.leftovers() == []


def test_the_old_quoted_serial_still_reaches_the_camera_as_text(readme_workspace, launches, domain_id, probe,
                                                               tmp_path):
    launch = launches(readme_workspace, "data_collection.launch.py", f"output_dir:={tmp_path}",
                      "camera_serial:='123456789012'", domain_id=domain_id)
    launch.wait_for_output("stand-in RealSense", 90)
    assert probe.parameters("/camera", ["serial_no"]) == {"serial_no": "123456789012"}
    launch.stop_cleanly()


@pytest.mark.parametrize("service", ["teleop-leader-logger", "vla-inference"])
def test_compose_service_command(docker_workspace, launches, domain_id, probe, tmp_path, checkpoint, service):
    """The command of the compose service, as compose resolves it with whole-number rates in
    .env, runs under ros2 launch in the image's layout (/workspace is the mounted folder)."""
    from docker.conftest import compose

    env_file = tmp_path / ".env"
    env_file.write_text("COLLECT_RATE=10\nCONTROL_RATE=30\nINFERENCE_CHECKPOINT=ckpt\nINFERENCE_DEVICE=cpu\n")
    config = json.loads(compose("-f", "compose.yaml", "--profile", "collect", "--profile", "inference", "config",
                                "--format", "json", env_file=env_file).stdout)
    command = config["services"][service]["command"]
    assert command[:3] == ["ros2", "launch", "crane_x7_vla"]
    workspace_dir = tmp_path / "workspace"
    (workspace_dir / "outputs").mkdir(parents=True)
    (workspace_dir / "outputs" / "ckpt").symlink_to(checkpoint)
    args = [a.replace("/workspace/", f"{workspace_dir}/") for a in command[4:]]
    assert "rate:=10" in args or "control_rate:=30" in args
    launch = launches(docker_workspace, command[3], *args, domain_id=domain_id)
    if service == "teleop-leader-logger":
        launch.wait_for_output("logger ready", 90)
        assert probe.parameters("/data_logger", ["rate"]) == {"rate": 10.0}
    else:
        got = wait_until(lambda: probe.parameters("/vla_inference_node", ["control_rate", "model_path"]), 60,
                         "the inference node", launch)
        assert got == {"control_rate": 30.0, "model_path": f"{workspace_dir}/outputs/ckpt"}
    launch.stop_cleanly()
