# CUDA image: PyTorch, JAX and TensorFlow on NVIDIA GPUs, the Ray worker and the harness.
#
#   docker build -f infra/images/cuda.Dockerfile -t REGISTRY/dl-bench-harness-cuda:0.1.0 .
#
# Build from the repository root (the context). The CUDA libraries come as pip wheels with each
# framework, so the base is a plain Python image; the node supplies the NVIDIA driver (the NVIDIA
# container toolkit, or the GPU device plugin on Kubernetes).
#
# Each framework gets its own venv (.venvs/<framework>, found by harness/envs.py, named again in
# HARNESS_PYTHON_<FW>): torch, jax[cuda12] and tensorflow[and-cuda] each pin their own CUDA wheel
# versions (cuDNN, cuBLAS, NCCL), which need not agree in one environment. The image's Python holds
# the driver side only (Ray, MLflow, the harness); trials start the framework's interpreter.
FROM python:3.11-slim-bookworm

# The same versions as pyproject.toml's extras (torch==, jax[cpu]==, tensorflow-cpu==): only the
# accelerator flavour differs. tests/test_infra.py checks that they agree.
ARG TORCH_VERSION=2.13.0
ARG JAX_VERSION=0.10.2
ARG TF_VERSION=2.21.0
ARG GIT_COMMIT=unknown
ENV HARNESS_GIT_COMMIT=${GIT_COMMIT}

LABEL org.opencontainers.image.title="dl-bench-harness-cuda" \
      org.opencontainers.image.description="dl-bench-harness: torch, jax, tensorflow on CUDA 12, Ray worker" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

# NVIDIA_*: the container toolkit mounts the driver into a non-CUDA base image only when asked.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_worker_niceness=0 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HARNESS_PYTHON_TORCH=/opt/harness/.venvs/torch/bin/python \
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

# PyTorch: PyPI's Linux x86_64 wheel of the pinned torch is the CUDA build (extra "torch").
RUN python -m venv /opt/harness/.venvs/torch \
    && /opt/harness/.venvs/torch/bin/pip install --upgrade pip \
    && /opt/harness/.venvs/torch/bin/pip install -e ".[torch]" "torch==${TORCH_VERSION}"

# JAX: the pinned jax (extra "jax") with its CUDA 12 plugin and CUDA wheels.
RUN python -m venv /opt/harness/.venvs/jax \
    && /opt/harness/.venvs/jax/bin/pip install --upgrade pip \
    && /opt/harness/.venvs/jax/bin/pip install -e ".[jax]" "jax[cuda12]==${JAX_VERSION}"

# TensorFlow: the GPU build (tensorflow, not tensorflow-cpu) with its CUDA wheels.
RUN python -m venv /opt/harness/.venvs/tensorflow \
    && /opt/harness/.venvs/tensorflow/bin/pip install --upgrade pip \
    && /opt/harness/.venvs/tensorflow/bin/pip install -e . "tensorflow[and-cuda]==${TF_VERSION}"

RUN mkdir -p /var/lib/harness/runs /var/lib/harness/cache
WORKDIR /var/lib/harness

# On one GPU machine with no cluster: the smoke suite on the GPU, embedded Ray, ./mlflow.db.
CMD ["harness", "run", "smoke", "--device", "gpu", "--framework", "torch,jax,tensorflow"]
