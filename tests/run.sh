#!/usr/bin/env bash
# The one command that runs every test: installs what it needs, lints, type-checks,
# then runs the whole pytest suite (unit, daemon, namespace, strongSwan interop).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not interop"`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run as root (namespace, TUN and strongSwan tests need it)" >&2
  exit 1
fi
bash netns-scripts/install-deps.sh
PY=.venv/bin/python  # made by install-deps.sh (PYTHON: the interpreter it is made from)
echo "== ruff check"; "$PY" -m ruff check .
echo "== ruff format --check"; "$PY" -m ruff format --check .
echo "== mypy"; "$PY" -m mypy
echo "== pytest"
exec "$PY" -m pytest "$@"
