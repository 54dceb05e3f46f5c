#!/usr/bin/env bash
# GPU check: on a machine with one NVIDIA GPU where torch and/or jax with CUDA are already installed
# (no network; TensorFlow, Ray, MLflow and pydantic not needed), run every installed adapter's
# conformance checks on device=gpu and a short sweep (two presets x float32/bfloat16 x train/infer),
# each trial a fresh worker process (python -m harness.worker), and print a table. Under 8 minutes.
#
#   infra/gpu-check.sh [--frameworks torch,jax] [--json results.json]
#   PYTHON=/path/to/python infra/gpu-check.sh    # the interpreter that has torch/jax with CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L failed); nothing run" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" -c 'import numpy' 2>/dev/null || { echo "gpu-check: $PYTHON has no numpy" >&2; exit 2; }
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peaks mean nothing after a grab-all (as the harness sets)
exec timeout --signal=INT 470 "$PYTHON" -m benchmarks.gpu_check --device gpu "$@"
