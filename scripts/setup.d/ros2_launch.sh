#!/usr/bin/env bash
# The real ROS 2 Jazzy launch stack (`ros2 launch`, launch_ros, ros2cli) in .venv, for the
# tests that run our launch files and `colcon build` as on a robot PC (tests/ros_launch).
#
# launch, launch_ros, ros2launch and ros2cli have no wheels on PyPI; the upstream Jazzy
# packages, built as wheels, lie in ../shared/ros2-jazzy-launch beside this repository
# (CRANE_X7_ROS2_LAUNCH_DIR to name another folder), with the interface package
# composition_interfaces that launch_ros imports. Without that folder the launch tests
# skip and say so. A robot PC has all of this from its ROS install.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${CRANE_X7_ROS2_LAUNCH_DIR:-../shared/ros2-jazzy-launch}
if ! ls "$DIR"/wheels/launch_ros-*.whl >/dev/null 2>&1; then
  echo "[ros2-launch] $DIR not found: the tests that run the real 'ros2 launch' will be skipped"
  exit 0
fi
PY=.venv/bin/python
if ! "$PY" -c "import launch, launch_ros, ros2launch, ros2cli" 2>/dev/null; then
  echo "[ros2-launch] installing the launch wheels from $DIR"
  "$PY" -m pip install -q --no-deps "$DIR"/wheels/*.whl
fi
bash scripts/lib/ros_interfaces.sh "$DIR/interfaces/composition_interfaces" \
  "from composition_interfaces.srv import LoadNode"
"$PY" -c "import launch_ros.actions" || { echo "[ros2-launch] installed, but 'import launch_ros.actions' fails" >&2; exit 1; }
echo "[ros2-launch] ready: $(.venv/bin/ros2 --help >/dev/null 2>&1 && echo 'ros2 launch' || echo 'ros2 CLI NOT working')"
