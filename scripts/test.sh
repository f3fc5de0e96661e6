#!/usr/bin/env bash
# The linter, then the test suite in separate pytest processes:
#   - TensorFlow and MuJoCo's renderer cannot share one process (it segfaults), so the tests
#     that run TensorFlow in-process (RLDS export) get their own;
#   - the real-DDS tests (tests/ros, tests/ros_deploy, tests/ros_launch) play the robot in the test process at
#     30-100 Hz, so each group starts fresh, without the threads and memory that the model
#     tests leave in a long-lived process.
# Extra arguments go to every pytest run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OWN_PROCESS=(tests/datasets tests/ros tests/ros_deploy tests/ros_launch)
ignore=()
for t in "${OWN_PROCESS[@]}"; do ignore+=("--ignore=$t"); done
failed=()
echo "[test] lint (ruff, settings in ruff.toml)"
"$PY" -m ruff check . || failed+=("lint")
echo "[test] main suite"
"$PY" -m pytest -q "$@" tests "${ignore[@]}" || failed+=("main")
for t in "${OWN_PROCESS[@]}"; do
  echo "[test] $t (own process)"
  "$PY" -m pytest -q "$@" "$t" || failed+=("$t")
done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "[test] FAILED: ${failed[*]}"
  exit 1
fi
echo "[test] all suites passed"
