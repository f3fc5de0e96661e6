"""docker compose configuration: every profile validates with the real Compose binary and
resolves to the documented services, GPUs, shared memory, mounts and variables."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ENV_TEMPLATE, PROFILES, ROOT, compose, compose_config, read_env_template, tool

COMPOSE_FILES = [ROOT / "compose.yaml", ROOT / "docker" / "compose.yaml"]
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?+])([^}]*))?\}")
GPU_SERVICES = {"vla-finetune-openvla": "openvla", "vla-finetune-openpi": "openpi",
                "policy-server": "server", "vla-dev-openvla": "dev", "vla-dev-openpi": "dev"}
ROS_SERVICES = {"teleop-leader-logger": "collect", "vla-inference": "inference", "ros-dev": "dev"}


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.strip().lower())
    assert m, f"cannot read size {size!r}"
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


def _mounts(service: dict) -> dict[str, dict]:
    return {v["target"]: v for v in service.get("volumes", [])}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_validates_from_repository_root(profile):
    cfg = compose_config(profile)
    assert set(cfg["services"]) == PROFILES[profile]


def test_docker_compose_file_validates_on_its_own():
    args = [a for p in PROFILES for a in ("--profile", p)]
    proc = compose("-f", "docker/compose.yaml", *args, "config", "--services")
    assert set(proc.stdout.split()) == set().union(*PROFILES.values())


def test_broken_compose_file_is_rejected(tmp_path):
    (tmp_path / "docker").mkdir()
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    text = (ROOT / "docker" / "compose.yaml").read_text()
    assert "shm_size: ${SHM_SIZE:-16gb}" in text
    (tmp_path / "docker" / "compose.yaml").write_text(text.replace("shm_size: ${SHM_SIZE:-16gb}", "shm_size: [16gb]"))
    proc = compose("-f", "compose.yaml", "--profile", "openvla", "config", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "shm_size" in proc.stderr


@pytest.mark.parametrize("service", sorted(GPU_SERVICES))
def test_gpu_services(service):
    env = read_env_template()
    svc = compose_config(GPU_SERVICES[service])["services"][service]
    (gpu,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert gpu["count"] == int(env["GPU_COUNT"])
    assert int(svc["shm_size"]) == _bytes(env["SHM_SIZE"])
    assert svc["environment"]["CUDA_VISIBLE_DEVICES"] == env["CUDA_VISIBLE_DEVICES"]
    assert svc["environment"]["WANDB_MODE"] == "disabled"
    mounts = _mounts(svc)
    assert Path(mounts["/workspace/data"]["source"]) == ROOT / "data"
    assert Path(mounts["/workspace/outputs"]["source"]) == ROOT / "outputs"
    assert mounts["/cache/huggingface"]["type"] == "volume"
    assert svc["environment"]["HF_HOME"] == "/cache/huggingface"
    assert Path(svc["build"]["context"]) == ROOT
    assert svc["working_dir"] == "/workspace"


def test_env_file_values_reach_the_services(tmp_path):
    """A user's .env next to compose.yaml fills in the services and reaches the containers."""
    env = ENV_TEMPLATE.read_text()
    for key, value in {"GPU_COUNT": "2", "CUDA_VISIBLE_DEVICES": "0,1", "SHM_SIZE": "32gb",
                       "DATA_DIR": "/mnt/robot-data", "USER_ID": "1234", "LEADER_PORT": "/dev/ttyUSB7",
                       "HF_TOKEN": "hf_example"}.items():
        env, n = re.subn(rf"^{key}=.*$", f"{key}={value}", env, flags=re.M)
        assert n == 1, key
    (tmp_path / "docker").mkdir()
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    shutil.copy(ROOT / "docker" / "compose.yaml", tmp_path / "docker" / "compose.yaml")
    (tmp_path / ".env").write_text(env)
    cmd = [tool("docker-compose"), "--profile", "openvla", "--profile", "collect", "config", "--format", "json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)["services"]
    train = cfg["vla-finetune-openvla"]
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    assert train["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert train["environment"]["HF_TOKEN"] == "hf_example"
    assert train["environment"]["INSTRUCTION"] == "Pick and place the object"  # via env_file
    assert int(train["shm_size"]) == 32 * 1024**3
    assert _mounts(train)["/workspace/data"]["source"] == "/mnt/robot-data"
    assert Path(_mounts(train)["/workspace/outputs"]["source"]) == tmp_path / "outputs"
    assert train["build"]["args"]["USER_ID"] == "1234"
    logger = cfg["teleop-leader-logger"]
    assert {"source": "/dev/ttyUSB7", "target": "/dev/ttyUSB7", "permissions": "rwm"} in logger["devices"]
    assert "port_leader:=/dev/ttyUSB7" in logger["command"]
    assert logger["environment"]["HF_TOKEN"] == "hf_example"


def test_robot_side_services():
    env = read_env_template()
    collect = compose_config("collect")["services"]["teleop-leader-logger"]
    assert collect["network_mode"] == "host"
    assert {d["source"] for d in collect["devices"]} == {env["LEADER_PORT"], env["FOLLOWER_PORT"]}
    assert collect["command"][:4] == ["ros2", "launch", "crane_x7_vla", "data_collection.launch.py"]
    assert collect["environment"]["ROS_DOMAIN_ID"] == env["ROS_DOMAIN_ID"]
    assert Path(_mounts(collect)["/workspace/data"]["source"]) == ROOT / "data"
    infer = compose_config("inference")["services"]["vla-inference"]
    assert infer["network_mode"] == "host"
    assert infer["command"][:4] == ["ros2", "launch", "crane_x7_vla", "vla_inference.launch.py"]
    assert any(a.startswith("model_path:=/workspace/outputs/") for a in infer["command"])


def test_policy_server_listens_on_all_interfaces():
    env = read_env_template()
    svc = compose_config("server")["services"]["policy-server"]
    cmd = svc["command"]
    assert cmd[:2] == ["crane-x7-vla", "serve"] and cmd[2].startswith("/workspace/outputs/")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8000"
    (port,) = svc["ports"]
    assert port["target"] == 8000 and port["published"] == env["POLICY_SERVER_PORT"]
    assert svc["build"]["dockerfile"] == f"docker/Dockerfile.{env['SERVER_BACKEND']}"


def test_dev_services_mount_the_source():
    cfg = compose_config("dev")["services"]
    assert Path(_mounts(cfg["vla-dev-openvla"])["/workspace/src"]["source"]) == ROOT
    assert Path(_mounts(cfg["vla-dev-openpi"])["/workspace/src"]["source"]) == ROOT
    assert Path(_mounts(cfg["ros-dev"])["/ros2_ws/src/crane_x7_vla"]["source"]) == ROOT
    for name in cfg:
        assert cfg[name]["build"]["target"] == "dev", name


def test_every_compose_variable_is_in_env_template_with_the_same_default():
    env = read_env_template()
    used = set()
    for path in COMPOSE_FILES:
        for m in VAR.finditer(path.read_text()):
            name, op, default = m.groups()
            used.add(name)
            assert name in env, f"{path.relative_to(ROOT)} uses ${{{name}}} but .env.template does not set it"
            # '' is how `ros2 launch` is given "none" (it refuses an empty NAME:=).
            if op == "-" and default != "''":
                assert default == env[name], (
                    f"{path.relative_to(ROOT)}: default of {name} is {default!r}, .env.template has {env[name]!r}")
    dockerfile_args = set()
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        dockerfile_args |= set(re.findall(r"^ARG\s+([A-Z_][A-Z0-9_]*)", dockerfile.read_text(), re.M))
    unused = set(env) - used - dockerfile_args
    assert not unused, f".env.template sets variables nothing reads: {sorted(unused)}"


def test_services_running_ros2_launch_stop_with_sigint():
    """`ros2 launch` ends its nodes on SIGINT; on SIGTERM (compose's default) it may leave them."""
    seen = 0
    for profile in PROFILES:
        for name, service in compose_config(profile)["services"].items():
            if (service.get("command") or [])[:2] == ["ros2", "launch"]:
                seen += 1
                assert service.get("stop_signal") == "SIGINT", f"{name} runs ros2 launch without stop_signal: SIGINT"
    assert seen == 2
