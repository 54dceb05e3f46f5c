"""JAX adapter: a pure forward function over a parameter dict, ``jax.jit`` by default.

Activations are channel-last inside (NWC / NHWC, XLA's preferred convolution layout on CPU and
GPU): ``to_device`` moves the channel axis and the adapter converts kernels OI[H]W <-> [H]WIO on
load and export. Flatten goes back to channel-first first, so dense layers see the canonical order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.base import ADAM_BETAS, ADAM_EPS, Adapter, BuildOptions, check_params
from adapters.layout import to_canonical_kernel, to_channel_last, to_native_kernel
from workloads.architectures import Architecture, Conv, Dense, Flatten

jax.config.update("jax_default_matmul_precision", "highest")

Params = dict[str, jax.Array]
_ACT: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": jax.nn.relu, "tanh": jnp.tanh}
_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def _forward_fn(arch: Architecture) -> Callable[[Params, jax.Array], jax.Array]:
    def forward(params: Params, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(arch.layers):
            if isinstance(layer, Dense):
                x = x @ params[f"{i}.kernel"] + params[f"{i}.bias"]
            elif isinstance(layer, Conv):
                x = jax.lax.conv_general_dilated(
                    x,
                    params[f"{i}.kernel"],
                    window_strides=layer.stride,
                    padding=[(p, p) for p in layer.padding],
                    dimension_numbers=_DIMS[layer.spatial_dims],
                )
                x = x + params[f"{i}.bias"]
            elif isinstance(layer, Flatten):
                x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)  # channel-first order
            if isinstance(layer, Dense | Conv) and layer.activation != "none":
                x = _ACT[layer.activation](x)
        return x

    return forward


class JaxAdapter(Adapter):
    name = "jax"
    params: Params
    opt_state: dict[str, Any]

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        self.device = jax.devices(options.device)[0]
        self._jit = options.compile != "off"
        forward = _forward_fn(arch)
        lr, momentum, optimizer = options.learning_rate, options.momentum, options.optimizer
        b1, b2 = ADAM_BETAS

        def loss_fn(p: Params, x: jax.Array, y: jax.Array) -> jax.Array:
            logp = jax.nn.log_softmax(forward(p, x), axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

        def train(p: Params, state: dict[str, Any], x: jax.Array, y: jax.Array) -> tuple[Params, Any, jax.Array]:
            loss, g = jax.value_and_grad(loss_fn)(p, x, y)
            if optimizer == "sgd":
                v = {k: momentum * state["v"][k] + g[k] for k in p}
                return {k: p[k] - lr * v[k] for k in p}, {"v": v}, loss
            t = state["t"] + 1
            m = {k: b1 * state["m"][k] + (1 - b1) * g[k] for k in p}
            s = {k: b2 * state["s"][k] + (1 - b2) * g[k] * g[k] for k in p}
            c1, c2 = 1 - b1**t, 1 - b2**t
            new = {k: p[k] - lr * (m[k] / c1) / (jnp.sqrt(s[k] / c2) + ADAM_EPS) for k in p}
            return new, {"t": t, "m": m, "s": s}, loss

        self._train = jax.jit(train, donate_argnums=(0, 1)) if self._jit else train
        self._infer = jax.jit(forward) if self._jit else forward
        self._last: Any = None
        self.load_params(params)

    @property
    def compile_mode(self) -> str:
        return "jit" if self._jit else "eager"

    @staticmethod
    def framework_version() -> str:
        return str(jax.__version__)

    def to_device(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(to_channel_last(x), self.device)

    def train_step(self, x: jax.Array, y: jax.Array) -> jax.Array:
        self.params, self.opt_state, loss = self._train(self.params, self.opt_state, x, y)
        self._last = loss
        return loss

    def infer(self, x: jax.Array) -> jax.Array:
        self._last = self._infer(self.params, x)
        return self._last

    def _pending(self) -> list[jax.Array]:
        return jax.tree_util.tree_leaves((self.params, self.opt_state, self._last))

    def sync(self) -> None:
        jax.block_until_ready(self._pending())

    def ready(self) -> bool:
        return all(a.is_ready() for a in self._pending() if isinstance(a, jax.Array))  # type: ignore[attr-defined]

    def to_numpy(self, value: jax.Array) -> np.ndarray:
        return np.asarray(value)

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        check_params(self.arch, params)
        self.params = {k: jax.device_put(to_native_kernel(v), self.device) for k, v in params.items()}

        def zeros() -> Params:  # fresh buffers per slot: jit donates them
            return {k: jnp.zeros_like(v) for k, v in self.params.items()}

        if self.options.optimizer == "sgd":
            self.opt_state = {"v": zeros()}
        else:
            self.opt_state = {"t": jnp.zeros((), jnp.int32), "m": zeros(), "s": zeros()}

    def export_params(self) -> dict[str, np.ndarray]:
        return {k: to_canonical_kernel(np.asarray(v)) for k, v in self.params.items()}

    def native_param_count(self) -> int:
        return sum(int(v.size) for v in self.params.values())

    def device_memory_peak_mb(self) -> float | None:
        stats = self.device.memory_stats() if self.device.platform != "cpu" else None
        return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None

    def runtime_info(self) -> dict[str, Any]:
        return {
            "backend": jax.default_backend(),
            "device": str(self.device),
            "matmul_precision": str(jax.config.jax_default_matmul_precision),  # type: ignore[attr-defined]
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "schedulable_cpus": len(os.sched_getaffinity(0)),
        }


ADAPTER = JaxAdapter
