"""One data-parallel SGD step from the canonical weights, for the parity tests (run as a process).

``python -m tests.dp_probe FRAMEWORK ARCH RANK PEERS OUT``: PEERS is a comma-separated list of
``host:port`` (one per rank; one entry: a single process on the whole batch). Each rank computes on
its consecutive share of the global batch (``GLOBAL_BATCH`` samples, the harness's synthetic batch)
and rank 0 writes the weights after one step, and the loss it saw, to OUT (``.npz``).
"""

from __future__ import annotations

import sys

import numpy as np

from adapters import load_adapter
from adapters.base import BuildOptions
from workloads import datasets
from workloads.architectures import get

GLOBAL_BATCH = 16


def main(framework: str, architecture: str, rank: int, peers: list[str], out: str) -> None:
    cls = load_adapter(framework)
    world = len(peers)
    if world > 1:
        cls.init_distributed(rank, peers, 60.0)
    arch = get(architecture)
    x, y = datasets.synthetic(arch.input_shape, arch.num_classes, GLOBAL_BATCH, 1, vocab_size=arch.vocab_size)
    share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    adapter = cls(arch, arch.init_variables(0), BuildOptions(threads=1, workers=world))
    loss = adapter.train_step(adapter.to_device(x[share]), adapter.to_device(y[share]))
    adapter.sync()
    params = adapter.export_params()
    if rank == 0:
        np.savez(out, loss=np.asarray(adapter.to_numpy(loss)), **params)


if __name__ == "__main__":
    fw, arch, rank, peers, out = sys.argv[1:6]
    main(fw, arch, int(rank), peers.split(","), out)
    sys.stdout.flush()
    import os

    os._exit(0)  # skip the frameworks' teardown (distributed runtimes can block at exit)
