"""Framework-neutral layer specs: shapes, canonical parameter layout, FLOPs, initial weights.

Worker-side module: numpy and the standard library only.

Canonical layout (every adapter converts to and from it itself):
- tensors are channel-first: a sample is ``(C, L)`` for 1-D and ``(C, H, W)`` for 2-D data;
- a dense kernel is ``(in, out)`` and its bias ``(out,)``;
- a convolution kernel is ``(out, in, *kernel)`` (OIW / OIHW) and its bias ``(out,)``.

FLOPs count 2 per multiply-add; bias adds, activations and pooling are left out, the convention
of most published FLOP counts. Training costs 3x the forward pass (forward + backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

Activation = Literal["relu", "tanh", "none"]
Shape: TypeAlias = tuple[int, ...]
ParamShapes: TypeAlias = dict[str, Shape]


@dataclass(frozen=True)
class Dense:
    """Fully connected layer on a flat feature vector: ``y = act(x @ W + b)``."""

    units: int
    activation: Activation = "relu"

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1)
        return (self.units,)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {"kernel": (in_shape[0], self.units), "bias": (self.units,)}

    def forward_flops(self, in_shape: Shape) -> int:
        return 2 * in_shape[0] * self.units


@dataclass(frozen=True)
class Conv:
    """Convolution over 1 or 2 spatial dims (by the length of ``kernel``), zero padding."""

    filters: int
    kernel: Shape
    stride: Shape
    padding: Shape
    activation: Activation = "relu"

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel)

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1 + self.spatial_dims)
        spatial = tuple(
            (n + 2 * p - k) // s + 1
            for n, k, s, p in zip(in_shape[1:], self.kernel, self.stride, self.padding, strict=True)
        )
        if min(spatial) < 1:
            raise ValueError(f"{self} turns input {in_shape} into an empty output {spatial}")
        return (self.filters, *spatial)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {"kernel": (self.filters, in_shape[0], *self.kernel), "bias": (self.filters,)}

    def forward_flops(self, in_shape: Shape) -> int:
        out = self.out_shape(in_shape)
        return 2 * in_shape[0] * math.prod(self.kernel) * math.prod(out)


@dataclass(frozen=True)
class Flatten:
    """Channel-first flatten: ``(C, *spatial) -> (C * prod(spatial),)``."""

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {}

    def forward_flops(self, in_shape: Shape) -> int:
        return 0


Layer: TypeAlias = Dense | Conv | Flatten


def _expect_rank(layer: Layer, in_shape: Shape, rank: int) -> None:
    if len(in_shape) != rank:
        raise ValueError(f"{layer} expects a rank-{rank} sample, got shape {in_shape}")


@dataclass(frozen=True)
class Architecture:
    """A sequential classifier: input sample shape, layers, number of classes (last layer's units)."""

    name: str
    description: str
    input_shape: Shape
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        last = self.layers[-1] if self.layers else None
        if not isinstance(last, Dense) or last.activation != "none":
            raise ValueError(f"{self.name}: the last layer must be Dense with activation 'none' (logits)")
        self.shapes()  # raises on inconsistent shapes

    @property
    def num_classes(self) -> int:
        last = self.layers[-1]
        assert isinstance(last, Dense)
        return last.units

    def shapes(self) -> list[Shape]:
        """Input shape of every layer, then the output shape."""
        shapes = [self.input_shape]
        for layer in self.layers:
            shapes.append(layer.out_shape(shapes[-1]))
        return shapes

    def param_layout(self) -> dict[str, Shape]:
        """Canonical parameter names (``"{index}.{kind}"``, in layer order) and shapes."""
        layout: dict[str, Shape] = {}
        for i, (layer, in_shape) in enumerate(zip(self.layers, self.shapes(), strict=False)):
            for kind, shape in layer.param_shapes(in_shape).items():
                layout[f"{i}.{kind}"] = shape
        return layout

    def param_count(self) -> int:
        return sum(math.prod(s) for s in self.param_layout().values())

    def forward_flops(self) -> int:
        """Forward FLOPs per sample."""
        return sum(layer.forward_flops(s) for layer, s in zip(self.layers, self.shapes(), strict=False))

    def flops_per_sample(self, mode: str) -> int:
        return 3 * self.forward_flops() if mode == "train" else self.forward_flops()

    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """Canonical float32 initial weights, generated in numpy from ``seed``.

        Kernels: He normal (std = sqrt(2 / fan_in)) before ReLU, LeCun normal (sqrt(1 / fan_in))
        otherwise; biases zero. Frameworks' own initialisers are never used.
        """
        rng = np.random.default_rng(seed)
        params: dict[str, np.ndarray] = {}
        for i, (layer, in_shape) in enumerate(zip(self.layers, self.shapes(), strict=False)):
            shapes = layer.param_shapes(in_shape)
            if not shapes:
                continue
            kernel = shapes["kernel"]
            fan_in = kernel[0] if isinstance(layer, Dense) else math.prod(kernel[1:])
            gain = 2.0 if getattr(layer, "activation", "none") == "relu" else 1.0
            std = math.sqrt(gain / fan_in)
            params[f"{i}.kernel"] = (rng.standard_normal(kernel) * std).astype(np.float32)
            params[f"{i}.bias"] = np.zeros(shapes["bias"], dtype=np.float32)
        return params
