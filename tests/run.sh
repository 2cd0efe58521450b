#!/usr/bin/env bash
# The project's test command: lint, type-check and both test tiers on one interpreter.
#   bash tests/run.sh [PYTHON [PYTEST ARGS...]]    (default: .venv-3.11/bin/python, else python3)
# PYTHON must have the project and its test bed installed (see .ci/run). Without PYTEST ARGS the
# whole suite runs (tests/); with paths among them only those, e.g.
#   bash tests/run.sh .venv-3.11/bin/python tests/e2e tests/packaging
# Plain `pytest` is the fast tier only (no root, no real components); here every tier runs and a
# skipped test fails (ZINCATI_PY_REQUIRE_ALL=1, tests/conftest.py), as does a run that selects
# no test at all (pytest's exit 5): a test command that ran nothing never passes.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:-}
if [ -z "$py" ]; then
  if [ -x .venv-3.11/bin/python ]; then py=.venv-3.11/bin/python; else py=python3; fi
fi
args=("${@:2}")
paths=0
for a in "${args[@]}"; do
  if [[ $a != -* && -e ${a%%::*} ]]; then paths=1; fi
done
if [ "$paths" -eq 0 ]; then args+=(tests); fi
echo "== $($py --version) ($py)"
status=0
$py -m ruff check . || status=1
$py -m ruff format --check . || status=1
$py -m mypy || status=1
# Tests run as root against real systemd/dbus/etcd started by fixtures; -p no:cacheprovider
# keeps a read-only checkout clean.
ZINCATI_PY_REQUIRE_ALL=${ZINCATI_PY_REQUIRE_ALL:-1} $py -m pytest -p no:cacheprovider "${args[@]}"
rc=$?
if [ $rc -eq 5 ]; then
  echo "!! pytest collected no test (exit 5): '${args[*]}' selects nothing; that is a failure here"
fi
if [ $rc -ne 0 ]; then status=$rc; fi
exit $status
