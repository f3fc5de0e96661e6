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
run_own() {
  echo "[test] $1 (own process)"
  "$PY" -m pytest -q "${@:2}" "$1" || failed+=("$1")
}
# tests/ros_launch first: on a machine where the whole main suite has just run, its first
# parameter queries of freshly launched nodes went unanswered (cause not yet found; it passes
# on its own and before the other suites).
run_own tests/ros_launch "$@"
echo "[test] main suite"
"$PY" -m pytest -q "$@" tests "${ignore[@]}" || failed+=("main")
for t in tests/datasets tests/ros tests/ros_deploy; do
  run_own "$t" "$@"
done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "[test] FAILED: ${failed[*]}"
  exit 1
fi
echo "[test] all suites passed"
