"""MXNet adapter: Gluon ``HybridSequential`` built from the spec, ``hybridize`` by default.

Runs in its own environment (numpy 1.23; see ``infra/requirements-mxnet.txt``). Gluon's layers
match the canonical layout except dense kernels, which are ``(out, in)``. Updates use MXNet's fused
ops: ``sgd_mom_update`` is the canonical SGD; ``adam_update`` has no bias correction and puts
epsilon on the uncorrected second moment, so the adapter rescales its learning rate and epsilon
per step to make it exactly the canonical (bias-corrected) Adam. The engine is asynchronous on CPU
too: :meth:`sync` is ``waitall``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
import mxnet as mx
from mxnet import autograd, gluon

from adapters.base import ADAM_BETAS, ADAM_EPS, Adapter, BuildOptions, check_params
from workloads.architectures import Architecture, Conv, Dense, Flatten


def _build(arch: Architecture) -> tuple[gluon.nn.HybridSequential, dict[int, Any]]:
    net = gluon.nn.HybridSequential()
    owners: dict[int, Any] = {}
    for i, (layer, in_shape) in enumerate(zip(arch.layers, arch.shapes(), strict=False)):
        if isinstance(layer, Dense):
            block = gluon.nn.Dense(layer.units, in_units=in_shape[0], flatten=False)
        elif isinstance(layer, Conv):
            conv = {1: gluon.nn.Conv1D, 2: gluon.nn.Conv2D}[layer.spatial_dims]
            block = conv(
                layer.filters, layer.kernel, layer.stride, layer.padding, in_channels=in_shape[0],
                layout={1: "NCW", 2: "NCHW"}[layer.spatial_dims],
            )  # fmt: skip
        elif isinstance(layer, Flatten):
            block = gluon.nn.Flatten()
        else:
            raise TypeError(f"mxnet adapter cannot build {layer}")
        net.add(block)
        if isinstance(layer, Dense | Conv):
            owners[i] = block
            if layer.activation != "none":
                net.add(gluon.nn.Activation(layer.activation))
    return net, owners


class MxnetAdapter(Adapter):
    name = "mxnet"

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        self.ctx = mx.gpu(0) if options.device == "gpu" else mx.cpu()
        self.net, self._owners = _build(arch)
        self.net.initialize(mx.init.Zero(), ctx=self.ctx)  # overwritten by the canonical weights below
        self._hybrid = options.compile != "off"
        self._static = {k: bool(options.extra.get(k, True)) for k in ("static_alloc", "static_shape")}
        if self._hybrid:
            self.net.hybridize(**self._static)
        self._params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
        self._slots: dict[str, list[mx.nd.NDArray]] = {}
        self._t = 0
        self._loss = gluon.loss.SoftmaxCrossEntropyLoss()
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

    def train_step(self, x: mx.nd.NDArray, y: mx.nd.NDArray) -> mx.nd.NDArray:
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
        for i, block in self._owners.items():
            kernel = params[f"{i}.kernel"]
            weight = kernel.T if isinstance(block, gluon.nn.Dense) else kernel  # (in,out) -> (out,in)
            block.weight.set_data(mx.nd.array(np.ascontiguousarray(weight), ctx=self.ctx))
            block.bias.set_data(mx.nd.array(params[f"{i}.bias"], ctx=self.ctx))
        zeros = [mx.nd.zeros(p.shape, ctx=self.ctx) for p in self._params]
        if self.options.trainable:
            names = ("v",) if self.options.optimizer == "sgd" else ("m", "s")
            self._slots = {n: [z.copy() for z in zeros] for n in names}
        self._t = 0

    def export_params(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, block in self._owners.items():
            weight = block.weight.data(self.ctx).asnumpy()
            out[f"{i}.kernel"] = np.ascontiguousarray(weight.T if isinstance(block, gluon.nn.Dense) else weight)
            out[f"{i}.bias"] = block.bias.data(self.ctx).asnumpy()
        return out

    def native_param_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self._params)

    def device_memory_peak_mb(self) -> float | None:
        return None  # MXNet exposes no peak counter; NVML covers GPUs (see harness.measure)

    def runtime_info(self) -> dict[str, Any]:
        return {
            "omp_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "engine_threads": os.environ.get("MXNET_CPU_WORKER_NTHREADS", ""),
            "engine": os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice"),
            "matmul_precision": "highest (float32)",
            **(self._static if self._hybrid else {}),
        }


ADAPTER = MxnetAdapter
