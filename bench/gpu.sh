#!/usr/bin/env bash
# The GPU planner's device check (docs/gpu.md): the CUDA tests, then GPU, CPU engine and
# reference times side by side per engine benchmark shape, and the RPC p50 with --device cuda.
# For a bare machine with one GPU and no network: runs this checkout from PYTHONPATH (nothing
# installed); needs python3 with torch (CUDA), triton, numba, grpcio, protobuf, pytest.
# Wheels in .whl/ (docs/gpu.md: the RPC rows need grpcio-health-checking, -reflection, -status)
# are installed into /tmp/site first. Writes its logs and tables under $OUT (default
# /tmp/eplb-gpu). Extra arguments go to bench.gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-4}"
OUT="${OUT:-/tmp/eplb-gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, triton, numba; print('torch', torch.__version__, 'triton', \
triton.__version__, 'numba', numba.__version__, 'cuda', torch.cuda.is_available())" || exit 1
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_gpu_cuda.py 2>&1 \
    | tee "$OUT/cuda_tests.log"
tests=${PIPESTATUS[0]}
timeout 330 "$PY" -m bench.gpu --out "$OUT/gpu_bench.md" "$@" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "cuda tests: exit $tests; benchmark: exit $bench"
exit $(( tests || bench ))
