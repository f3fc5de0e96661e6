#!/usr/bin/env bash
# The test suite. TensorFlow and MuJoCo's renderer cannot share one process (it
# segfaults), so the tests that run TensorFlow in-process (RLDS export) get their own
# pytest process. Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TF_TESTS=(tests/datasets)
ignore=()
for t in "${TF_TESTS[@]}"; do ignore+=("--ignore=$t"); done
echo "[test] main suite"
"$PY" -m pytest -q "$@" tests "${ignore[@]}"
main=$?
echo "[test] TensorFlow suite (own process)"
"$PY" -m pytest -q "$@" "${TF_TESTS[@]}"
tf=$?
if [ "$main" -ne 0 ] || [ "$tf" -ne 0 ]; then
  echo "[test] FAILED (main suite exit $main, TensorFlow suite exit $tf)"
  exit 1
fi
echo "[test] all suites passed"
