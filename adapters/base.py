"""The adapter contract: one train/infer interface over every framework.

An adapter builds a framework-neutral :class:`~workloads.architectures.Architecture` natively,
loads the canonical weights (converting layouts itself), and runs training steps and inference on
batches it has moved to its device. Worker-side: numpy, the standard library and the adapter's own
framework, which is imported inside the adapter module only.

Conventions every adapter follows, so that all frameworks run the same computation:

- loss: mean softmax cross-entropy from logits over every label of the batch: logits ``(N, *P, C)``,
  int labels ``(N, *P)`` with ``P = Architecture.label_shape`` (``()`` for a classifier, the
  positions ``(T,)`` for a language model);
- ``sgd``: ``v = momentum * v + g; p -= lr * v`` (no dampening, no Nesterov, no weight decay);
- ``adam``: bias-corrected Adam with ``betas = ADAM_BETAS`` and ``eps = ADAM_EPS`` outside the square
  root; the framework's defaults are never relied on;
- precision (``BuildOptions.precision``, one of :data:`PRECISIONS`): ``float32`` is float32 everywhere,
  TF32 and reduced-precision matmuls off. ``bfloat16`` and ``float16`` are *mixed* precision, the same
  rule in every framework (the "low" dtype is the one named):

  - master weights, optimiser state and batch-norm running statistics stay float32; gradients reach
    the optimiser float32 (unscaled) and the update is computed and applied in float32;
    ``export_params`` returns the float32 masters;
  - matrix products run in the low dtype: dense, convolution, recurrent layers, the attention
    projections (q, k, v, o), the attention scores q.k and weighted sums p.v, any tied LM head. Their
    inputs, weights *and biases* are cast to the low dtype and their output is low (kernels may
    accumulate in float32 inside). The bias is added in the low dtype because torch.autocast's fused
    linear/conv (and Keras' mixed policies) do so; every framework follows;
  - a recurrent layer runs its whole recurrence in the low dtype (gate products, gate arithmetic,
    hidden and cell state), as cuDNN's and oneDNN's fused half-precision RNN kernels do;
  - float32 islands: batch norm and layer norm cast their input to float32 and compute and return
    float32 (with their float32 parameters and statistics); the attention softmax runs in float32 on the
    scores cast up, and its probabilities are cast to the low dtype for p.v (a fused attention kernel,
    torch's SDPA or ``jax.nn.dot_product_attention``, keeps the q.k accumulation float32 into the
    softmax; the unfused ones round the scores to the low dtype first); the loss takes the logits cast
    to float32;
  - everything else (activations, residual and bias-free adds, pooling, mean pools, reshapes, the
    embedding lookup, whose table stays float32) runs in its inputs' dtype, low mixed with float32
    promoting to float32 (TensorFlow, which does not promote, casts the same way explicitly);
  - ``float16`` only, dynamic loss scaling: the scale starts at ``LOSS_SCALE_INIT`` (2**15); the loss is
    multiplied by it before the backward pass and the gradients are divided by it in float32; a step
    with any non-finite gradient is skipped (weights, optimiser state and step count unchanged; the
    batch-norm running statistics keep the forward pass's update, as in torch) and halves the scale;
    after ``LOSS_SCALE_GROWTH_INTERVAL`` (2000) consecutive finite steps the scale doubles. ``bfloat16``
    has float32's exponent range and no loss scaling;
  - inference: the same casts, logits returned as float32.

  Where a framework cannot honour this on a device, ``FrameworkInfo.unsupported_reason`` says so
  before anything runs; ``runtime()`` reports ``precision``, ``loss_scaling`` and ``compute_dtype``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np

from workloads.architectures import Architecture

Device = Literal["cpu", "gpu", "tpu"]
CompileChoice = Literal["auto", "on", "off"]
Optimizer = Literal["sgd", "adam"]

RUNTIME_KEYS = ("threads", "matmul_precision", "execution_mode")  # in every framework's runtime report
PRECISIONS = ("float32", "bfloat16", "float16")  # float32, or mixed precision with float32 master weights
LOSS_SCALE_INIT = 2.0**15  # float16's dynamic loss scale: its start, ...
LOSS_SCALE_GROWTH_INTERVAL = 2000  # ... doubled after this many consecutive finite steps, halved on a non-finite one
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class Optimization:
    """How a model learns; the trial contract's ``TrainSpec`` extends it (one definition of these fields)."""

    optimizer: Optimizer = "sgd"
    learning_rate: float = field(default=0.05, metadata={"gt": 0})
    momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1})


@dataclass(frozen=True, kw_only=True)
class BuildOptions(Optimization):
    """How to build a model: where, in which precision, compiled or not, and how it learns."""

    device: Device = "cpu"
    precision: str = "float32"
    compile: CompileChoice = "auto"
    threads: int = 1
    trainable: bool = True  # False: inference only, no optimiser state is built
    extra: Mapping[str, Any] = field(default_factory=dict)  # framework options (FrameworkInfo.options)
    workers: int = 1  # data-parallel processes training this model (after init_distributed)

    @classmethod
    def for_training(cls, optimization: Optimization, **build: Any) -> BuildOptions:
        """Build options that learn as ``optimization`` says (a trial's ``TrainSpec`` is one)."""
        learning = {f.name: getattr(optimization, f.name) for f in fields(Optimization)}
        return cls(**learning, **build)


class Adapter(ABC):
    """One framework's native build of an architecture, with its optimiser state.

    ``train_step`` and ``infer`` may return before the device has finished (JAX and CUDA dispatch
    asynchronously): the caller must call :meth:`sync` before it reads a clock.
    """

    name: ClassVar[str]

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        from adapters import FRAMEWORKS  # the capability table (plain data)

        reason = FRAMEWORKS[self.name].unsupported_reason(
            options.device, options.precision, "train" if options.trainable else "infer"
        )
        if reason:
            raise ValueError(reason)
        self.arch = arch
        self.options = options
        self.comm_s = 0.0  # data-parallel: seconds spent in the gradient all-reduce, where it can be timed
        self.comm_steps = 0  # ... over this many training steps

    @classmethod
    def init_distributed(cls, rank: int, peers: list[str], timeout_s: float, device: str = "cpu") -> None:
        """Join a data-parallel job of ``len(peers)`` processes before the first model is built.

        ``peers[0]`` is the coordinator's ``host:port`` and ``peers[r]`` rank ``r``'s endpoint, chosen
        by the harness. Collective operations time out after ``timeout_s``. A model built afterwards
        with ``options.workers == len(peers)`` trains data-parallel: each process computes on its own
        share of the global batch (``to_device`` takes the local share), the gradients are averaged
        over every process with the framework's own collectives, and every process applies the same
        update, so that one step equals the single-process step on the whole global batch.
        """
        raise NotImplementedError(f"{cls.name} has no data-parallel path")

    @classmethod
    def shutdown_distributed(cls) -> None:
        """Leave the data-parallel job, every process together (after a barrier): a process whose
        coordinator has already exited may otherwise be aborted by the framework's runtime."""
        return None  # TensorFlow's strategy needs no leaving

    @property
    def loss_scaling(self) -> bool:
        """Whether training scales the loss dynamically (``float16``; see the module docstring)."""
        return self.options.precision == "float16" and self.options.trainable

    def loss_scale(self) -> float | None:
        """The current dynamic loss scale (None without loss scaling)."""
        return None

    def comm_s_per_step(self) -> float | None:
        """Mean seconds per training step in the gradient all-reduce (None where not measurable)."""
        return self.comm_s / self.comm_steps if self.comm_steps else None

    @property
    @abstractmethod
    def compile_mode(self) -> str:
        """The execution mode that actually runs, e.g. ``eager``, ``inductor``, ``jit``."""

    @staticmethod
    @abstractmethod
    def framework_version() -> str: ...

    @abstractmethod
    def to_device(self, x: np.ndarray) -> Any:
        """Move a canonical (channel-first) array to the device, in the adapter's native layout."""

    @abstractmethod
    def train_step(self, x: Any, y: Any) -> Any:
        """One optimiser step on a device batch; returns the (device) loss before the update."""

    @abstractmethod
    def infer(self, x: Any) -> Any:
        """Logits for a device batch, in inference mode."""

    @abstractmethod
    def sync(self) -> None:
        """Block until every operation queued so far has finished."""

    @abstractmethod
    def ready(self) -> bool:
        """Non-blocking: has all queued work (parameters, last outputs) finished?"""

    @abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray: ...

    @abstractmethod
    def load_params(self, params: dict[str, np.ndarray]) -> None:
        """Set the weights from canonical arrays and reset the optimiser state."""

    @abstractmethod
    def export_params(self) -> dict[str, np.ndarray]:
        """The current weights in the canonical layout."""

    @abstractmethod
    def native_param_count(self) -> int:
        """Number of trainable scalars as the framework counts them."""

    def device_memory_peak_mb(self) -> float | None:
        """Peak device memory the framework reports, or None where it has no counter (CPU)."""
        return None

    @abstractmethod
    def runtime_info(self) -> dict[str, Any]:
        """Thread and precision settings as the framework reports them: at least ``threads`` (the
        intra-op threads it will use) and ``matmul_precision``, plus whatever else it knows."""

    def runtime(self) -> dict[str, Any]:
        """:meth:`runtime_info` with the keys every framework reports (:data:`RUNTIME_KEYS`) checked."""
        scaling = f"dynamic, from {LOSS_SCALE_INIT:g}" if self.loss_scaling else "none"
        info = {"execution_mode": self.compile_mode, "precision": self.options.precision, "loss_scaling": scaling}
        info |= self.runtime_info()
        missing = [k for k in RUNTIME_KEYS if k not in info]
        if missing:
            raise NotImplementedError(f"{self.name} adapter's runtime_info lacks {', '.join(missing)}")
        return info


def check_params(arch: Architecture, params: dict[str, np.ndarray]) -> None:
    """Raise if ``params`` does not match the architecture's canonical layout exactly."""
    layout = arch.variable_layout()
    if set(params) != set(layout):
        raise ValueError(f"{arch.name}: expected parameters {sorted(layout)}, got {sorted(params)}")
    for key, shape in layout.items():
        if tuple(params[key].shape) != shape:
            raise ValueError(f"{arch.name}: {key} has shape {params[key].shape}, expected {shape}")
