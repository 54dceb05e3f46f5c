"""TensorFlow adapter: raw ``tf.Variable`` parameters and ``tf.nn`` ops, ``tf.function(jit_compile=True)``.

Keras is not used: its layers bring their own initialisers, and its Adam puts epsilon on the
uncorrected second moment. The forward pass, the loss and both optimisers are composed here from
TF ops, so the computation is the canonical one. XLA compilation is forced (``jit_compile=True``):
on CPU, TF would otherwise run the graph op by op. Activations are channel-last inside (TF's CPU
convolutions only take NWC/NHWC); conv kernels are converted OI[H]W <-> [H]WIO on load and export.
The layers live in :mod:`adapters.tensorflow_layers`. Batch-norm running statistics are
non-trainable variables: loaded and exported with the weights, updated by the training step's
forward pass, never seen by the gradient or the optimiser.

Mixed precision (``bfloat16``/``float16``, the contract in ``adapters/base.py``): explicit casts in the
layers (Keras' mixed policies are not used, as Keras is not); float16's dynamic loss scaling is
written into the step (the scale and the finite-step count are variables), a skipped step a
``tf.cond`` around the update.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's __init__ eagerly imports Keras' optimizers (and with them all of Keras: 2-3 s of every
# trial's start-up here) only to register them for SavedModel loading. This adapter uses no Keras, so
# that one import is made to fail fast, which TensorFlow tolerates by design (it catches ImportError).
sys.modules.setdefault("keras.src.optimizers", None)  # type: ignore[arg-type]
import tensorflow as tf  # noqa: E402

from adapters.base import (  # noqa: E402
    ADAM_BETAS,
    ADAM_EPS,
    LOSS_SCALE_GROWTH_INTERVAL,
    LOSS_SCALE_INIT,
    Adapter,
    BuildOptions,
    check_params,
)
from adapters.layout import to_canonical_kernel, to_channel_last, to_native_kernel  # noqa: E402
from adapters.tensorflow_layers import build  # noqa: E402
from workloads.architectures import Architecture  # noqa: E402

_STRATEGY: tf.distribute.Strategy | None = None  # set by init_distributed (multi-worker trials)


@tf.function
def _all_reduce_mean(grads: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    assert _STRATEGY is not None

    def reduce(g: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        local = {k: tf.identity(v) for k, v in g.items()}  # on this replica's device (collectives need one)
        out: dict[str, tf.Tensor] = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, local)
        return out

    result: dict[str, tf.Tensor] = _STRATEGY.run(reduce, args=(grads,))
    return result


def _configure(threads: int) -> None:
    """Thread pools and precision; must run before TF's runtime initialises (first op)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised (several adapters in one process, e.g. tests)
        pass
    tf.config.experimental.enable_tensor_float_32_execution(False)


class TensorflowAdapter(Adapter):
    name = "tensorflow"

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        check_params(arch, params)
        _configure(options.threads)
        self.device = {"cpu": "/CPU:0", "gpu": "/GPU:0", "tpu": "/TPU:0"}[options.device]
        self._jit = options.compile != "off"
        with tf.device(self.device):
            trainable = arch.param_layout()  # the rest, batch-norm running statistics, is state
            self.vars = {
                k: tf.Variable(to_native_kernel(v), trainable=k in trainable, name=k.replace(".", "_"))
                for k, v in params.items()
            }
            self._slots = self._make_slots() if options.trainable else {}
            self._scale = tf.Variable(LOSS_SCALE_INIT, trainable=False)  # float16 only: the loss scale, ...
            self._good = tf.Variable(0, trainable=False)  # ... and the finite steps since it last changed
        order = [k for k, v in self.vars.items() if v.trainable]
        variables = [self.vars[k] for k in order]
        lr, momentum, optimizer = options.learning_rate, options.momentum, options.optimizer
        b1, b2 = ADAM_BETAS
        forward = partial(build(arch, tf.as_dtype(options.precision)), self.vars)
        scaling = self.loss_scaling

        def gradients(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            with tf.GradientTape() as tape:
                logits = tf.cast(forward(x, True), tf.float32)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
                scaled = loss * self._scale if scaling else loss
            # the embedding table's gradient comes as IndexedSlices: made dense, as the update touches every row
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
            return loss, {k: g / self._scale if scaling else g for k, g in zip(order, grads, strict=True)}

        def apply(grads: dict[str, tf.Tensor]) -> None:
            if not scaling:
                return update(grads)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads.values()])
            tf.cond(finite, lambda: update(grads), lambda: None)  # a non-finite step: skipped
            good = tf.where(finite, self._good + 1, 0)
            grow = good >= LOSS_SCALE_GROWTH_INTERVAL
            self._scale.assign(tf.where(finite, tf.where(grow, 2.0, 1.0), 0.5) * self._scale)
            self._good.assign(tf.where(grow, 0, good))
            return None

        def update(grads: dict[str, tf.Tensor]) -> None:
            s = self._slots
            if optimizer == "sgd":
                for k in order:
                    s[f"v.{k}"].assign(momentum * s[f"v.{k}"] + grads[k])
                    self.vars[k].assign_sub(lr * s[f"v.{k}"])
            else:
                t = s["t"].assign_add(1.0)
                c1, c2 = 1 - b1**t, 1 - b2**t
                for k in order:
                    g = grads[k]
                    m = s[f"m.{k}"].assign(b1 * s[f"m.{k}"] + (1 - b1) * g)
                    v = s[f"s.{k}"].assign(b2 * s[f"s.{k}"] + (1 - b2) * g * g)
                    self.vars[k].assign_sub(lr * (m / c1) / (tf.sqrt(v / c2) + ADAM_EPS))

        def train(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            loss, grads = gradients(x, y)
            apply(grads)
            return loss

        wrap: Callable[[Any], Any] = (lambda f: tf.function(f, jit_compile=True)) if self._jit else (lambda f: f)
        self._train = wrap(train)
        if options.workers > 1:  # XLA cannot compile the collective: gradients and update compile apart
            self._gradients, self._apply = wrap(gradients), wrap(apply)
            self._train = self._data_parallel_step
        self._infer = wrap(lambda x: tf.cast(forward(x, False), tf.float32))
        self._synced = True

    def _make_slots(self) -> dict[str, tf.Variable]:
        zeros = {k: np.zeros(v.shape, np.float32) for k, v in self.vars.items() if v.trainable}
        if self.options.optimizer == "sgd":
            return {f"v.{k}": tf.Variable(z) for k, z in zeros.items()}
        slots = {"t": tf.Variable(0.0)}
        for k, z in zeros.items():
            slots[f"m.{k}"], slots[f"s.{k}"] = tf.Variable(z), tf.Variable(z)
        return slots

    @classmethod
    def init_distributed(cls, rank: int, peers: list[str], timeout_s: float, device: str = "cpu") -> None:
        """``MultiWorkerMirroredStrategy`` over ``peers`` (TF_CONFIG), collectives timing out after ``timeout_s``.

        Only its cross-worker all-reduce is used (the variables stay plain, one copy per worker,
        updated identically); it must exist before TensorFlow's runtime starts."""
        global _STRATEGY
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": peers}, "task": {"type": "worker", "index": rank}})
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)

    def _data_parallel_step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Local gradients (XLA), their mean over the workers (the strategy's collective, timed), the update."""
        assert _STRATEGY is not None, "init_distributed first"
        loss, grads = self._gradients(x, y)
        t0 = time.perf_counter()
        mean = _all_reduce_mean(grads)
        self.comm_s += time.perf_counter() - t0  # CPU collectives return finished; GPU: enqueue time only
        self.comm_steps += 1
        self._apply(mean)
        return loss

    @property
    def compile_mode(self) -> str:
        return "xla" if self._jit else "eager"

    @staticmethod
    def framework_version() -> str:
        return str(tf.__version__)

    def to_device(self, x: np.ndarray) -> tf.Tensor:
        with tf.device(self.device):
            return tf.identity(tf.constant(to_channel_last(x)))

    def train_step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        self._synced = False
        with tf.device(self.device):
            return self._train(x, y)

    def infer(self, x: tf.Tensor) -> tf.Tensor:
        self._synced = False
        with tf.device(self.device):
            return self._infer(x)

    def sync(self) -> None:
        # CPU eager execution is synchronous; GPU kernels are queued on streams
        if self.options.device != "cpu":
            tf.test.experimental.sync_devices()
        self._synced = True

    def ready(self) -> bool:
        # TF has no non-blocking readiness query; on CPU every call has finished when it returns
        return self._synced or self.options.device == "cpu"

    def to_numpy(self, value: tf.Tensor) -> np.ndarray:
        return np.asarray(value.numpy())

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        check_params(self.arch, params)
        for k, v in params.items():
            self.vars[k].assign(to_native_kernel(v))
        for slot in self._slots.values():
            slot.assign(tf.zeros_like(slot))
        self._scale.assign(LOSS_SCALE_INIT)
        self._good.assign(0)

    def loss_scale(self) -> float | None:
        return float(self._scale.numpy()) if self.loss_scaling else None

    def export_params(self) -> dict[str, np.ndarray]:
        return {k: to_canonical_kernel(v.numpy()) for k, v in self.vars.items()}

    def native_param_count(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.vars.values() if v.trainable)

    def device_memory_peak_mb(self) -> float | None:
        if self.options.device == "cpu":
            return None
        return float(tf.config.experimental.get_memory_info(self.device.strip("/"))["peak"]) / 2**20

    def runtime_info(self) -> dict[str, Any]:
        return {
            "threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled(),
            "matmul_precision": "highest (float32, TF32 off)",
            "compute_dtype": self.options.precision,  # the matrix products' (tensorflow_layers.Run.compute)
        }


ADAPTER = TensorflowAdapter
