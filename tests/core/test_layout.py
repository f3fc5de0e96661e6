"""The repository is a valid ament_python package and keeps its import boundaries."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "crane_x7_vla"

# module prefix -> package directories (relative to crane_x7_vla/) allowed to import it
ALLOWED = {
    "rclpy": ("ros",),
    "torch": ("backends/openvla",),
    "jax": ("backends/openpi",),
    "flax": ("backends/openpi",),
    "optax": ("backends/openpi",),
    "orbax": ("backends/openpi",),
    "tensorflow": ("episode/rlds.py",),
    "tensorflow_datasets": ("episode/rlds.py",),
}


def test_package_xml_is_format_3():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "crane_x7_vla"
    assert root.find("export/build_type").text == "ament_python"
    for tag in ("version", "description", "maintainer", "license"):
        assert root.findtext(tag), tag


def test_ament_resource_marker_and_top_level_layout():
    assert (ROOT / "resource" / "crane_x7_vla").is_file()
    for name in ("ros2_ws", "vla_training", "docker", "launch", "tests", "package.xml", "setup.py", "README.md"):
        assert (ROOT / name).exists(), f"{name} is missing at the repository root"


def test_license_file_matches_package_metadata():
    """LICENSE holds the licence that package.xml and setup.py declare."""
    declared = ET.parse(ROOT / "package.xml").getroot().findtext("license")
    assert declared == "Apache-2.0"
    assert 'license="Apache-2.0"' in (ROOT / "setup.py").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_heavy_libraries_stay_in_their_modules(library):
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if any(rel == allowed or rel.startswith(allowed + "/") for allowed in ALLOWED[library]):
            continue
        for module in imported_modules(path):
            if module == library or module.startswith(library + "."):
                offenders.append(f"{rel} imports {module}")
    assert not offenders, f"{library} may only be imported in {ALLOWED[library]}: {offenders}"
