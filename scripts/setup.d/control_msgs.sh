#!/usr/bin/env bash
# Test fixture: the control_msgs GripperCommand interfaces, built into .venv.
#
# No control_msgs wheel exists on PyPI, but the simulated robot serves (and the relay
# sends) control_msgs/action/GripperCommand like the real crane_x7_gripper_controller.
# A robot PC uses the control_msgs of its ROS install and never runs this.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/lib/ros_interfaces.sh tests/fixtures/control_msgs \
  "from control_msgs.action import GripperCommand; from control_msgs.msg import GripperCommand as M; M(position=0.5, max_effort=1.0)"
