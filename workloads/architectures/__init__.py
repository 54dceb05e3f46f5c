"""The architecture zoo: name -> framework-neutral :class:`Architecture`.

Every architecture reads MNIST-1D-shaped samples (one channel, 40 positions) and predicts one of
10 classes, so each one can be trained to accuracy on ``mnist1d`` as well as timed on synthetic data.
"""

from __future__ import annotations

from workloads.architectures.layers import Architecture, Conv, Dense, Flatten, Layer

__all__ = ["ARCHITECTURES", "Architecture", "Conv", "Dense", "Flatten", "Layer", "get"]

_MNIST1D = (1, 40)
_CLASSES = 10


def _mlp(name: str, description: str, hidden: list[int]) -> Architecture:
    layers: list[Layer] = [Flatten()]
    layers += [Dense(units) for units in hidden]
    layers.append(Dense(_CLASSES, activation="none"))
    return Architecture(name, description, _MNIST1D, tuple(layers))


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        _mlp("mlp_shallow", "one hidden layer of 256 ReLU units", [256]),
        _mlp("mlp_deep", "eight hidden layers of 256 ReLU units", [256] * 8),
        Architecture(
            "cnn_small",
            "two 1-D convolutions (32 and 64 filters, kernel 5, stride 2) and a dense head",
            _MNIST1D,
            (
                Conv(32, kernel=(5,), stride=(2,), padding=(2,)),
                Conv(64, kernel=(5,), stride=(2,), padding=(2,)),
                Flatten(),
                Dense(128),
                Dense(_CLASSES, activation="none"),
            ),
        ),
    )
}


def get(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}") from None
