"""The four ``adapters/<fw>_layers.py`` modules have one shape (see ``workloads.architectures.compose``).

Each module's ``BUILDERS`` maps every leaf type of the ``Leaf`` union, in the union's order, to a
builder ``(path, layer, shape, ctx)``; its ``ACTIVATIONS`` covers every activation; its entry point is
``build(arch)`` (further parameters, with defaults, are build settings); it spells no float constant
of its own (epsilons and scales come from the spec).
These checks read each module's source (its syntax tree), so no framework is imported and MXNet,
which lives in its own venv, is checked like the others. The frameworks installed here are also
imported once, to check the runtime mappings against the spec's classes themselves.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

from tests.layer_archs import LAYER_ARCHITECTURES
from workloads.architectures import ARCHITECTURES
from workloads.architectures.compose import ACTIVATION_NAMES, LEAF_TYPES, Composer, compose
from workloads.architectures.layers import (
    Conv,
    Leaf,
    Residual,
    Shape,
)

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
FRAMEWORKS = ("torch", "tensorflow", "jax", "mxnet")
LEAF_NAMES = [t.__name__ for t in LEAF_TYPES]


def module_tree(fw: str) -> ast.Module:
    return ast.parse((ADAPTERS / f"{fw}_layers.py").read_text(), filename=f"{fw}_layers.py")


def module_dict(fw: str, name: str) -> ast.Dict:
    """The dict literal assigned to the module-level ``name`` (fails if there is none)."""
    for node in module_tree(fw).body:
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Assign):
            targets = node.targets
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            assert isinstance(node.value, ast.Dict), f"{fw}_layers.{name} is not a dict literal"
            return node.value
    pytest.fail(f"adapters/{fw}_layers.py has no module-level {name}")


def functions(fw: str) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in module_tree(fw).body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_every_leaf_type_has_a_builder_in_union_order(fw: str) -> None:
    keys = [k.id if isinstance(k, ast.Name) else ast.unparse(k) for k in module_dict(fw, "BUILDERS").keys if k]
    missing = [name for name in LEAF_NAMES if name not in keys]
    assert not missing, f"{fw}_layers.BUILDERS has no builder for {missing}"
    assert keys == LEAF_NAMES, f"{fw}_layers.BUILDERS is not in the order of the Leaf union"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_builders_take_path_layer_shape_ctx(fw: str) -> None:
    defs = functions(fw)
    for key, value in zip(module_dict(fw, "BUILDERS").keys, module_dict(fw, "BUILDERS").values, strict=True):
        assert isinstance(key, ast.Name) and isinstance(value, ast.Name), ast.unparse(value)
        builder = defs.get(value.id)
        assert builder is not None, f"{fw}: the builder of {key.id} is not a module-level function"
        args = [a.arg for a in builder.args.args]
        assert args == ["path", "layer", "shape", "ctx"], f"{fw}.{value.id}{tuple(args)}"
        annotation = builder.args.args[1].annotation
        assert annotation is not None and ast.unparse(annotation) == key.id, f"{fw}.{value.id} takes {key.id}"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_activations_cover_the_spec(fw: str) -> None:
    keys = [k.value for k in module_dict(fw, "ACTIVATIONS").keys if isinstance(k, ast.Constant)]
    assert keys == list(ACTIVATION_NAMES)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_entry_point_is_build_arch_through_compose(fw: str) -> None:
    build = functions(fw).get("build")
    assert build is not None and [a.arg for a in build.args.args][:1] == ["arch"]
    # anything after the spec is a build setting with a default (JAX's and TF's compute dtype)
    assert len(build.args.defaults) == len(build.args.args) - 1
    calls = {n.func.id for n in ast.walk(build) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "compose" in calls, f"{fw}_layers.build does not go through compose.compose"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_no_float_constants_of_its_own(fw: str) -> None:
    """Epsilons and attention scales come from the spec's layers or constants, not literals."""
    floats = {n.value for n in ast.walk(module_tree(fw)) if isinstance(n, ast.Constant) and type(n.value) is float}
    assert floats <= {0.0, 1.0}, f"{fw}_layers spells float constants {sorted(floats)}"


@pytest.mark.parametrize("fw", [fw for fw in FRAMEWORKS if importlib.util.find_spec(fw)])
def test_runtime_builders_are_the_leaf_types(fw: str) -> None:
    module = importlib.import_module(f"adapters.{fw}_layers")
    assert list(module.BUILDERS) == list(LEAF_TYPES)
    assert list(module.ACTIVATIONS) == list(ACTIVATION_NAMES)


class Trace(Composer[str]):
    """A framework-free composer: the pieces are their description."""

    channel_last = True

    def sequence(self, parts: list[str]) -> str:
        return "[" + ", ".join(parts) + "]"

    def residual(self, layer: Residual, body: str, shortcut: str) -> str:
        return f"res({body} + {shortcut})"

    def relayout(self, channel_last: bool) -> str:
        return "to_cl" if channel_last else "to_cf"


def trace_builder(path: str, layer: Leaf, shape: Shape, ctx: object) -> str:
    return f"{path}:{type(layer).__name__}"


TRACE = dict.fromkeys(LEAF_TYPES, trace_builder)


def test_compose_moves_the_channel_axis_only_where_the_layout_changes() -> None:
    cnn = compose(ARCHITECTURES["cnn1d"], TRACE, Trace())
    assert cnn == "[0:Conv, 1:Conv, 2:Conv, to_cf, 3:Flatten, 4:Dense]"
    gru = compose(ARCHITECTURES["gru"], TRACE, Trace())
    assert gru == "[0:ToSequence, 1:Recurrent, 2:Flatten, 3:Dense]"
    resnet = compose(ARCHITECTURES["resnet20"], TRACE, Trace())
    assert "to_c" not in resnet and "res([3.body.0:Conv, 3.body.1:BatchNorm" in resnet
    assert "res([5.body.0:Conv" in resnet and "[5.shortcut.0:PadShortcut]" in resnet


def test_compose_reads_images_channel_last_into_sequences() -> None:
    """A ViT's patches go from the channel-last convolution straight to ``ToSequence`` (a reshape there);
    the ResNet stem's padded max pooling stays channel-last."""
    vit = compose(LAYER_ARCHITECTURES["tiny_vit"], TRACE, Trace())
    assert vit == "[0:Conv, 1:ToSequence, 2:ClassToken, 3:TransformerBlock, 4:LayerNorm, 5:FirstToken, 6:Dense]"
    stem = compose(LAYER_ARCHITECTURES["tiny_resnet_stem"], TRACE, Trace())
    assert stem.startswith("[0:Conv, 1:BatchNorm, 2:Pool, res(") and "to_c" not in stem


def test_compose_refuses_a_leaf_without_builder() -> None:
    builders = {t: b for t, b in TRACE.items() if t is not Conv}
    with pytest.raises(TypeError, match="no builder for Conv"):
        compose(ARCHITECTURES["cnn1d"], builders, Trace())
