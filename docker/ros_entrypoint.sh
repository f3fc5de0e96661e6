#!/usr/bin/env bash
# Entry point of the ROS 2 image: source ROS 2 and the /ros2_ws overlay (vendor CRANE-X7
# packages + crane_x7_vla), then run the given command, e.g.
#   ros2 launch crane_x7_vla data_collection.launch.py
set -e
# shellcheck disable=SC1090
source "/opt/ros/${ROS_DISTRO:-jazzy}/setup.bash"
# shellcheck disable=SC1091
source "${CRANE_X7_WS:-/ros2_ws}/install/setup.bash"
exec "$@"
