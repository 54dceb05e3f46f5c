"""MXNet adapter: a Gluon ``HybridSequential`` built from the spec (``mxnet_layers``), hybridized by default.

Runs in its own environment (numpy 1.23; see ``infra/requirements-mxnet.txt``). Updates use MXNet's
fused ops over the trainable parameters only (batch-norm running statistics are ``grad_req="null"``
auxiliary states that the ``BatchNorm`` op updates itself): ``sgd_mom_update`` is the canonical SGD;
``adam_update`` has no bias correction and puts epsilon on the uncorrected second moment, so the
adapter rescales its learning rate and epsilon per step to make it exactly the canonical
(bias-corrected) Adam. MXNet's running-variance update uses the biased batch variance where the
contract uses the unbiased one: see :meth:`MxnetAdapter._store_running_var_for`. The engine is
asynchronous on CPU too: :meth:`sync` is ``waitall``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
import mxnet as mx
from mxnet import autograd, gluon

from adapters import mxnet_layers
from adapters.base import ADAM_BETAS, ADAM_EPS, Adapter, BuildOptions, check_params
from workloads.architectures import Architecture
from workloads.architectures.layers import BatchNorm


def _unbiased_factor(samples: int | None, per_sample: int) -> float:
    """``n / (n - 1)`` for the ``n`` values per channel of a batch of ``samples`` (1.0 for None)."""
    if samples is None:
        return 1.0
    n = samples * per_sample
    if n < 2:
        raise ValueError(f"batch norm in training needs more than one value per channel, got a batch of {samples}")
    return n / (n - 1)


class MxnetAdapter(Adapter):
    name = "mxnet"

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        self.ctx = mx.gpu(0) if options.device == "gpu" else mx.cpu()
        self.net, self._bindings = mxnet_layers.build(arch)
        self.net.initialize(mx.init.Zero(), ctx=self.ctx)  # overwritten by the canonical weights below
        self._hybrid = options.compile != "off"
        self._static = {k: bool(options.extra.get(k, True)) for k in ("static_alloc", "static_shape")}
        if self._hybrid:
            self.net.hybridize(**self._static)
        self._params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
        # batch norm: (canonical running_var name, values per channel in one sample)
        self._bn_vars = [
            (f"{path}.running_var", math.prod(shape[1:]))
            for path, layer, shape in arch.leaves()
            if isinstance(layer, BatchNorm)
        ]
        self._bn_samples: int | None = None  # see _store_running_var_for
        self._slots: dict[str, list[mx.nd.NDArray]] = {}
        self._t = 0
        self._loss = gluon.loss.SoftmaxCrossEntropyLoss()
        if self._hybrid:
            self._loss.hybridize(**self._static)
        self._last: Any = None
        self.load_params(params)

    @property
    def compile_mode(self) -> str:
        return "hybridize" if self._hybrid else "eager"  # eager: imperative Gluon

    @staticmethod
    def framework_version() -> str:
        return str(mx.__version__)

    def to_device(self, x: np.ndarray) -> mx.nd.NDArray:
        return mx.nd.array(x, ctx=self.ctx, dtype=x.dtype)

    def _store_running_var_for(self, samples: int | None) -> None:
        """Keep each batch norm's ``moving_var`` as ``running_var / (n / (n - 1))`` while training on
        batches of ``samples`` (``n`` values per channel), as the canonical ``running_var`` otherwise.

        MXNet updates ``moving_var = (1 - m) * moving_var + m * biased_var`` (in the backward pass);
        the contract updates ``running_var`` with the unbiased ``n / (n - 1) * biased_var``. With the
        stored value scaled by ``(n - 1) / n`` the native update is exactly the canonical one, at no
        cost per step; the scale changes only when the batch size changes or inference starts
        (evaluation normalises with the stored value, which must then be the canonical one).
        """
        if samples == self._bn_samples:
            return
        for name, per_sample in self._bn_vars:
            var = self._bindings[name].param.data(self.ctx)
            var *= _unbiased_factor(self._bn_samples, per_sample) / _unbiased_factor(samples, per_sample)
        self._bn_samples = samples

    def train_step(self, x: mx.nd.NDArray, y: mx.nd.NDArray) -> mx.nd.NDArray:
        self._store_running_var_for(x.shape[0])
        with autograd.record(train_mode=True):
            loss = self._loss(self.net(x), y).mean()
        loss.backward()
        o = self.options
        self._t += 1
        b1, b2 = ADAM_BETAS
        c1, c2 = 1 - b1**self._t, 1 - b2**self._t
        for j, p in enumerate(self._params):
            # MXNet's fused in-place update ops (oneDNN-formatted weights cannot be sliced into)
            w, g = p.data(self.ctx), p.grad(self.ctx)
            if o.optimizer == "sgd":  # mom = mu * mom - lr * g; w += mom  (== canonical, mom = -lr * v)
                mx.nd.sgd_mom_update(w, g, self._slots["v"][j], lr=o.learning_rate, momentum=o.momentum, wd=0.0, out=w)
            else:  # lr * m_hat / (sqrt(v_hat) + eps) == lr' * m / (sqrt(v) + eps') with these lr', eps'
                mx.nd.adam_update(
                    w, g, self._slots["m"][j], self._slots["s"][j], lr=o.learning_rate * c2**0.5 / c1,
                    beta1=b1, beta2=b2, epsilon=ADAM_EPS * c2**0.5, wd=0.0, out=w,
                )  # fmt: skip
        self._last = loss
        return loss

    def infer(self, x: mx.nd.NDArray) -> mx.nd.NDArray:
        self._store_running_var_for(None)
        self._last = self.net(x)
        return self._last

    def sync(self) -> None:
        mx.nd.waitall()
        self._last = None

    def ready(self) -> bool:
        # MXNet has no non-blocking readiness query; sync() clears the last pending output
        return self._last is None

    def to_numpy(self, value: mx.nd.NDArray) -> np.ndarray:
        return np.asarray(value.asnumpy())

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        check_params(self.arch, params)
        for param, value in mxnet_layers.to_native(self._bindings, params):
            param.set_data(mx.nd.array(value, ctx=self.ctx))
        self._bn_samples = None  # running_var is stored canonical
        zeros = [mx.nd.zeros(p.shape, ctx=self.ctx) for p in self._params]
        if self.options.trainable:
            names = ("v",) if self.options.optimizer == "sgd" else ("m", "s")
            self._slots = {n: [z.copy() for z in zeros] for n in names}
        self._t = 0

    def export_params(self) -> dict[str, np.ndarray]:
        values = {id(b.param): b.param.data(self.ctx).asnumpy() for b in self._bindings.values()}
        out = mxnet_layers.to_canonical(self._bindings, values)
        for name, per_sample in self._bn_vars:  # undo the training-time scale (see _store_running_var_for)
            if self._bn_samples is not None:
                out[name] = out[name] * np.float32(_unbiased_factor(self._bn_samples, per_sample))
        return out

    def native_param_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self._params)

    def device_memory_peak_mb(self) -> float | None:
        return None  # MXNet exposes no peak counter; NVML covers GPUs (see harness.measure)

    def runtime_info(self) -> dict[str, Any]:
        return {
            "threads": int(os.environ.get("OMP_NUM_THREADS") or self.options.threads),
            "omp_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "engine_threads": os.environ.get("MXNET_CPU_WORKER_NTHREADS", ""),
            "engine": os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice"),
            "matmul_precision": "highest (float32)",
            **(self._static if self._hybrid else {}),
        }


ADAPTER = MxnetAdapter
