"""Dockerfiles: hadolint-clean, every COPY source in the build context, the documented stages,
base images and build arguments, a non-root user, the backend's extra installed."""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import metadata
from pathlib import Path

import pytest

from .conftest import (
    DOCKERFILES,
    ROOT,
    compose_config,
    dockerfile_args,
    dockerfile_instructions,
    read_env_template,
    tool,
)

INTERNAL_ARGS = {"BASE_IMAGE", "CONTAINER_USER"}  # not meant to be set from .env
TRAINING = {"Dockerfile.openvla": "openvla", "Dockerfile.openpi": "openpi"}
IDS = [d.name for d in DOCKERFILES]


def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((keep, re.compile(rx)))
    return rules


def dockerignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent excludes it all."""
    parts = rel.strip("/").split("/")
    excluded = False
    for keep, rx in _dockerignore_rules():
        if any(rx.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not keep
    return excluded


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for word, rest in dockerfile_instructions(dockerfile):
        if word not in ("COPY", "ADD"):
            continue
        tokens = rest.split()
        if any(t.startswith("--from=") for t in tokens):
            continue
        tokens = [t for t in tokens if not t.startswith("--")]
        sources += tokens[:-1]
    return sources


def stages(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)


def test_the_three_images_exist():
    assert IDS == ["Dockerfile.openpi", "Dockerfile.openvla", "Dockerfile.ros2"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_reports_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\nRUN cd /tmp\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3" in proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    sources = copy_sources(dockerfile)
    assert sources, "no COPY found"
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
        if src != ".":
            assert not dockerignored(src), f"{dockerfile.name} copies {src}, which .dockerignore excludes"


def test_dockerignore_matcher():
    assert dockerignored(".venv/bin/python") and dockerignored("ros2_ws/src/crane_x7_ros/package.xml")
    assert not dockerignored("ros2_ws/src/README.md") and not dockerignored("docker/create-user.sh")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_stages_and_compose_targets(dockerfile):
    names = stages(dockerfile)
    if dockerfile.name in TRAINING:
        assert names == ["system", "builder", "base", "dev"]
    else:
        assert names == ["vendor", "base", "dev"]
    for profile in ("openvla", "openpi", "server", "collect", "inference", "dev"):
        for name, svc in compose_config(profile)["services"].items():
            if svc["build"]["dockerfile"] == f"docker/{dockerfile.name}":
                assert svc["build"]["target"] in names, f"{name} builds target {svc['build']['target']}"


def _resolve(text: str, args: dict[str, str | None]) -> str:
    for _ in range(3):
        text = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)] or "", text)
    return text


def test_base_images():
    for dockerfile in DOCKERFILES:
        args = dockerfile_args(dockerfile)
        first = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M).group(1)
        image = _resolve(first, args)
        if dockerfile.name in TRAINING:
            assert image == "nvidia/cuda:12.9.1-cudnn-devel-ubuntu22.04"
        else:
            assert image == "ros:jazzy"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_build_arguments_come_from_env_template_and_compose(dockerfile):
    env = read_env_template()
    args = dockerfile_args(dockerfile)
    for name, default in args.items():
        if name in INTERNAL_ARGS:
            continue
        assert name in env, f"{dockerfile.name}: ARG {name} is not in .env.template"
        assert default == env[name], (
            f"{dockerfile.name}: ARG {name} defaults to {default}, .env.template has {env[name]}"
        )
    for profile in ("openvla", "openpi", "server", "collect", "inference", "dev"):
        for name, svc in compose_config(profile)["services"].items():
            if svc["build"]["dockerfile"] == f"docker/{dockerfile.name}":
                passed = set(svc["build"]["args"])
                assert passed <= set(args), f"{name} passes unknown build args {passed - set(args)}"
                assert set(args) - INTERNAL_ARGS - {"UBUNTU_VERSION"} <= passed | {"UBUNTU_VERSION"}, name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_runs_as_the_host_user_in_workspace(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    users = [rest for word, rest in instructions if word == "USER"]
    workdirs = [rest for word, rest in instructions if word == "WORKDIR"]
    assert users[-1] == "${USER_ID}:${GROUP_ID}"
    assert workdirs[-1] == "/workspace"
    assert "create-user.sh" in dockerfile.read_text()


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_image_installs_the_backend_extra(name):
    backend = TRAINING[name]
    text = (ROOT / "docker" / name).read_text()
    assert f'pip install --no-cache-dir "/src[{backend}]"' in text
    assert backend in metadata("crane_x7_vla").get_all("Provides-Extra")
    assert f"requirements/{backend}.txt" in text and f"vla_training/requirements/{backend}-cuda.txt" in text
    # the user's `docker compose run ... python -m ...` must not be swallowed by an entry point
    assert "ENTRYPOINT" not in text


def test_torch_comes_from_the_cuda_index():
    text = (ROOT / "docker" / "Dockerfile.openvla").read_text()
    assert re.search(
        r'--index-url "\$\{TORCH_INDEX_URL\}"[\s\\]+-r /src/vla_training/requirements/openvla-cuda.txt', text
    )
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", read_env_template()["TORCH_INDEX_URL"])


def test_ros_image_builds_vendor_packages_and_this_package():
    text = (ROOT / "docker" / "Dockerfile.ros2").read_text()
    assert "vcs import --input crane_x7.repos src" in text and "rosdep install" in text
    assert '"ros-${ROS_DISTRO}-realsense2-camera"' in text
    assert "colcon build --packages-select crane_x7_vla" in text
    assert 'ENTRYPOINT ["/usr/local/bin/crane_x7_entrypoint.sh"]' in text


@pytest.mark.parametrize("script", ["create-user.sh", "ros_entrypoint.sh"])
def test_scripts_are_executable_bash(script):
    path = ROOT / "docker" / script
    assert os.access(path, os.X_OK)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if script == "ros_entrypoint.sh":
        assert path.read_text().rstrip().endswith('exec "$@"')
