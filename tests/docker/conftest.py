"""Shared helpers for the container checks (no Docker daemon needed)."""

from __future__ import annotations

import json
import re
import copy
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
ENV_TEMPLATE = ROOT / ".env.template"

# profile -> services it must start (the documented names)
PROFILES = {
    "openvla": {"vla-finetune-openvla"},
    "openpi": {"vla-finetune-openpi"},
    "server": {"policy-server"},
    "collect": {"teleop-leader-logger"},
    "inference": {"vla-inference"},
    "dev": {"vla-dev-openvla", "vla-dev-openpi", "ros-dev"},
}


def tool(name: str) -> str:
    """A binary installed into the virtual environment by requirements/docker.txt."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install requirements/docker.txt (bash scripts/setup.sh)")
    return str(path)


def compose(*args: str, cwd: Path = ROOT, env_file: Path = ENV_TEMPLATE, check: bool = True):
    cmd = [tool("docker-compose"), "--env-file", str(env_file), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return proc


def compose_config(profile: str, file: str = "compose.yaml") -> dict:
    """The resolved configuration (.env.template as the user's .env) of one profile."""
    return copy.deepcopy(_compose_config(profile, file))


@functools.lru_cache(maxsize=None)
def _compose_config(profile: str, file: str) -> dict:
    proc = compose("-f", file, "--profile", profile, "config", "--format", "json")
    return json.loads(proc.stdout)


def read_env_template() -> dict[str, str]:
    values = {}
    for n, line in enumerate(ENV_TEMPLATE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        assert m, f".env.template line {n} is not NAME=value: {line!r}"
        values[m.group(1)] = m.group(2)
    return values


def dockerfile_args(path: Path) -> dict[str, str | None]:
    """ARG name -> default value (None when it has none), over all stages."""
    args: dict[str, str | None] = {}
    for m in re.finditer(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", path.read_text(), re.M):
        args.setdefault(m.group(1), m.group(2))
    return args


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out
