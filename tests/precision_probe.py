"""Run by each framework's own interpreter: ``python -m tests.precision_probe FRAMEWORK OUT.npz``.

Records what ``tests/test_precision.py`` checks of mixed precision, on a few small models (batch 8):
eval-mode logits in ``bfloat16`` (and ``float16`` for some), the loss and the exported weights after
one SGD step in float32 and in the low precision, and float16's loss scale around a step with an
injected non-finite gradient and around a step whose scaled gradients overflow. Numpy and the one
framework.
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np

from adapters import load_adapter
from adapters.base import Adapter, BuildOptions
from workloads.architectures import get
from workloads.datasets import synthetic

# dense, conv, batch norm, recurrent, attention; the batch-norm and attention models are the smallest
# members of the zoo's families (resnet20's and transformer's layers at a fraction of the compile time)
ENCODER = "encoder[layers=1,d_model=16,heads=2,seq=8,vocab=16,classes=10,mlp_ratio=2]"
ARCHS = ("mlp_deep", "lenet5", "resnet_cifar[n=1]", "gru", ENCODER)
FLOAT16_ARCHS = ("mlp_deep", ENCODER)
EAGER_ARCHS = ("lenet5",)  # also built with compile="off": the framework's eager low-precision kernels
LR = 0.02  # one SGD step
BATCH = 8


def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
    arch = get(name)
    return synthetic(arch.input_shape, arch.num_classes, BATCH, seed=14, vocab_size=arch.vocab_size)


def probe(framework: str) -> dict[str, np.ndarray]:
    adapter_cls = load_adapter(framework)
    out: dict[str, np.ndarray] = {}

    def build(name: str, precision: str, **options: object) -> Adapter:
        arch = get(name)
        opts = BuildOptions(threads=2, precision=precision, learning_rate=LR, **options)  # type: ignore[arg-type]
        return adapter_cls(arch, arch.init_variables(13), opts)

    for name in ARCHS:
        x, y = batch(name)
        for precision in ("float32", "bfloat16", *(("float16",) if name in FLOAT16_ARCHS else ())):
            a = build(name, precision)
            xd, yd = a.to_device(x), a.to_device(y)
            if precision != "float32":
                out[f"{name}/{precision}/logits"] = a.to_numpy(a.infer(xd))
                out[f"runtime/{precision}"] = np.array(json.dumps(a.runtime(), default=str))
            out[f"{name}/{precision}/loss"] = np.array(float(a.to_numpy(a.train_step(xd, yd))))
            out |= {f"{name}/{precision}/w/{k}": v for k, v in a.export_params().items()}
        if name in EAGER_ARCHS:
            a = build(name, "bfloat16", compile="off", trainable=False)
            out[f"{name}/bfloat16/logits_eager"] = a.to_numpy(a.infer(a.to_device(x)))

    # float16 loss scaling: a step with a non-finite gradient (an inf in the input), then a finite one
    x, y = batch("mlp_shallow")
    a = build("mlp_shallow", "float16")
    bad = x.copy()
    bad[0, 0, 0] = np.inf
    scales, weights, losses = [a.loss_scale()], [a.export_params()], []
    for xb in (bad, x):
        losses.append(float(a.to_numpy(a.train_step(a.to_device(xb), a.to_device(y)))))
        scales.append(a.loss_scale())
        weights.append(a.export_params())
    out["scaling/scales"], out["scaling/losses"] = np.array(scales, np.float64), np.array(losses)
    out["scaling/moved"] = np.array(
        [max(float(np.abs(w[k] - v).max()) for k, v in p.items()) for p, w in itertools.pairwise(weights)]
    )
    # the residual MLP's first scaled backward overflows float16 at the initial scale (2**15): a real skip
    x, y = batch("mlp_residual")
    a = build("mlp_residual", "float16")
    before = a.export_params()
    a.train_step(a.to_device(x), a.to_device(y))
    after = a.export_params()
    out["overflow/scale"] = np.array(a.loss_scale())
    out["overflow/moved"] = np.array(max(float(np.abs(after[k] - v).max()) for k, v in before.items()))
    return out


if __name__ == "__main__":
    np.savez(sys.argv[2], **probe(sys.argv[1]))  # type: ignore[arg-type]
