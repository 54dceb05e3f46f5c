"""Tiny architectures that exercise the layers of the ImageNet, ViT and GPT families (not in the zoo).

Importable by every framework's interpreter (numpy, the standard library and ``workloads`` only), so
the parity probe runs them beside the zoo: :func:`resolve` finds a name here or in the zoo.

- ``tiny_resnet_stem``: an ImageNet ResNet stem (7x7 stride-2 convolution, batch norm, 3x3 stride-2
  max pooling with padding 1) and a bottleneck block whose shortcut is a strided 1x1 convolution
  and batch norm (ResNet-50 v1.5: the stride on the 3x3);
- ``tiny_vit``: a ViT (patch embedding as a convolution with kernel = stride, ``ToSequence`` of an
  image, ``ClassToken``, an encoder block, ``FirstToken``);
- ``tiny_gpt``: a causal decoder block and a tied ``LMHead`` (a label per position);
- ``tiny_maxpool_pad``: max pooling with padding on signed inputs (after a ReLU, as in the stem,
  zero padding would give the same maxima as the contract's -inf).
"""

from __future__ import annotations

from workloads.architectures import (
    Architecture,
    BatchNorm,
    ClassToken,
    Conv,
    Dense,
    Embedding,
    FirstToken,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    LMHead,
    Pool,
    Residual,
    ToSequence,
    TransformerBlock,
    get,
)


def _conv(filters: int, kernel: int, stride: int = 1, padding: int = 0) -> Conv:
    return Conv(filters, (kernel,) * 2, (stride,) * 2, (padding,) * 2, activation="none", bias=False, init_rule="he")


LAYER_ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "tiny_resnet_stem",
            "ImageNet ResNet stem and one bottleneck block with a projection shortcut, 3x16x16 input",
            (3, 16, 16),
            (
                _conv(8, 7, stride=2, padding=3),
                BatchNorm("relu"),
                Pool("max", (3, 3), (2, 2), padding=(1, 1)),
                Residual(
                    (_conv(4, 1), BatchNorm("relu"), _conv(4, 3, 2, 1), BatchNorm("relu"), _conv(16, 1), BatchNorm()),
                    (_conv(16, 1, stride=2), BatchNorm()),
                ),
                GlobalAvgPool(),
                Dense(10, activation="none"),
            ),
        ),
        Architecture(
            "tiny_vit",
            "ViT: 4x4 patches of a 3x8x8 image embedded to 16, class token, one 2-head encoder block",
            (3, 8, 8),
            (
                Conv(16, (4, 4), (4, 4), (0, 0), activation="none"),
                ToSequence(spatial_dims=2),
                ClassToken(),
                TransformerBlock(heads=2, mlp_dim=32),
                LayerNorm(),
                FirstToken(),
                Dense(10, activation="none"),
            ),
        ),
        Architecture(
            "tiny_gpt",
            "GPT: token + position embeddings (16), one 2-head causal block, LayerNorm, tied LM head; 8 tokens",
            (8,),
            (
                Embedding(16, 16, positions=True),
                TransformerBlock(heads=2, mlp_dim=32, causal=True),
                LayerNorm(),
                LMHead(16),
            ),
        ),
        Architecture(
            "tiny_maxpool_pad",
            "3x3 stride-2 max pooling with padding 1 straight on a 2x7x7 N(0, 1) input, then a linear classifier",
            (2, 7, 7),
            (Pool("max", (3, 3), (2, 2), padding=(1, 1)), Flatten(), Dense(10, activation="none")),
        ),
    )
}


def resolve(name: str) -> Architecture:
    """A test architecture by name, else the zoo's (``workloads.architectures.get``)."""
    return LAYER_ARCHITECTURES[name] if name in LAYER_ARCHITECTURES else get(name)
