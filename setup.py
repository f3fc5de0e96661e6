"""crane_x7_vla: a ROS 2 ament_python package and a pip-installable distribution.

`colcon build` (robot PC) and `pip install -e .[...]` (training hosts) both use this file.
"""

import sys
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "crane_x7_vla"
HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    path = HERE / "requirements" / f"{name}.txt"
    if not path.exists():
        return []
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


data_files = [
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
    (f"share/{PACKAGE}", ["package.xml"]),
    (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
    (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
]
# colcon (`setup.py develop|install`, after reading this file with --dry-run) puts the console
# scripts in lib/crane_x7_vla for `ros2 run` (setup.cfg); the command-line tool also goes to
# bin/, which sourcing the workspace puts on PATH. pip installs it as a console script instead.
if {"develop", "install", "--dry-run"} & set(sys.argv[1:]):
    data_files.append(("bin", ["resource/bin/crane-x7-vla"]))

extras = {name: requirements(name) for name in ("sim", "ros", "openvla", "openpi", "datasets", "dev")}
extras["all"] = sorted({r for reqs in extras.values() for r in reqs})

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Collect, train and deploy Vision-Language-Action policies on the CRANE-X7 arm",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["configs/demo/*.yaml"]},
    data_files=data_files,
    install_requires=requirements("core"),
    extras_require=extras,
    zip_safe=True,
    maintainer="crane_x7_vla developers",
    maintainer_email="crane-x7-vla@example.org",
    entry_points={
        "console_scripts": [
            "crane-x7-vla = crane_x7_vla.cli:main",
            # ROS 2 nodes (`ros2 run crane_x7_vla <name>`)
            "crane_x7_sim = crane_x7_vla.ros.entry:crane_x7_sim",
            "scripted_expert = crane_x7_vla.ros.entry:scripted_expert",
            "teleop_relay = crane_x7_vla.ros.entry:teleop_relay",
            "data_logger = crane_x7_vla.ros.entry:data_logger",
            "vla_inference_node = crane_x7_vla.ros.entry:vla_inference_node",
            "eval_runner = crane_x7_vla.ros.entry:eval_runner",
        ],
    },
)
