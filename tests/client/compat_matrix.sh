#!/usr/bin/env bash
# Runs compat_probe.py in throwaway venvs (under ${COMPAT_DIR:-/tmp/eplb-compat}) across the
# protobuf/grpcio/numpy versions that docs/client.md lists. Needs a package index; not run by CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
client="$(cd "$here/../../client" && pwd)"
dir="${COMPAT_DIR:-/tmp/eplb-compat}"
python="${PYTHON:-python3}"
mkdir -p "$dir"
matrix=(
  "protobuf==3.20.3 grpcio==1.59.5 numpy==1.24.4"
  "protobuf==4.21.6 grpcio==1.59.5 numpy==1.24.4"
  "protobuf==4.25.9 grpcio==1.62.3 numpy==1.26.4"
  "protobuf==5.29.6 grpcio==1.66.2 numpy==1.26.4"
  "protobuf==6.33.6 grpcio==1.75.1 numpy==2.2.6"
  "protobuf==7.36.2 grpcio==1.85.1 numpy==2.4.6"
)
status=0
for pins in "${matrix[@]}"; do
  venv="$dir/$(echo "$pins" | tr ' =' '_-')"
  [ -x "$venv/bin/python" ] || { "$python" -m venv "$venv" && "$venv/bin/pip" install -q $pins; }
  for impl in default python; do
    [ "$impl" = default ] && unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION \
      || export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
    if out=$(PYTHONPATH="$client" "$venv/bin/python" -W error "$here/compat_probe.py" 2>&1); then
      echo "$impl: $out"
    else
      echo "FAIL $pins ($impl):"; echo "$out" | tail -5; status=1
    fi
  done
done
unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION
exit $status
