#!/usr/bin/env bash
# The gate on the pure core: stepflow/core must keep 100% line and branch coverage.
# Runs the core's own test files only (about a minute), with the settings of
# [tool.coverage] in pyproject.toml, and fails below 100%: a branch no test
# reaches is either given a test that states its behaviour, or proven dead.
# (Worker tests are left out: under coverage's tracer a Worker on a FakeClock ends
# with a CancelledError out of Worker.run, on main too; they cover no core line.)
# Usage: bash scripts/core_coverage.sh   (from any directory; uses the active python)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
data="$(mktemp -d)/.coverage"
trap 'rm -rf "$(dirname "$data")"' EXIT
"$python" -m coverage run --data-file="$data" --branch --source=stepflow.core \
    -m pytest -q -p no:cacheprovider \
    tests/test_advance.py tests/test_definition.py tests/test_codec.py tests/test_go_parity.py \
    tests/test_flow.py tests/test_timers.py tests/test_batches.py tests/test_groups.py \
    tests/test_purity.py tests/test_core_edges.py tests/test_switch.py tests/test_catch.py \
    tests/test_events.py tests/test_sleep_until.py tests/test_cleanup.py tests/test_children.py \
    stepflow/core \
    --deselect tests/test_sleep_until.py::test_the_worker_asks_when_once_and_wakes_the_run_at_that_time
"$python" -m coverage report --data-file="$data" -m --skip-covered --fail-under=100
