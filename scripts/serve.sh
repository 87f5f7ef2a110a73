#!/usr/bin/env bash
# Sets up .venv (again only when pyproject.toml or constraints.txt change) and starts the
# placement server; arguments go to eplb-server.
# EPLB_TORCH_INDEX=URL installs torch from that wheel index first, e.g. PyTorch's CPU-only
# index https://download.pytorch.org/whl/cpu where pip's default is the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.eplb-serve-stamp
want="$(cat pyproject.toml constraints.txt | python3 -c 'import hashlib, sys
print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())') server,cli"
if [ ! -x .venv/bin/eplb-server ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "serve.sh: installing into .venv (skipped on later starts until pyproject.toml or" \
         "constraints.txt change)" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    if [ -n "${EPLB_TORCH_INDEX:-}" ]; then
        .venv/bin/python -m pip install -q --index-url "$EPLB_TORCH_INDEX" \
            "$(grep '^torch==' constraints.txt)"
    fi
    # The editable install's build backend warns about its import hook; nothing to act on.
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -c constraints.txt -e '.[server,cli]'
    echo "$want" > "$stamp"
fi
exec .venv/bin/eplb-server "$@"
