#!/usr/bin/env bash
# One-step set-up: a virtual environment at .venv/ with everything this repository
# runs and tests (ROS 2 client wheels, MuJoCo, PyTorch CPU, JAX, TensorFlow for checks),
# and the `crane-x7-vla` command. Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.crane_x7_vla_setup
# Re-run when a pin, a set-up step or the launch wheels beside the repository change.
want=$( (cat requirements/*.txt setup.py scripts/setup.sh scripts/setup.d/*.sh scripts/lib/*.sh; \
         ls "${CRANE_X7_ROS2_LAUNCH_DIR:-../shared/ros2-jazzy-launch}/wheels" 2>/dev/null) | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip wheel "setuptools<80"
  args=()
  for f in requirements/*.txt; do
    case "$f" in *-nodeps.txt) ;; *) args+=(-r "$f") ;; esac
  done
  .venv/bin/python -m pip install -q "${args[@]}"
  for f in requirements/*-nodeps.txt; do
    [ -e "$f" ] && .venv/bin/python -m pip install -q --no-deps -r "$f"
  done
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  for hook in scripts/setup.d/*.sh; do
    [ -e "$hook" ] && bash "$hook"
  done
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python --version), crane-x7-vla at .venv/bin/crane-x7-vla"
