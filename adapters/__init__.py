"""Framework adapters behind one interface, and what each framework can do.

The registry is plain data, so the driver can plan and validate without importing any framework.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from adapters.base import Adapter


@dataclass(frozen=True)
class FrameworkInfo:
    """A framework's adapter location and its capability flags."""

    name: str
    module: str
    import_name: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    compile_modes: tuple[str, ...]  # the modes ``auto``/``on``/``off`` may resolve to
    why_not: tuple[tuple[str, str], ...] = ()  # (device, reason) for devices it lacks
    options: tuple[str, ...] = ()  # framework-specific build options a suite may set

    def unsupported_reason(self, device: str, precision: str) -> str | None:
        if device not in self.devices:
            why = dict(self.why_not).get(device, f"supports {', '.join(self.devices)}")
            return f"{self.name} does not support device {device!r}: {why}"
        if precision not in self.precisions:
            return f"{self.name} does not support precision {precision!r} (supports {', '.join(self.precisions)})"
        return None


FRAMEWORKS: dict[str, FrameworkInfo] = {
    f.name: f
    for f in (
        FrameworkInfo("torch", "adapters.torch_adapter", "torch", ("cpu", "gpu"), ("float32",), ("eager", "inductor")),
        FrameworkInfo(
            "tensorflow",
            "adapters.tensorflow_adapter",
            "tensorflow",
            ("cpu", "gpu", "tpu"),
            ("float32",),
            ("eager", "xla"),
        ),
        FrameworkInfo("jax", "adapters.jax_adapter", "jax", ("cpu", "gpu", "tpu"), ("float32",), ("eager", "jit")),
        FrameworkInfo(
            "mxnet",
            "adapters.mxnet_adapter",
            "mxnet",
            ("cpu",),
            ("float32",),
            ("eager", "hybridize"),
            options=("static_alloc", "static_shape"),
            why_not=(
                ("gpu", "MXNet's last GPU wheels (1.9.1, CUDA <= 11.7) predate CUDA 11.8 and current drivers"),
                ("tpu", "MXNet has no TPU backend"),
            ),
        ),
    )
}


def load_adapter(framework: str) -> type[Adapter]:
    """Import a framework's adapter class (and so the framework itself)."""
    module = importlib.import_module(FRAMEWORKS[framework].module)
    cls: type[Adapter] = module.ADAPTER
    return cls
