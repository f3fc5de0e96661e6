#!/usr/bin/env bash
# Build a ROS 2 interface package (msg/srv/action, ament_cmake + rosidl) into .venv.
#
#   bash scripts/lib/ros_interfaces.sh SOURCE_DIR 'python statement that imports it'
#
# No wheels exist on PyPI for some interface packages (control_msgs, composition_interfaces),
# but the ros-jazzy rosidl and ament_cmake wheels can generate them: this configures, builds
# and installs SOURCE_DIR into the .venv prefix, where the wheels put every other interface
# package (Python modules in site-packages, libraries in .venv/lib, ament index in
# .venv/share). A robot PC uses the packages of its ROS install and never runs this.
#
# Idempotent: skips the build when the installed package matches the sources.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${1:?usage: ros_interfaces.sh SOURCE_DIR PYTHON_IMPORT_CHECK}
CHECK=${2:?usage: ros_interfaces.sh SOURCE_DIR PYTHON_IMPORT_CHECK}
PY=.venv/bin/python
NAME=$(basename "$SRC")
WS=.venv/${NAME}_ws
tag="[$NAME]"
[ -x "$PY" ] || { echo "$tag .venv/bin/python not found: run scripts/setup.sh first" >&2; exit 1; }
command -v cmake >/dev/null || { echo "$tag cmake is missing (apt-get install cmake g++)" >&2; exit 1; }
command -v c++ >/dev/null || { echo "$tag a C++ compiler is missing (apt-get install g++)" >&2; exit 1; }

want=$(find "$SRC" -type f \( -name package.xml -o -name CMakeLists.txt -o -name '*.msg' -o -name '*.srv' -o -name '*.action' \) \
         -print0 | sort -z | xargs -0 cat | cat - "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$WS/stamp" 2>/dev/null)" = "$want" ] && "$PY" -c "$CHECK" 2>/dev/null; then
  echo "$tag up to date"
  exit 0
fi

# Build dependencies (requirements/ros.txt names them: the wheels' metadata misses some).
if ! "$PY" -c "import catkin_pkg, ament_package" 2>/dev/null \
   || [ ! -f .venv/share/ament_cmake/cmake/ament_cmakeConfig.cmake ] \
   || [ ! -f .venv/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake ]; then
  echo "$tag the ament_cmake/rosidl build wheels are missing: run scripts/setup.sh (requirements/ros.txt)" >&2
  exit 1
fi

# The wheels' exported CMake targets name the include directories of the machine that
# built them (/opt/python/cp311-cp311/...); point them at this venv's Python and numpy.
"$PY" - "$tag" <<'PYEOF'
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
    print(f"{sys.argv[1]} repointed include paths in {fixed} CMake files to {py_inc} and {np_inc}")
PYEOF

echo "$tag building (about 15 s)"
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
  || { tail -40 "$WS/cmake.log" >&2; echo "$tag cmake configure failed; full log: $WS/cmake.log" >&2; exit 1; }
cmake --build "$WS/build" -j "$(nproc)" > "$WS/build.log" 2>&1 \
  || { tail -40 "$WS/build.log" >&2; echo "$tag build failed; full log: $WS/build.log" >&2; exit 1; }
cmake --install "$WS/build" > "$WS/install.log" 2>&1 \
  || { tail -40 "$WS/install.log" >&2; echo "$tag install failed; full log: $WS/install.log" >&2; exit 1; }
"$PY" -c "$CHECK" || { echo "$tag built, but '$CHECK' fails" >&2; exit 1; }
echo "$want" > "$WS/stamp"
echo "$tag installed into .venv (files listed in $WS/build/install_manifest.txt)"
