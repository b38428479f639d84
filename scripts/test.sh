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

# PostgreSQL: the server named by TQUEUES_TEST_POSTGRES, else a throw-away cluster that the
# tests start themselves with initdb and pg_ctl. Install the binaries when they are missing.
if [ -z "${TQUEUES_TEST_POSTGRES:-}" ]; then
    if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        echo "tqueues tests: installing PostgreSQL (set TQUEUES_TEST_POSTGRES=postgresql://... to use a running server)" >&2
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "tqueues tests: no PostgreSQL binaries and no apt-get; install PostgreSQL or set TQUEUES_TEST_POSTGRES" >&2
            exit 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    fi
fi

# Chromium for the dashboard tests (tests/ui): the system's browser, driven by Playwright.
if [ -z "${TQUEUES_TEST_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "tqueues tests: installing Chromium for the dashboard tests" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "tqueues tests: no chromium and no apt-get; the dashboard tests will say they were skipped" >&2
    fi
fi

exec .venv/bin/python -m pytest "$@"
