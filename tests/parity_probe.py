"""Run by each framework's own interpreter: ``python -m tests.parity_probe FRAMEWORK OUT.npz [NAME ...]``.

Records, for every architecture named (by default ``PROBED``: the zoo and ``tests.layer_archs``; a
name is looked up there, then by ``workloads.architectures.get``), what the parity suite compares
across frameworks: the native parameter count, export(load(w)), logits on a fixed batch, and the
losses and weights (batch-norm running statistics included) after three SGD steps and after three
Adam steps from the same canonical weights, and the eval-mode logits after the SGD steps. Numpy and
the one framework.
"""

from __future__ import annotations

import sys

import numpy as np

from adapters import load_adapter
from adapters.base import BuildOptions
from tests.layer_archs import LAYER_ARCHITECTURES, resolve
from workloads.architectures import ARCHITECTURES
from workloads.datasets import synthetic

TRAINING = {"sgd": (3, 0.02), "adam": (3, 1e-3)}  # optimizer -> (steps, learning rate)
PROBED = [*ARCHITECTURES, *LAYER_ARCHITECTURES]  # what the probe runs by default


def probe_batch(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The batch every framework's probe of ``name`` computes on."""
    arch = resolve(name)
    return synthetic(
        arch.input_shape, arch.num_classes, 32, seed=14, vocab_size=arch.vocab_size, label_shape=arch.label_shape
    )


def probe(framework: str, names: list[str]) -> dict[str, np.ndarray]:
    adapter_cls = load_adapter(framework)
    out: dict[str, np.ndarray] = {}
    for name in names:
        arch = resolve(name)
        params = arch.init_variables(13)
        x, y = probe_batch(name)
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
    np.savez(sys.argv[2], **probe(sys.argv[1], sys.argv[3:] or PROBED))  # type: ignore[arg-type]
