#!/usr/bin/env bash
# Sets up a virtual environment (CPU torch pinned by constraints.txt) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool (Debian's prometheus package) checks deploy/prometheus/alerts.yml; without it those
# tests skip. Installed only as root where apt-get exists, with service starts blocked.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  policy=/usr/sbin/policy-rc.d ours=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && ours=1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends prometheus >/dev/null; } \
    || echo "test.sh: could not install promtool; the alert rule tests will skip" >&2
  if [ -n "$ours" ]; then rm -f "$policy"; fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
.venv/bin/python -m pytest -q "$@"
