"""Run by each framework's own interpreter: ``python -m tests.parity_probe FRAMEWORK OUT.npz``.

Records, for every architecture, what the parity suite compares across frameworks: the native
parameter count, export(load(w)), logits on a fixed batch, and the losses and weights (batch-norm running
statistics included) after one SGD step and after three Adam steps from the same canonical weights,
and the eval-mode logits after the SGD step. Numpy and the one framework.
"""

from __future__ import annotations

import sys

import numpy as np

from adapters import load_adapter
from adapters.base import BuildOptions
from workloads.architectures import ARCHITECTURES
from workloads.datasets import synthetic

TRAINING = {"sgd": (3, 0.02), "adam": (3, 1e-3)}  # optimizer -> (steps, learning rate)


def probe(framework: str) -> dict[str, np.ndarray]:
    adapter_cls = load_adapter(framework)
    out: dict[str, np.ndarray] = {}
    for name, arch in ARCHITECTURES.items():
        params = arch.init_variables(13)
        x, y = synthetic(arch.input_shape, arch.num_classes, 32, seed=14, vocab_size=arch.vocab_size)
        for optimizer, (steps, lr) in TRAINING.items():
            options = BuildOptions(threads=2, optimizer=optimizer, learning_rate=lr)  # type: ignore[arg-type]
            a = adapter_cls(arch, params, options)
            xd, yd = a.to_device(x), a.to_device(y)
            if optimizer == "sgd":  # one build serves the untrained checks too (one compile less for XLA)
                out[f"{name}/param_count"] = np.array(a.native_param_count())
                out |= {f"{name}/roundtrip/{k}": v for k, v in a.export_params().items()}
                out[f"{name}/logits"] = a.to_numpy(a.infer(xd))
            out[f"{name}/{optimizer}/loss"] = np.array([float(a.to_numpy(a.train_step(xd, yd))) for _ in range(steps)])
            out |= {f"{name}/{optimizer}/w/{k}": v for k, v in a.export_params().items()}
            if optimizer == "sgd":
                out[f"{name}/sgd/logits_after"] = a.to_numpy(a.infer(xd))  # eval mode, trained state
    return out


if __name__ == "__main__":
    np.savez(sys.argv[2], **probe(sys.argv[1]))  # type: ignore[arg-type]
