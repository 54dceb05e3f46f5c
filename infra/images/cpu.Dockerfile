# CPU image: all four frameworks (PyTorch, TensorFlow, JAX in the image's Python; MXNet in its own
# venv, as `make setup` builds it), the Ray driver and worker, and the harness.
#
#   docker build -f infra/images/cpu.Dockerfile -t REGISTRY/dl-bench-harness-cpu:0.1.0 .
#
# Build from the repository root (the context); cpu.Dockerfile.dockerignore keeps the local
# virtual environments, journals and MLflow stores out of it. Serves as the Ray head (driver) image
# of the KubeRay manifests and the cluster launcher, and as their CPU worker image.
FROM python:3.11-slim-bookworm

# The frameworks' pins live in pyproject.toml (extras torch, jax, tensorflow) and
# infra/requirements-mxnet.txt; TORCH_VERSION only selects the CPU wheel of the pinned torch.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG GIT_COMMIT=unknown
ENV HARNESS_GIT_COMMIT=${GIT_COMMIT}

LABEL org.opencontainers.image.title="dl-bench-harness-cpu" \
      org.opencontainers.image.description="dl-bench-harness: torch, tensorflow, jax, mxnet on CPU, Ray, MLflow client" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

# RAY_worker_niceness=0: Ray starts task workers at nice 15 otherwise, and every trial inherits it.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_worker_niceness=0 \
    HARNESS_PYTHON_MXNET=/opt/harness/.venvs/mxnet/bin/python \
    HARNESS_RUNS_DIR=/var/lib/harness/runs \
    HARNESS_CACHE=/var/lib/harness/cache

# bash and wget: KubeRay starts Ray with bash and its default probes call wget; libgomp1: OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash wget ca-certificates libgomp1 procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/harness
COPY pyproject.toml README.md ./
COPY infra/requirements-mxnet.txt infra/requirements-mxnet.txt
COPY harness harness
COPY adapters adapters
COPY workloads workloads

# The project, editable at /opt/harness as `make setup` installs it (harness/envs.py finds
# .venvs/<framework> beside it). torch goes first from the CPU wheel index; the extras then find it
# already satisfied and add jax[cpu], tensorflow-cpu, Ray, MLflow and the rest at their pins.
RUN pip install --upgrade pip \
    && pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install -e ".[driver,torch,jax,tensorflow]"

# MXNet 1.9.1 needs numpy <= 1.23.5: its own venv, worker-side code only (the project with --no-deps).
RUN python -m venv /opt/harness/.venvs/mxnet \
    && /opt/harness/.venvs/mxnet/bin/pip install --upgrade pip \
    && /opt/harness/.venvs/mxnet/bin/pip install -r infra/requirements-mxnet.txt \
    && /opt/harness/.venvs/mxnet/bin/pip install --no-deps -e .

RUN mkdir -p /var/lib/harness/runs /var/lib/harness/cache
WORKDIR /var/lib/harness

# With no cluster around: the smoke suite on an embedded Ray, results in ./mlflow.db.
CMD ["harness", "run", "smoke"]
