# eplb-server image. CPU (default) or CUDA torch by build argument:
#   docker build -t eplb-service:cpu .
#   docker build -t eplb-service:cuda --build-arg TORCH_INDEX=cu126 .
# Run: docker run -p 50051:50051 -p 9090:9090 eplb-service:cpu   (flags or EPLB_* variables)
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# Wheel index of torch: "cpu" or a CUDA build such as "cu126" (its wheels carry the CUDA
# runtime; the host needs only the NVIDIA driver and container toolkit).
ARG TORCH_INDEX=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY client client
COPY server server
# torch is already installed; the rest at the versions the tests ran with.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt ".[server]"

FROM python:${PYTHON_VERSION}-slim
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/eplb eplb
COPY --from=build /opt/venv /opt/venv
# A portable kernel target: the cache compiled below serves any x86-64-v3 (AVX2) host, not only
# the build machine's CPU model (a native cache recompiles for minutes on another model, past
# any startup probe). For arm64 images build with --build-arg NUMBA_CPU_NAME=generic.
ARG NUMBA_CPU_NAME=x86-64-v3
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/home/eplb/.cache/numba \
    NUMBA_CPU_NAME=${NUMBA_CPU_NAME} \
    NUMBA_CPU_FEATURES= \
    EPLB_LISTEN=0.0.0.0:50051 \
    EPLB_METRICS_HOST=0.0.0.0 \
    EPLB_METRICS_PORT=9090
USER 10001:10001
WORKDIR /home/eplb
# Compile every kernel an RPC can reach once at build time (the server's own warm-up), so that
# start-up only loads them: seconds instead of minutes.
RUN eplb-server --compile-only
EXPOSE 50051 9090
# Calls grpc.health.v1.Health/Check; NOT_SERVING (warm-up, draining) counts as unhealthy.
# Start-up loads the image's kernel cache (about 1.5 s, docs/production.md); a CPU that cannot
# load it (before x86-64-v3) compiles for 86-100 s on 2 cores, within the start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=240s --retries=3 \
    CMD ["python", "-m", "eplb_server.healthcheck", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["eplb-server"]
