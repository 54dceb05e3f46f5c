"""The full-size presets: built at their published sizes and run for one step at batch 1 on CPU.

Slow (GPT-2 small's training step alone is about 0.9 TFLOP at 1024 positions), so in one framework:
torch, eager, in this process; the transformers are marked ``heavy`` (``make test-heavy``). Parity
of each family is proven on small members (tests/test_parity.py); this proves the full sizes build,
count their parameters as published and run forward and backward.
"""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from adapters.base import BuildOptions
from workloads.architectures import families, get
from workloads.datasets import synthetic

torch_adapter = pytest.importorskip("adapters.torch_adapter")

# resnet50 and resnet110 take seconds and run in `make test`; the transformers take a minute or more each
# on one core and run in `make test-heavy`
HEAVY = pytest.mark.heavy
FULL = [
    "resnet50",
    "resnet110",
    pytest.param("vit_b16", marks=HEAVY),
    pytest.param("bert_base", marks=HEAVY),
    pytest.param("gpt2_small", marks=HEAVY),
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_preset_builds_and_trains_one_step_at_batch_1(name: str) -> None:
    arch = get(name)
    # weights, gradients, momentum and the float64 copies numpy makes on the way: ~20 bytes a parameter
    need = 20 * arch.param_count() + (1 << 30)
    if psutil.virtual_memory().available < need:
        pytest.skip(f"{name} needs about {need >> 30} GiB free; this machine has less")
    published = families.PRESETS[name].published_params if name in families.PRESETS else arch.published_params
    params = arch.init_variables(0)
    adapter = torch_adapter.ADAPTER(arch, params, BuildOptions(compile="off", threads=1))
    assert adapter.native_param_count() == arch.param_count()
    if published is not None:
        assert arch.param_count() == published
    x, y = synthetic(arch.input_shape, arch.num_classes, 1, 1, arch.vocab_size, arch.label_shape)
    xd, yd = adapter.to_device(x), adapter.to_device(y)
    logits = adapter.to_numpy(adapter.infer(xd))
    assert logits.shape == (1, *arch.shapes()[-1]) and np.isfinite(logits).all()
    loss = float(adapter.to_numpy(adapter.train_step(xd, yd)))
    assert np.isfinite(loss)
    # the step moved the weights (the first kernel), in float32
    first = next(iter(arch.param_layout()))
    after = adapter.export_params()[first]
    assert after.dtype == np.float32 and not np.array_equal(after, params[first])
