"""Tiny architectures that exercise the layers of the ImageNet, ViT, BERT and GPT families (not in the zoo).

Importable by every framework's interpreter (numpy, the standard library and ``workloads`` only), so
the parity probe runs them beside the zoo: :func:`resolve` finds a name here or in the zoo.

- ``tiny_resnet_stem``: the smallest ``resnet`` member: an ImageNet ResNet stem (7x7 stride-2
  convolution, batch norm, 3x3 stride-2 max pooling with padding 1) and one bottleneck block per
  stage whose shortcut is a strided 1x1 convolution and batch norm (v1.5: the stride on the 3x3);
- ``tiny_vit``: a ``vit`` member (patch embedding as a convolution with kernel = stride,
  ``ToSequence`` of an image, ``ClassToken``, an encoder block, ``FirstToken``);
- ``tiny_bert``: an ``encoder`` member (token and position embeddings, a block, first-token readout);
- ``tiny_gpt``: a ``decoder`` member: a causal block and a tied ``LMHead`` (a label per position);
- ``tiny_maxpool_pad``: max pooling with padding on signed inputs (after a ReLU, as in the stem,
  zero padding would give the same maxima as the contract's -inf).
"""

from __future__ import annotations

import dataclasses

from workloads.architectures import (
    Architecture,
    Dense,
    Flatten,
    Pool,
    get,
)


def _member(name: str, family_member: str) -> Architecture:
    """A family's member (``get``) under a short test name: the same layers, so the same model."""
    arch = get(family_member)
    return dataclasses.replace(arch, name=name, description=f"{family_member}: {arch.description}")


LAYER_ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        # the smallest members of the families (workloads/architectures/families.py), under short names
        _member("tiny_resnet_stem", "resnet[depth=14,width=4,image=16,classes=10]"),
        _member("tiny_vit", "vit[patch=4,layers=1,d_model=16,heads=2,image=8,classes=10,mlp_ratio=2]"),
        _member("tiny_bert", "encoder[layers=1,d_model=16,heads=2,seq=8,vocab=16,classes=10,mlp_ratio=2]"),
        _member("tiny_gpt", "decoder[layers=1,d_model=16,heads=2,seq=8,vocab=16,mlp_ratio=2]"),
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
