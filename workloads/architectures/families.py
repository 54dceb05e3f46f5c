"""Model families with size keys, their published presets, and the one name syntax for a sized member.

A name is a fixed zoo architecture (``resnet20``), a preset (``resnet50``, ``gpt2_small``), a family
with keys (``mlp[depth=16,width=512]``) or a preset with keys overridden (``gpt2_small[seq=256]``).
Every key is an integer; keys left out take the family's (or preset's) value. :func:`canonical`
writes a name in one form (keys in the family's order, values equal to the default dropped), so the
same model always has the same name, and so the same trial key.

Presets are sized as their references publish them; tests check the parameter counts against the
published ones. Worker-side module: numpy and the standard library only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from workloads.architectures.architecture import Architecture
from workloads.architectures.layers import (
    BatchNorm,
    ClassToken,
    Conv,
    Dense,
    Embedding,
    FirstToken,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    LMHead,
    PadShortcut,
    Pool,
    Residual,
    ToSequence,
    TransformerBlock,
)

Keys = dict[str, int]

_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9_]*)(?:\[(?P<keys>[^\[\]]*)\])?$")


@dataclass(frozen=True)
class Key:
    """One size key of a family: its default and its valid values (a minimum, or a set)."""

    default: int
    minimum: int = 1
    choices: tuple[int, ...] = ()
    help: str = ""

    def check(self, family: str, name: str, value: int) -> None:
        if self.choices and value not in self.choices:
            raise ValueError(f"{family}: {name} must be one of {', '.join(map(str, self.choices))}, got {value}")
        if value < self.minimum:
            raise ValueError(f"{family}: {name} must be an integer >= {self.minimum}, got {value}")


@dataclass(frozen=True)
class Family:
    """A parametrised architecture: ``build(name, **keys)`` gives the member those keys select."""

    name: str
    description: str
    keys: Mapping[str, Key]
    build: Callable[..., Architecture]
    reference: str = ""

    def defaults(self) -> Keys:
        return {k: key.default for k, key in self.keys.items()}

    def signature(self) -> str:
        """``mlp[depth=8,width=256,...]``: every key with its default."""
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.defaults().items())}]"


@dataclass(frozen=True)
class Preset:
    """A published member of a family, by name."""

    family: str
    keys: Keys
    published_params: int | None = None
    reference: str = ""


# --- builders ----------------------------------------------------------------------------------


def _mlp(name: str, *, depth: int, width: int, input: int, classes: int) -> Architecture:
    layers: list[Layer] = [Flatten(), *[Dense(width) for _ in range(depth)], Dense(classes, activation="none")]
    return Architecture(
        name,
        f"multilayer perceptron: {depth} hidden layers of {width} ReLU units on {input} features",
        (1, input),
        tuple(layers),
    )


def _conv(filters: int, kernel: int, stride: int, padding: int, *, bias: bool = False) -> Conv:
    k, s, p = (kernel, kernel), (stride, stride), (padding, padding)
    return Conv(filters, k, s, p, activation="none", bias=bias, init_rule="he")


def _resnet_cifar(name: str, *, n: int, classes: int, image: int) -> Architecture:
    """He et al. (2016) section 4.2: 6n+2 layers, 3x3 convolutions, 16/32/64 filters, option-A shortcuts."""
    layers: list[Layer] = [_conv(16, 3, 1, 1), BatchNorm("relu")]
    channels = 16
    for filters in (16, 32, 64):
        for b in range(n):
            stride = 2 if filters != channels and b == 0 else 1
            body = (_conv(filters, 3, stride, 1), BatchNorm("relu"), _conv(filters, 3, 1, 1), BatchNorm())
            shortcut = (PadShortcut(filters, stride),) if stride != 1 else ()
            layers.append(Residual(body, shortcut, activation="relu"))
            channels = filters
    layers += [GlobalAvgPool(), Dense(classes, activation="none")]
    return Architecture(
        name,
        f"CIFAR ResNet-{6 * n + 2}: 3x3 convs (16/32/64 filters), batch norm, option-A shortcuts, "
        f"3x{image}x{image} input",
        (3, image, image),
        tuple(layers),
        reference="He, Zhang, Ren, Sun (2016), Deep Residual Learning, section 4.2",
    )


# bottleneck blocks per stage, by depth (3 convolutions a block, plus the stem and the classifier)
RESNET_STAGES: dict[int, tuple[int, ...]] = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def _resnet(name: str, *, depth: int, width: int, image: int, classes: int) -> Architecture:
    """ImageNet ResNet with bottleneck blocks (v1.5: the stride on the 3x3 conv, as torchvision)."""
    layers: list[Layer] = [_conv(width, 7, 2, 3), BatchNorm("relu"), Pool("max", (3, 3), (2, 2), (1, 1))]
    channels = width
    for stage, blocks in enumerate(RESNET_STAGES[depth]):
        inner = width * 2**stage
        out = 4 * inner
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            body = (
                _conv(inner, 1, 1, 0),
                BatchNorm("relu"),
                _conv(inner, 3, stride, 1),
                BatchNorm("relu"),
                _conv(out, 1, 1, 0),
                BatchNorm(),
            )
            shortcut = (_conv(out, 1, stride, 0), BatchNorm()) if stride != 1 or channels != out else ()
            layers.append(Residual(body, shortcut, activation="relu"))
            channels = out
    layers += [GlobalAvgPool(), Dense(classes, activation="none")]
    return Architecture(
        name,
        f"ResNet-{depth} (bottleneck blocks, base width {width}, projection shortcuts, batch norm), "
        f"3x{image}x{image} input, {classes} classes",
        (3, image, image),
        tuple(layers),
        reference="He, Zhang, Ren, Sun (2016), Deep Residual Learning, table 1; stride on the 3x3 conv (v1.5)",
    )


def _blocks(layers: int, d_model: int, heads: int, mlp_ratio: int, causal: bool = False) -> list[Layer]:
    if d_model % heads:
        raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
    return [TransformerBlock(heads=heads, mlp_dim=mlp_ratio * d_model, causal=causal) for _ in range(layers)]


def _encoder(
    name: str, *, layers: int, d_model: int, heads: int, seq: int, vocab: int, classes: int, mlp_ratio: int
) -> Architecture:
    return Architecture(
        name,
        f"pre-norm transformer encoder: {layers} blocks, width {d_model}, {heads} heads, MLP {mlp_ratio}x, "
        f"{seq} tokens of a {vocab}-token vocabulary with learned positions; first token to a {classes}-way classifier",
        (seq,),
        (
            Embedding(vocab, d_model, positions=True),
            *_blocks(layers, d_model, heads, mlp_ratio),
            LayerNorm(),
            FirstToken(),
            Dense(classes, activation="none"),
        ),
    )


def _decoder(name: str, *, layers: int, d_model: int, heads: int, seq: int, vocab: int, mlp_ratio: int) -> Architecture:
    return Architecture(
        name,
        f"causal pre-norm transformer decoder (language model): {layers} blocks, width {d_model}, {heads} heads, "
        f"MLP {mlp_ratio}x, {seq} positions, {vocab}-token vocabulary, output head tied to the token embedding",
        (seq,),
        (
            Embedding(vocab, d_model, positions=True),
            *_blocks(layers, d_model, heads, mlp_ratio, causal=True),
            LayerNorm(),
            LMHead(vocab),
        ),
    )


def _vit(
    name: str, *, patch: int, layers: int, d_model: int, heads: int, image: int, classes: int, mlp_ratio: int
) -> Architecture:
    if image % patch:
        raise ValueError(f"image size {image} is not a multiple of the patch size {patch}")
    return Architecture(
        name,
        f"vision transformer: {patch}x{patch} patches of a 3x{image}x{image} image, class token and learned "
        f"positions, {layers} pre-norm blocks of width {d_model}, {heads} heads, MLP {mlp_ratio}x; {classes} classes",
        (3, image, image),
        (
            Conv(d_model, (patch, patch), (patch, patch), (0, 0), activation="none", init_rule="lecun"),
            ToSequence(spatial_dims=2),
            ClassToken(),
            *_blocks(layers, d_model, heads, mlp_ratio),
            LayerNorm(),
            FirstToken(),
            Dense(classes, activation="none"),
        ),
        reference="Dosovitskiy et al. (2021), An Image is Worth 16x16 Words, table 1",
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "mlp",
            "ReLU multilayer perceptron",
            {
                "depth": Key(8, 0, help="hidden layers (0: logistic regression)"),
                "width": Key(256, help="units per hidden layer"),
                "input": Key(40, help="input features (40: MNIST-1D)"),
                "classes": Key(10, 2),
            },
            _mlp,
        ),
        Family(
            "resnet_cifar",
            "CIFAR ResNet-(6n+2), option-A shortcuts",
            {"n": Key(3, help="blocks per stage"), "classes": Key(10, 2), "image": Key(32, 8)},
            _resnet_cifar,
            "He et al. (2016) section 4.2",
        ),
        Family(
            "resnet",
            "ImageNet ResNet with bottleneck blocks",
            {
                "depth": Key(50, choices=tuple(RESNET_STAGES)),
                "width": Key(64, help="base width (channels of the stem and the first stage)"),
                "image": Key(224, 16),
                "classes": Key(1000, 2),
            },
            _resnet,
            "He et al. (2016) table 1",
        ),
        Family(
            "encoder",
            "pre-norm transformer encoder classifier",
            {
                "layers": Key(12),
                "d_model": Key(768),
                "heads": Key(12),
                "seq": Key(512),
                "vocab": Key(30522, 2),
                "classes": Key(2, 2),
                "mlp_ratio": Key(4),
            },
            _encoder,
        ),
        Family(
            "decoder",
            "causal transformer language model, tied embeddings",
            {
                "layers": Key(12),
                "d_model": Key(768),
                "heads": Key(12),
                "seq": Key(1024),
                "vocab": Key(50257, 2),
                "mlp_ratio": Key(4),
            },
            _decoder,
        ),
        Family(
            "vit",
            "vision transformer",
            {
                "patch": Key(16),
                "layers": Key(12),
                "d_model": Key(768),
                "heads": Key(12),
                "image": Key(224),
                "classes": Key(1000, 2),
                "mlp_ratio": Key(4),
            },
            _vit,
            "Dosovitskiy et al. (2021)",
        ),
    )
}

PRESETS: dict[str, Preset] = {
    "resnet32": Preset("resnet_cifar", {"n": 5}, 464_154, "He et al. (2016) table 6: 0.46M"),
    "resnet56": Preset("resnet_cifar", {"n": 9}, 853_018, "He et al. (2016) table 6: 0.85M"),
    "resnet110": Preset("resnet_cifar", {"n": 18}, 1_727_962, "He et al. (2016) table 6: 1.7M"),
    "resnet50": Preset("resnet", {"depth": 50}, 25_557_032, "torchvision resnet50: 25,557,032"),
    "resnet101": Preset("resnet", {"depth": 101}, 44_549_160, "torchvision resnet101: 44,549,160"),
    "bert_base": Preset("encoder", {}, None, "BERT-base sizes (Devlin et al. 2019): 12 x 768, 12 heads, 512 tokens"),
    "bert_tiny": Preset(
        "encoder", {"layers": 2, "d_model": 128, "heads": 2}, None, "BERT-tiny sizes (Turc et al. 2019)"
    ),
    "gpt2_small": Preset("decoder", {}, 124_439_808, "GPT-2 small (Radford et al. 2019): 124,439,808 with tied head"),
    "gpt2_medium": Preset(
        "decoder", {"layers": 24, "d_model": 1024, "heads": 16}, 354_823_168, "GPT-2 medium: 354,823,168"
    ),
    "vit_b16": Preset("vit", {}, 86_567_656, "ViT-B/16 at 224x224, 1000 classes: 86,567,656 (timm)"),
    "vit_s16": Preset("vit", {"d_model": 384, "heads": 6}, 22_050_664, "ViT-S/16 at 224x224: 22,050,664 (timm)"),
    # GEMM-bound on CPU: every step is a few large square matrix products (make bench: % of the GEMM peak)
    "mlp_wide": Preset("mlp", {"depth": 4, "width": 2048, "input": 2048}),
}


def parse(name: str) -> tuple[str, Keys]:
    """``"mlp[depth=16,width=512]"`` -> ``("mlp", {"depth": 16, "width": 512})`` (syntax only)."""
    match = _NAME.match(name.strip())
    if not match:
        raise ValueError(f"bad architecture name {name!r}: write NAME or NAME[key=value,...], e.g. mlp[depth=16]")
    keys: Keys = {}
    for item in filter(None, (match["keys"] or "").split(",")):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ValueError(f"bad key {item!r} in {name!r}: write key=value")
        if key in keys:
            raise ValueError(f"{match['base']}: key {key!r} given twice in {name!r}")
        try:
            keys[key] = int(value)
        except ValueError:
            raise ValueError(f"{match['base']}: {key} must be an integer, got {value!r}") from None
    return match["base"], keys


def _member(base: str, given: Keys) -> tuple[Family, Keys, Keys]:
    """The family of ``base``, the preset's own keys (empty for a family) and the keys after ``given``."""
    preset = PRESETS.get(base)
    family = FAMILIES[preset.family if preset else base]
    start = family.defaults() | (preset.keys if preset else {})
    unknown = [k for k in given if k not in family.keys]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for {base}; valid keys: {', '.join(family.keys)}")
    keys = start | given
    for k, v in keys.items():
        family.keys[k].check(base, k, v)
    return family, start, keys


def choices() -> str:
    """The valid names, for error messages: the fixed zoo, the presets and the families' keys."""
    from workloads.architectures import ARCHITECTURES

    fams = "; ".join(f"{f.name}[{','.join(f.keys)}]" for f in FAMILIES.values())
    return f"{', '.join(ARCHITECTURES)}; presets {', '.join(PRESETS)}; families {fams}"


def canonical(name: str) -> str:
    """The one spelling of ``name`` (raises ValueError, naming the valid choices, when it is not one)."""
    from workloads.architectures import ARCHITECTURES

    base, given = parse(name)
    if base in ARCHITECTURES:
        if given:
            sized = ", ".join(f.signature() for f in FAMILIES.values())
            raise ValueError(f"{base} takes no keys; sized families: {sized}")
        return base
    if base not in PRESETS and base not in FAMILIES:
        raise ValueError(f"unknown architecture {base!r}; choose from {choices()}")
    family, start, keys = _member(base, given)
    changed = [f"{k}={keys[k]}" for k in family.keys if keys[k] != start[k]]
    return f"{base}[{','.join(changed)}]" if changed else base


@functools.lru_cache(maxsize=256)
def resolve(name: str) -> Architecture:
    """The architecture a preset or family name selects (not a fixed zoo name: see ``get``)."""
    base, given = parse(name)
    family, _, keys = _member(base, given)
    try:
        arch = family.build(canonical(name), **keys)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    preset = PRESETS.get(base)
    if preset and not given:
        arch = _with_reference(arch, preset)
    return arch


def _with_reference(arch: Architecture, preset: Preset) -> Architecture:
    import dataclasses

    return dataclasses.replace(arch, published_params=preset.published_params, reference=preset.reference)
