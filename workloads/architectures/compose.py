"""How the framework layer modules (``adapters/<fw>_layers.py``) turn the spec into a native model.

Each of them declares

- ``ACTIVATIONS: dict[Activation, ...]``: its native form of every activation (``ACTIVATION_NAMES``);
- ``BUILDERS: dict[type, Builder]``: one builder per leaf type, in the order of ``LEAF_TYPES``; a
  builder is ``(path, layer, shape, ctx) -> native piece`` (a module, a block, a function);
- a build context, a :class:`Composer` subclass: the framework's state during the build (bindings
  of the canonical variables, or the channel-last flag) and how its pieces chain and join;
- ``build(arch)``: :func:`compose` with those three, returning what the framework's adapter needs.

Worker-side module: numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeAlias, TypeVar, get_args

from workloads.architectures.architecture import Architecture
from workloads.architectures.layers import (
    Activation,
    BatchNorm,
    Conv,
    GlobalAvgPool,
    Layer,
    Leaf,
    PadShortcut,
    Pool,
    Residual,
    Shape,
    ToSequence,
    chain_shapes,
    variable_name,
)

LEAF_TYPES: tuple[type, ...] = get_args(Leaf)  # the leaf types, in the order of the ``Leaf`` union
ACTIVATION_NAMES: tuple[Activation, ...] = get_args(Activation)

# Leaves a channel-last framework runs on ``(N, *spatial, C)`` data when their sample has spatial dims
# (they work along the channel axis, or, for ``ToSequence``, channel-last data already is the
# sequence); every other leaf reads the canonical layout.
CHANNEL_LAST_READERS: tuple[type, ...] = (Conv, Pool, GlobalAvgPool, BatchNorm, PadShortcut, ToSequence)
# Those of them whose output is still a spatial sample (so stays channel-last).
CHANNEL_LAST_WRITERS: tuple[type, ...] = (Conv, Pool, BatchNorm, PadShortcut)

N = TypeVar("N")  # a framework's native piece: an nn.Module, a Gluon block, a function
B = TypeVar("B")  # a framework's binding of a canonical variable
Builder: TypeAlias = Callable[[str, Any, Shape, Any], N]  # (path, layer, shape, ctx) -> native piece


class Composer(Generic[N]):
    """The framework half of :func:`compose`: its build context (passed to every builder as ``ctx``).

    A subclass says how the framework chains pieces and joins a residual, and, if it runs spatial
    leaves channel-last (``channel_last = True``), how it moves the channel axis.
    """

    channel_last: bool = False

    def sequence(self, parts: list[N]) -> N:
        """The pieces applied one after the other (an empty list is the identity)."""
        raise NotImplementedError

    def residual(self, layer: Residual, body: N, shortcut: N) -> N:
        """``act(body(x) + shortcut(x))`` with ``layer.activation``."""
        raise NotImplementedError

    def relayout(self, channel_last: bool) -> N:
        """A piece moving the channel axis of ``(N, C, *spatial)`` data last (True) or back to axis 1 (False)."""
        raise NotImplementedError(f"{type(self).__name__} runs every layer channel-first")


class BindingComposer(Composer[N], Generic[N, B]):
    """A context that records where each canonical variable lives in the native model (torch, MXNet)."""

    def __init__(self) -> None:
        self.bindings: dict[str, B] = {}

    def bind(self, path: str, bindings: Mapping[str, B]) -> None:
        """Record a leaf's bindings, keyed by kind (``{"kernel": ..., "bias": ...}``)."""
        self.bindings |= {variable_name(path, kind): b for kind, b in bindings.items()}

    def in_layout_order(self, arch: Architecture, framework: str) -> dict[str, B]:
        """The bindings in ``arch.variable_layout()`` order; raises if they do not cover it exactly."""
        layout = arch.variable_layout()
        if set(self.bindings) != set(layout):
            raise AssertionError(f"{framework} build of {arch.name} binds {sorted(self.bindings)}, not {list(layout)}")
        return {name: self.bindings[name] for name in layout}


LayerFn: TypeAlias = Callable[[Any, Any], Any]  # a functional framework's piece: (run, x) -> y


class FunctionComposer(Composer[LayerFn]):
    """A channel-last context whose pieces are functions ``(run, x) -> y`` (TensorFlow, JAX).

    ``run`` is the framework's per-call state (variables, training flag); the activations and the
    moves of the channel axis are the framework's own functions.
    """

    channel_last = True

    def __init__(
        self,
        activations: Mapping[Activation, Callable[[Any], Any]],
        to_channel_last: LayerFn,
        to_channel_first: LayerFn,
    ) -> None:
        self.activations = activations
        self.to_channel_last, self.to_channel_first = to_channel_last, to_channel_first

    def sequence(self, parts: list[LayerFn]) -> LayerFn:
        def chained(run: Any, x: Any) -> Any:
            for part in parts:
                x = part(run, x)
            return x

        return chained

    def residual(self, layer: Residual, body: LayerFn, shortcut: LayerFn) -> LayerFn:
        act = self.activations[layer.activation]
        return lambda run, x: act(body(run, x) + shortcut(run, x))

    def relayout(self, channel_last: bool) -> LayerFn:
        return self.to_channel_last if channel_last else self.to_channel_first


def compose(arch: Architecture, builders: Mapping[type, Builder[N]], ctx: Composer[N]) -> N:
    """The whole model as one native piece: every leaf through ``builders[type(leaf)]``, with the
    path and input shape :func:`walk` gives it, chained and joined by ``ctx``.

    For a channel-last context, float inputs with spatial dims arrive channel-last (as the adapters'
    ``to_device`` hands them over); a ``ctx.relayout`` piece goes in front of every leaf that reads
    the other layout (``CHANNEL_LAST_READERS``), and after a residual shortcut whose output layout
    differs from its body's.
    """
    channel_last = ctx.channel_last and arch.input_dtype == "float32" and len(arch.input_shape) >= 2
    return _compose(arch.layers, arch.input_shape, builders, ctx, channel_last, "")[0]


def _compose(
    layers: tuple[Layer, ...],
    in_shape: Shape,
    builders: Mapping[type, Builder[N]],
    ctx: Composer[N],
    channel_last: bool,
    prefix: str,
) -> tuple[N, bool]:
    """``layers`` (paths ``{prefix}{i}``) as one piece, and whether its output is channel-last."""
    parts: list[N] = []
    for i, (layer, shape) in enumerate(zip(layers, chain_shapes(layers, in_shape), strict=False)):
        path = f"{prefix}{i}"
        if isinstance(layer, Residual):
            body, body_cl = _compose(layer.body, shape, builders, ctx, channel_last, f"{path}.body.")
            shortcut, short_cl = _compose(layer.shortcut, shape, builders, ctx, channel_last, f"{path}.shortcut.")
            if short_cl != body_cl:
                shortcut = ctx.sequence([shortcut, ctx.relayout(body_cl)])
            parts.append(ctx.residual(layer, body, shortcut))
            channel_last = body_cl
            continue
        builder = builders.get(type(layer))
        if builder is None:
            raise TypeError(f"{type(ctx).__name__}: no builder for {type(layer).__name__}")
        reads_cl = ctx.channel_last and len(shape) >= 2 and isinstance(layer, CHANNEL_LAST_READERS)
        if len(shape) >= 2 and reads_cl != channel_last:
            parts.append(ctx.relayout(reads_cl))
        parts.append(builder(path, layer, shape, ctx))
        channel_last = reads_cl and isinstance(layer, CHANNEL_LAST_WRITERS)
    return ctx.sequence(parts), channel_last
