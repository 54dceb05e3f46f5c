"""The framework-neutral model: an input sample shape and a stack of layer specs from ``layers.py``.

Worker-side module: numpy and the standard library only. From the layers it derives the shapes, the
canonical variable layout, the FLOPs and the initial weights of the whole model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from workloads.architectures.layers import (
    Dense,
    Embedding,
    Layer,
    Leaf,
    LMHead,
    Shape,
    chain_shapes,
    variable_name,
    walk,
)


@dataclass(frozen=True)
class Architecture:
    """A classifier or a language model: input sample shape and layers.

    A classifier's last layer is a ``Dense`` with no activation (its logits); a language model's is an
    ``LMHead`` whose tied table is that of its first layer, an ``Embedding`` of the same vocabulary and
    width (logits per position).
    """

    name: str
    description: str
    input_shape: Shape
    layers: tuple[Layer, ...]
    published_params: int | None = None  # the count its reference publishes, when it has one
    reference: str = ""

    def __post_init__(self) -> None:
        last = self.layers[-1] if self.layers else None
        if not isinstance(last, LMHead) and (not isinstance(last, Dense) or last.activation != "none"):
            raise ValueError(f"{self.name}: the last layer must be Dense with activation 'none' (logits) or LMHead")
        shapes = self.shapes()  # raises on inconsistent shapes
        if isinstance(last, LMHead):
            first, width = self.layers[0], shapes[-2][-1]
            if not isinstance(first, Embedding) or (first.vocab, first.dim) != (last.vocab, width):
                raise ValueError(
                    f"{self.name}: an LMHead({last.vocab}) on width {width} ties the table of a first layer "
                    f"Embedding({last.vocab}, {width}), not of {first}"
                )

    @property
    def lm_head(self) -> LMHead | None:
        last = self.layers[-1]
        return last if isinstance(last, LMHead) else None

    @property
    def num_classes(self) -> int:
        """Classes of a classifier; the vocabulary of a language model (its classes at every position)."""
        last = self.layers[-1]
        assert isinstance(last, Dense | LMHead)
        return last.units if isinstance(last, Dense) else last.vocab

    @property
    def label_shape(self) -> Shape:
        """A sample's label shape: ``()`` for a classifier, ``(T,)`` for a language model (output less class axis)."""
        return self.shapes()[-1][:-1]

    @property
    def embedding(self) -> Embedding | None:
        first = self.layers[0]
        return first if isinstance(first, Embedding) else None

    @property
    def input_dtype(self) -> Literal["float32", "int32"]:
        """Token models take int32 ids; every other model float32 samples."""
        return "int32" if self.embedding else "float32"

    @property
    def vocab_size(self) -> int | None:
        return self.embedding.vocab if self.embedding else None

    def for_data(self, sample_shape: Shape, dtype: str, vocab_size: int | None = None) -> Architecture:
        """The same architecture sized for a dataset's samples (raises ValueError when it cannot take them).

        Widths that follow from the input (first dense or convolution fan-in, sequence length,
        learned positions, vocabulary) adapt; input channels do not: single-channel images fed to a
        model that takes more channels are repeated channel-wise (``datasets.fit_channels``).
        """
        if self.lm_head:
            raise ValueError(f"{self.name}: a language model trains on synthetic next-token batches only")
        if dtype != self.input_dtype:
            raise ValueError(f"{self.name} takes {self.input_dtype} inputs, the dataset has {dtype}")
        shape = tuple(sample_shape)
        channels = self.input_shape[0]
        if len(shape) == len(self.input_shape) > 1 and shape[0] == 1 and channels > 1 and self.input_dtype == "float32":
            shape = (channels, *shape[1:])
        layers = self.layers
        if self.embedding and vocab_size is not None:
            layers = (dataclasses.replace(self.embedding, vocab=vocab_size), *layers[1:])
        try:
            return dataclasses.replace(self, input_shape=shape, layers=layers)
        except ValueError as exc:
            raise ValueError(f"{self.name} cannot take samples of shape {tuple(sample_shape)}: {exc}") from None

    def shapes(self) -> list[Shape]:
        """Input shape of every top-level layer, then the output shape."""
        return chain_shapes(self.layers, self.input_shape)

    def leaves(self) -> list[tuple[str, Leaf, Shape]]:
        return list(walk(self.layers, self.input_shape))

    def param_layout(self) -> dict[str, Shape]:
        """Trainable parameters: canonical names (``"{path}.{kind}"``, in layer order) and shapes."""
        leaves = self.leaves()
        return {variable_name(p, k): s for p, layer, shape in leaves for k, s in layer.param_shapes(shape).items()}

    def state_layout(self) -> dict[str, Shape]:
        """Non-trainable state (batch-norm running statistics)."""
        leaves = self.leaves()
        return {variable_name(p, k): s for p, layer, shape in leaves for k, s in layer.state_shapes(shape).items()}

    def variable_layout(self) -> dict[str, Shape]:
        """Everything an adapter loads and exports: parameters, then state."""
        return self.param_layout() | self.state_layout()

    def param_count(self) -> int:
        """Trainable scalars (state excluded), the number frameworks and papers report."""
        return sum(math.prod(s) for s in self.param_layout().values())

    def forward_flops(self) -> int:
        """Forward FLOPs per sample."""
        return sum(layer.forward_flops(shape) for _, layer, shape in self.leaves())

    def flops_per_sample(self, mode: str) -> int:
        return 3 * self.forward_flops() if mode == "train" else self.forward_flops()

    def init_variables(self, seed: int) -> dict[str, np.ndarray]:
        """Canonical float32 initial parameters and state, generated in numpy from ``seed``.

        Each layer documents its rule; frameworks' own initialisers are never used.
        """
        rng = np.random.default_rng(seed)
        values: dict[str, np.ndarray] = {}
        for path, layer, shape in self.leaves():
            values |= {variable_name(path, k): v for k, v in layer.init(shape, rng).items()}
        layout = self.variable_layout()
        return {k: values[k] for k in layout}
