# TPU image: JAX and TensorFlow on Cloud TPU VMs (GKE TPU node pools, or TPU VMs of the Ray
# cluster launcher), the Ray worker and the harness.
#
#   docker build -f infra/images/tpu.Dockerfile -t REGISTRY/dl-bench-harness-tpu:0.1.0 .
#
# Build from the repository root (the context). Each framework gets its own venv (.venvs/<framework>,
# named again in HARNESS_PYTHON_<FW>): jax[tpu] and tensorflow-tpu each require their own libtpu
# build. The image's Python holds the driver side only (Ray, MLflow, the harness).
#
# TensorFlow on TPU needs the tensorflow-tpu distribution, whose newest release on PyPI is 2.20.0
# while the project pins TensorFlow 2.21.0 (tensorflow-cpu): TPU cells record TensorFlow 2.20.0, and
# the harness's compare command refuses to set them against 2.21.0 batches unless given --allow-mismatch. Raise
# TF_TPU_VERSION to 2.21.0 once tensorflow-tpu publishes it.
FROM python:3.11-slim-bookworm

# JAX_VERSION: the same as pyproject.toml's extra "jax" (tests/test_infra.py checks it).
ARG JAX_VERSION=0.10.2
ARG TF_TPU_VERSION=2.20.0
ARG GIT_COMMIT=unknown
ENV HARNESS_GIT_COMMIT=${GIT_COMMIT}

LABEL org.opencontainers.image.title="dl-bench-harness-tpu" \
      org.opencontainers.image.description="dl-bench-harness: jax and tensorflow on Cloud TPU, Ray worker" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

# Runs as root: the TPU device files of a TPU VM belong to root.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_worker_niceness=0 \
    HARNESS_PYTHON_JAX=/opt/harness/.venvs/jax/bin/python \
    HARNESS_PYTHON_TENSORFLOW=/opt/harness/.venvs/tensorflow/bin/python \
    HARNESS_RUNS_DIR=/var/lib/harness/runs \
    HARNESS_CACHE=/var/lib/harness/cache

RUN apt-get update \
    && apt-get install -y --no-install-recommends bash wget ca-certificates libgomp1 procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/harness
COPY pyproject.toml README.md ./
COPY harness harness
COPY adapters adapters
COPY workloads workloads

# The driver side: Ray (whose workers start the trials), MLflow, the harness.
RUN pip install --upgrade pip \
    && pip install -e ".[driver]"

# JAX: the pinned jax (extra "jax") with libtpu.
RUN python -m venv /opt/harness/.venvs/jax \
    && /opt/harness/.venvs/jax/bin/pip install --upgrade pip \
    && /opt/harness/.venvs/jax/bin/pip install -e ".[jax]" "jax[tpu]==${JAX_VERSION}"

# TensorFlow: the TPU build (see above for its version).
RUN python -m venv /opt/harness/.venvs/tensorflow \
    && /opt/harness/.venvs/tensorflow/bin/pip install --upgrade pip \
    && /opt/harness/.venvs/tensorflow/bin/pip install -e . "tensorflow-tpu==${TF_TPU_VERSION}"

RUN mkdir -p /var/lib/harness/runs /var/lib/harness/cache
WORKDIR /var/lib/harness

# On one TPU VM with no cluster: the smoke suite on the TPU, embedded Ray, ./mlflow.db.
CMD ["harness", "run", "smoke", "--device", "tpu", "--framework", "jax,tensorflow"]
