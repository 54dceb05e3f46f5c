"""JAX adapter: a pure forward over a parameter pytree and a batch-norm state pytree, ``jax.jit`` by default.

Activations are channel-last inside (NWC / NHWC, XLA's preferred convolution layout on CPU and
GPU): ``to_device`` moves the channel axis and the adapter converts kernels OI[H]W <-> [H]WIO on
load and export; every other variable keeps its canonical layout (``adapters/jax_layers.py`` builds
the layers). Trainable parameters and batch-norm running statistics are separate pytrees: the
training step differentiates and updates the first only and threads the second through the forward.

Mixed precision (``bfloat16``/``float16``, the contract in ``adapters/base.py``): the parameters stay
float32 and the layers cast at the matrix products (``jax_layers.Run.low``); float16's dynamic loss
scaling is part of the jitted step (its scale and finite-step count are optimiser state).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.base import (
    ADAM_BETAS,
    ADAM_EPS,
    LOSS_SCALE_GROWTH_INTERVAL,
    LOSS_SCALE_INIT,
    Adapter,
    BuildOptions,
    check_params,
)
from adapters.jax_layers import Params, build
from adapters.layout import to_canonical_kernel, to_channel_last, to_native_kernel
from workloads.architectures import Architecture

jax.config.update("jax_default_matmul_precision", "highest")

TrainStep = tuple[Params, Params, dict[str, Any], jax.Array]


class JaxAdapter(Adapter):
    name = "jax"
    params: Params  # trainable
    state: Params  # batch-norm running statistics
    opt_state: dict[str, Any]

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        self.device = jax.local_devices(backend=options.device)[0]
        # data-parallel: one mesh over every process's devices; the weights replicated, batches split
        # along it. jit then partitions the single-process step (XLA inserts the gradient all-reduce
        # itself; batch-norm statistics are over the global batch), so no step code changes.
        self._sharded = options.workers > 1
        if self._sharded:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.array(jax.devices(options.device)), ("data",))
            self._replicated = NamedSharding(mesh, PartitionSpec())
            self._split = NamedSharding(mesh, PartitionSpec("data"))
        self._jit = options.compile != "off"
        forward = build(arch, jnp.dtype(options.precision))
        lr, momentum, optimizer = options.learning_rate, options.momentum, options.optimizer
        b1, b2 = ADAM_BETAS
        scaling = self.loss_scaling

        def loss_fn(
            p: Params, state: Params, x: jax.Array, y: jax.Array, scale: jax.Array
        ) -> tuple[jax.Array, tuple[jax.Array, Params]]:
            logits, new_state = forward(p, state, x, True)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            loss = -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))  # over every label
            return loss * scale, (loss, new_state)

        def update(p: Params, opt: dict[str, Any], g: Params) -> tuple[Params, dict[str, Any]]:
            if optimizer == "sgd":
                v = {k: momentum * opt["v"][k] + g[k] for k in p}
                return {k: p[k] - lr * v[k] for k in p}, {"v": v}
            t = opt["t"] + 1
            m = {k: b1 * opt["m"][k] + (1 - b1) * g[k] for k in p}
            s = {k: b2 * opt["s"][k] + (1 - b2) * g[k] * g[k] for k in p}
            c1, c2 = 1 - b1**t, 1 - b2**t
            new = {k: p[k] - lr * (m[k] / c1) / (jnp.sqrt(s[k] / c2) + ADAM_EPS) for k in p}
            return new, {"t": t, "m": m, "s": s}

        def train(p: Params, state: Params, opt: dict[str, Any], x: jax.Array, y: jax.Array) -> TrainStep:
            scale = opt["scale"] if scaling else jnp.float32(1)
            grad_fn = jax.grad(loss_fn, has_aux=True)
            g, (loss, new_state) = grad_fn(p, state, x, y, scale)
            if not scaling:
                new, new_opt = update(p, opt, g)
                return new, new_state, new_opt, loss
            g = {k: v / scale for k, v in g.items()}  # float32 gradients, unscaled
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in g.values()]))
            slots = {k: v for k, v in opt.items() if k not in ("scale", "good")}
            stepped, stepped_opt = update(p, slots, g)
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            good = jnp.where(finite, opt["good"] + 1, 0)
            grow = good >= LOSS_SCALE_GROWTH_INTERVAL
            new_opt = jax.tree_util.tree_map(keep, stepped_opt, slots)
            new_opt["scale"] = jnp.where(finite, jnp.where(grow, scale * 2, scale), scale / 2)
            new_opt["good"] = jnp.where(grow, 0, good)
            return jax.tree_util.tree_map(keep, stepped, p), new_state, new_opt, loss

        def infer(p: Params, state: Params, x: jax.Array) -> jax.Array:
            return forward(p, state, x, False)[0].astype(jnp.float32)

        self._train = jax.jit(train, donate_argnums=(0, 1, 2)) if self._jit else train
        self._infer = jax.jit(infer) if self._jit else infer
        self._last: Any = None
        self.load_params(params)

    @classmethod
    def init_distributed(cls, rank: int, peers: list[str], timeout_s: float, device: str = "cpu") -> None:
        """``jax.distributed`` with its coordinator at ``peers[0]`` (CPU collectives: gloo, JAX's default)."""
        jax.distributed.initialize(
            coordinator_address=peers[0],
            num_processes=len(peers),
            process_id=rank,
            initialization_timeout=max(1, int(timeout_s)),
            heartbeat_timeout_seconds=max(10, int(timeout_s)),
        )

    @classmethod
    def shutdown_distributed(cls) -> None:
        """Every process disconnects from the coordination service together: when the coordinator (rank
        0) exits first, JAX aborts the processes still connected."""
        jax.distributed.shutdown()

    def _put(self, value: np.ndarray) -> jax.Array:
        """A canonical array on this adapter's device, or replicated over the data-parallel mesh."""
        if not self._sharded:
            return jax.device_put(value, self.device)
        return jax.make_array_from_callback(value.shape, self._replicated, lambda index: value[index])

    @property
    def compile_mode(self) -> str:
        return "jit" if self._jit else "eager"

    @staticmethod
    def framework_version() -> str:
        return str(jax.__version__)

    def to_device(self, x: np.ndarray) -> jax.Array:
        if self._sharded:  # this process's share of the global batch
            return jax.make_array_from_process_local_data(self._split, to_channel_last(x))
        return jax.device_put(to_channel_last(x), self.device)  # int token ids stay int

    def train_step(self, x: jax.Array, y: jax.Array) -> jax.Array:
        assert self.options.trainable, "built with trainable=False"
        self.params, self.state, self.opt_state, loss = self._train(self.params, self.state, self.opt_state, x, y)
        self._last = loss
        return loss

    def infer(self, x: jax.Array) -> jax.Array:
        self._last = self._infer(self.params, self.state, x)
        return self._last

    def _pending(self) -> list[jax.Array]:
        return jax.tree_util.tree_leaves((self.params, self.state, self.opt_state, self._last))

    def sync(self) -> None:
        jax.block_until_ready(self._pending())

    def ready(self) -> bool:
        return all(a.is_ready() for a in self._pending() if isinstance(a, jax.Array))  # type: ignore[attr-defined]

    def to_numpy(self, value: jax.Array) -> np.ndarray:
        if not value.is_fully_addressable:  # replicated over the processes: this process's copy
            value = value.addressable_data(0)
        return np.asarray(value)

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        check_params(self.arch, params)

        def put(keys: dict[str, Any]) -> Params:
            return {k: self._put(to_native_kernel(params[k])) for k in keys}

        self.params, self.state = put(self.arch.param_layout()), put(self.arch.state_layout())

        def zeros() -> Params:  # fresh buffers per slot: jit donates them
            return {k: self._put(np.zeros(v.shape, np.float32)) for k, v in self.params.items()}

        if not self.options.trainable:
            self.opt_state = {}
        elif self.options.optimizer == "sgd":
            self.opt_state = {"v": zeros()}
        else:
            self.opt_state = {"t": self._put(np.zeros((), np.int32)), "m": zeros(), "s": zeros()}
        if self.loss_scaling:
            self.opt_state |= {
                "scale": self._put(np.array(LOSS_SCALE_INIT, np.float32)),
                "good": self._put(np.zeros((), np.int32)),
            }

    def loss_scale(self) -> float | None:
        return float(self.to_numpy(self.opt_state["scale"])) if self.loss_scaling else None

    def export_params(self) -> dict[str, np.ndarray]:
        values = self.params | self.state
        return {
            k: to_canonical_kernel(self.to_numpy(values[k]).astype(np.float32)) for k in self.arch.variable_layout()
        }

    def native_param_count(self) -> int:
        return sum(int(v.size) for v in jax.tree_util.tree_leaves(self.params))

    def device_memory_peak_mb(self) -> float | None:
        stats = self.device.memory_stats() if self.device.platform != "cpu" else None
        return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None

    def runtime_info(self) -> dict[str, Any]:
        cpus = len(os.sched_getaffinity(0))
        return {
            # XLA's CPU pool: one thread under the launcher's single-thread flags, else every schedulable core
            "threads": 1 if "intra_op_parallelism_threads=1" in os.environ.get("XLA_FLAGS", "") else cpus,
            "backend": jax.default_backend(),
            "device": str(self.device),
            "matmul_precision": str(jax.config.jax_default_matmul_precision),  # type: ignore[attr-defined]
            "compute_dtype": self.options.precision,  # the matrix products' (jax_layers.Run.compute)
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "schedulable_cpus": cpus,
            "processes": jax.process_count(),
            "global_devices": jax.device_count(),
        }


ADAPTER = JaxAdapter
