#!/usr/bin/env bash
# Installs everything the test suite needs into ./.venv, then runs the whole suite.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k compat -x).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "tqueues tests: $PYTHON not found; install Python 3.10 or newer" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        "$PYTHON" -m venv .venv
    fi
fi

.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

exec .venv/bin/python -m pytest "$@"
