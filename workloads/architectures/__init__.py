"""The architecture zoo: name -> framework-neutral :class:`Architecture`, shallow to deep.

Default input shapes are the ones the throughput suites time on synthetic data; a model trained on
a dataset is resized to its samples with :meth:`Architecture.for_data`.
"""

from __future__ import annotations

import dataclasses

from workloads.architectures import families
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
    Recurrent,
    Residual,
    TokenMeanPool,
    ToSequence,
    TransformerBlock,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BatchNorm",
    "ClassToken",
    "Conv",
    "Dense",
    "Embedding",
    "FirstToken",
    "Flatten",
    "GlobalAvgPool",
    "LMHead",
    "Layer",
    "LayerNorm",
    "PadShortcut",
    "Pool",
    "Recurrent",
    "Residual",
    "ToSequence",
    "TokenMeanPool",
    "TransformerBlock",
    "canonical",
    "families",
    "get",
]

MNIST1D = (1, 40)
CLASSES = 10
TOKENS = (32,)  # default sequence length for token models
VOCAB = 16  # default vocabulary for token models (resized to the dataset's)
_MNIST1D_REF = "Greydanus (2020), MNIST-1D reference models (github.com/greydanus/mnist1d)"


def _mlp(name: str, description: str, depth: int, width: int, reference: str = "") -> Architecture:
    """A member of the ``mlp`` family on MNIST-1D, under its zoo name."""
    member = families.FAMILIES["mlp"].build(name, depth=depth, width=width, input=MNIST1D[1], classes=CLASSES)
    return dataclasses.replace(member, description=description, reference=reference)


def _mlp_residual(width: int, blocks: int) -> Architecture:
    block = Residual((Dense(width), Dense(width, activation="none")), activation="relu")
    return Architecture(
        "mlp_residual",
        f"dense {width} then {blocks} residual blocks of two dense {width} layers (relu(x + f(x))): "
        f"{1 + 2 * blocks} hidden layers",
        MNIST1D,
        (Flatten(), Dense(width), *[block] * blocks, Dense(CLASSES, activation="none")),
    )


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "logreg",
            "logistic regression: no hidden layer (the linear baseline)",
            MNIST1D,
            (Flatten(), Dense(CLASSES, activation="none")),
            reference=_MNIST1D_REF + ", LinearBase",
        ),
        _mlp("mlp_shallow", "one hidden layer of 100 ReLU units", 1, 100, reference=_MNIST1D_REF + " width"),
        _mlp("mlp_deep", "eight hidden layers of 256 ReLU units", 8, 256),
        _mlp_residual(256, 4),
        Architecture(
            "cnn1d",
            "three 1-D convolutions (25 filters; kernels 5, 3, 3; stride 2) and a linear classifier",
            MNIST1D,
            (
                Conv(25, kernel=(5,), stride=(2,), padding=(1,)),
                Conv(25, kernel=(3,), stride=(2,), padding=(1,)),
                Conv(25, kernel=(3,), stride=(2,), padding=(1,)),
                Flatten(),
                Dense(CLASSES, activation="none"),
            ),
            reference=_MNIST1D_REF + ", ConvBase",
        ),
        Architecture(
            "lenet5",
            "LeNet-5: conv 6@5x5, avg-pool, conv 16@5x5, avg-pool, dense 120, 84, 10; tanh; 1x32x32 input",
            (1, 32, 32),
            (
                Conv(6, (5, 5), (1, 1), (0, 0), activation="tanh"),
                Pool("avg", (2, 2), (2, 2)),
                Conv(16, (5, 5), (1, 1), (0, 0), activation="tanh"),
                Pool("avg", (2, 2), (2, 2)),
                Flatten(),
                Dense(120, activation="tanh"),
                Dense(84, activation="tanh"),
                Dense(CLASSES, activation="none"),
            ),
            published_params=61_706,
            reference="LeCun et al. (1998); fully connected C3 and a linear output instead of RBF units",
        ),
        dataclasses.replace(
            families.FAMILIES["resnet_cifar"].build("resnet20", n=3, classes=CLASSES, image=32),
            published_params=269_722,  # "0.27M" in He et al. (2016) table 6; exact count with BN affine params
        ),
        Architecture(
            "gru",
            "bidirectional GRU (6 hidden units per direction) over the 40 positions; all outputs to a linear layer",
            MNIST1D,
            (
                ToSequence(),
                Recurrent("gru", 6, bidirectional=True, sequences=True),
                Flatten(),
                Dense(CLASSES, activation="none"),
            ),
            reference=_MNIST1D_REF + ", GRUBase",
        ),
        Architecture(
            "lstm",
            "token embedding (64) and a one-layer LSTM (128); the final state to a linear classifier",
            TOKENS,
            (Embedding(VOCAB, 64), Recurrent("lstm", 128, sequences=False), Dense(CLASSES, activation="none")),
        ),
        Architecture(
            "transformer",
            "pre-norm transformer encoder: token + learned position embeddings (64), 2 blocks of 4-head "
            "self-attention and a GELU MLP (256), final LayerNorm, mean over tokens, linear classifier",
            TOKENS,
            (
                Embedding(VOCAB, 64, positions=True),
                TransformerBlock(heads=4, mlp_dim=256),
                TransformerBlock(heads=4, mlp_dim=256),
                LayerNorm(),
                TokenMeanPool(),
                Dense(CLASSES, activation="none"),
            ),
        ),
    )
}


def get(name: str) -> Architecture:
    """A zoo architecture, a preset or a sized family member (``mlp[depth=16,width=512]``, see ``families``).

    Raises ValueError, naming the valid choices, for a name that is none of them."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    return families.resolve(families.canonical(name))


def canonical(name: str) -> str:
    """The one spelling of an architecture name (ValueError, with the valid choices, when it is none)."""
    return name if name in ARCHITECTURES else families.canonical(name)
