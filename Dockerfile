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
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/home/eplb/.cache/numba \
    EPLB_LISTEN=0.0.0.0:50051 \
    EPLB_METRICS_HOST=0.0.0.0 \
    EPLB_METRICS_PORT=9090
USER 10001:10001
WORKDIR /home/eplb
# Compile the numba kernels once at build time, so that start-up warm-up only loads them.
RUN python -c "import torch, eplb_server; \
w = torch.rand(2, 16) * 100; p = eplb_server.plan(w, 32, 4, 2, 8); \
eplb_server.plan(w, 32, 4, 2, 8, current_phy2log=p.phy2log); \
eplb_server.plan(w, 32, 4, 2, 8, policy='global'); eplb_server.plan(w, 32, 4, 2, 8, policy='deepseek'); \
q = eplb_server.plan(w, 16, 4, 2, 8); eplb_server.plan(w, 16, 4, 2, 8, current_phy2log=q.phy2log); \
eplb_server.evaluate(w, p.phy2log, 4, 2, 8)"
EXPOSE 50051 9090
# Calls grpc.health.v1.Health/Check; NOT_SERVING (warm-up, draining) counts as unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "eplb_server.healthcheck", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["eplb-server"]
