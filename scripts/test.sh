#!/usr/bin/env bash
# Sets up a virtual environment (CPU torch pinned by constraints.txt) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
.venv/bin/python -m pytest -q "$@"
