#!/usr/bin/env bash
# Sets up a virtual environment and starts the placement server with its default configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[server,cli]'
exec .venv/bin/eplb-server "$@"
