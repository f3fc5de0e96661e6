"""Every command a compose service runs, and every command docs/docker.md tells users to
type, exists in this package: modules, console scripts, CLI flags, launch files and their
arguments, profiles and services."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points

import pytest

from docs.launch_files import launch_arguments

from .conftest import BIN, PROFILES, ROOT, compose_config

PACKAGE = ET.parse(ROOT / "package.xml").getroot().findtext("name")
DOC = ROOT / "docs" / "docker.md"


def service_commands() -> dict[str, list[str]]:
    out = {}
    for profile in PROFILES:
        for name, svc in compose_config(profile)["services"].items():
            out[name] = svc.get("command") or []
    return out


def console_scripts() -> set[str]:
    return {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("crane_x7_vla")}


def help_text(argv: list[str]) -> str:
    proc = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(argv)} --help failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def check_command(argv: list[str], where: str) -> None:
    """Raise AssertionError when `argv` would not run in the images."""
    if not argv or argv[0] in ("bash", "sh"):
        return
    if argv[0] == "torchrun":
        assert "torchrun" in {ep.name for ep in entry_points(group="console_scripts")}, "torchrun is not installed"
        assert "-m" in argv, f"{where}: torchrun without -m MODULE"
        argv = ["python", *argv[argv.index("-m") :]]
    if argv[0] == "python" and argv[1:2] == ["-m"]:
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, f"{where}: module {module} does not exist"
        if module == "crane_x7_vla.training.cli" and len(argv) > 3 and not argv[3].startswith("-"):
            text = help_text([sys.executable, "-m", module, argv[3]])
            check_flags(argv[4:], text, where)
        return
    if argv[0] == "crane-x7-vla":
        assert "crane-x7-vla" in console_scripts(), f"{where}: crane-x7-vla is not a declared console script"
        sub = [a for a in argv[1:] if not a.startswith("-")][:1]
        text = help_text([str(BIN / "crane-x7-vla"), *sub])
        check_flags(argv[1:], text, where)
        return
    if argv[:2] == ["ros2", "launch"]:
        package, launch_file, *args = argv[2:]
        assert package == PACKAGE, f"{where}: package {package} is not {PACKAGE}"
        path = ROOT / "launch" / launch_file
        assert path.exists(), f"{where}: launch/{launch_file} does not exist"
        declared = launch_arguments(launch_file)
        for arg in args:
            name = arg.split(":=")[0]
            assert name in declared, f"{where}: {launch_file} declares no argument {name!r} (it has {sorted(declared)})"
        return
    raise AssertionError(f"{where}: do not know how to check {argv[0]!r}")


def check_flags(args: list[str], help_output: str, where: str) -> None:
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=")[0]
            assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", help_output), f"{where}: {flag} is not an option"


@pytest.mark.parametrize("service", sorted(set().union(*PROFILES.values())))
def test_service_command_exists(service):
    check_command(service_commands()[service], f"compose service {service}")


def test_checker_rejects_unknown_commands():
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(["python", "-m", "crane_x7_vla.no_such_module"], "x")
    with pytest.raises(AssertionError, match="not an option"):
        check_command(
            ["python", "-m", "crane_x7_vla.training.cli", "train", "--backend", "openvla", "--no-such-flag"], "x"
        )
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(["ros2", "launch", PACKAGE, "no_such.launch.py"], "x")


def doc_commands() -> list[list[str]]:
    """Shell commands in docs/docker.md code blocks (continuation lines joined)."""
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```(?:sh|bash|shell)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("docker compose"):
                commands.append(shlex.split(line))
    return commands


def test_docs_show_the_documented_workflow():
    commands = [" ".join(c) for c in doc_commands()]
    assert "docker compose --profile openvla build" in commands
    assert "docker compose --profile openpi build" in commands
    for backend in ("openvla", "openpi"):
        prefix = (
            f"docker compose --profile {backend} run --rm vla-finetune-{backend} "
            f"python -m crane_x7_vla.training.cli train --backend {backend}"
        )
        assert any(c.startswith(prefix) for c in commands), prefix
    assert "cp .env.template .env" in DOC.read_text()


def test_doc_commands_match_compose_and_the_cli():
    commands = doc_commands()
    assert len(commands) >= 6
    for argv in commands:
        where = f"docs/docker.md: {' '.join(argv)}"
        profiles = [argv[i + 1] for i, a in enumerate(argv) if a == "--profile"]
        for p in profiles:
            assert p in PROFILES, f"{where}: no profile {p}"
        services = set().union(*(PROFILES[p] for p in profiles)) if profiles else set()
        if "run" in argv:
            i = argv.index("run") + 1
            while argv[i].startswith("-"):
                i += 2 if argv[i] in ("-e", "--env", "-v", "--volume", "-p", "--publish", "--entrypoint") else 1
            assert argv[i] in services, f"{where}: service {argv[i]} is not in profile(s) {profiles}"
            check_command(argv[i + 1 :], where)
        elif "up" in argv or "build" in argv:
            names = [a for a in argv[argv.index("up" if "up" in argv else "build") + 1 :] if not a.startswith("-")]
            assert set(names) <= services, f"{where}: {names} not in profile(s) {profiles}"
