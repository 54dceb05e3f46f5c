"""PyTorch adapter: native ``nn`` modules built from the spec (``torch_layers``); ``torch.compile`` (inductor) on GPU.

On CPU the default (``compile="auto"``) is eager: inductor's C++ compile costs tens of seconds per
process and, for these model sizes, buys little over the oneDNN/MKL eager kernels. ``compile="on"``
forces inductor anywhere. Recurrent layers run cuDNN/oneDNN's fused ``nn.GRU``/``nn.LSTM`` kernels
(dynamo leaves them out of the compiled graph rather than unrolling them).

Mixed precision (``bfloat16``/``float16``, the contract in ``adapters/base.py``): ``torch.autocast``
casts the matrix products (linear, conv, SDPA; bias included); where its op lists differ from the
contract the adapter casts explicitly: batch norm and layer norm get their input as float32 (a forward
pre-hook: on CPU autocast would run them on the low dtype, through ATen's mixed kernels), recurrent
layers cast their weights themselves (``torch_layers._Recurrent``), the logits go to the loss and out
of ``infer`` as float32. float16 trains through ``torch.amp.GradScaler`` with the contract's settings.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adapters import FRAMEWORKS
from adapters.base import (
    ADAM_BETAS,
    ADAM_EPS,
    LOSS_SCALE_GROWTH_INTERVAL,
    LOSS_SCALE_INIT,
    Adapter,
    BuildOptions,
    check_params,
)
from adapters.torch_layers import build
from workloads.architectures import Architecture


class TorchAdapter(Adapter):
    name = "torch"

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        torch.set_num_threads(options.threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.device = torch.device("cuda" if options.device == "gpu" else options.device)
        self.model, self._bindings = build(arch)
        self.model.to(self.device)
        self._rnns = [m for m in self.model.modules() if isinstance(m, nn.RNNBase)]
        low = options.precision != "float32"
        self._autocast = torch.autocast(self.device.type, getattr(torch, options.precision), enabled=low)
        if low:  # the float32 islands autocast does not make (see the module docstring)
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
                    m.register_forward_pre_hook(_float32_input)
        self._scaler = torch.amp.GradScaler(
            self.device.type,
            init_scale=LOSS_SCALE_INIT,
            growth_factor=2.0,
            backoff_factor=0.5,
            growth_interval=LOSS_SCALE_GROWTH_INTERVAL,
            enabled=self.loss_scaling,
        )
        compiled = FRAMEWORKS[self.name].resolve_compile(options.compile, options.device) == "on"
        self._mode = "inductor" if compiled else "eager"
        self._forward: Any = torch.compile(self.model) if compiled else self.model
        self.load_params(params)

    @classmethod
    def init_distributed(cls, rank: int, peers: list[str], timeout_s: float, device: str = "cpu") -> None:
        """``torch.distributed`` over a TCP store at ``peers[0]``: gloo for CPU trials, NCCL for GPU ones."""
        import torch.distributed as dist

        backend = "nccl" if device == "gpu" else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{peers[0]}",
            rank=rank,
            world_size=len(peers),
            timeout=timedelta(seconds=timeout_s),
        )

    @classmethod
    def shutdown_distributed(cls) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _all_reduce_gradients(self) -> None:
        """Average the gradients over the workers: one flat all-reduce (DDP's bucketing, one bucket),
        timed on its own (``comm_s``) after the device has finished the backward pass."""
        import torch.distributed as dist

        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sync()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        self.sync()
        self.comm_s += time.perf_counter() - t0
        self.comm_steps += 1
        flat /= self.options.workers
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    @property
    def compile_mode(self) -> str:
        return self._mode

    @staticmethod
    def framework_version() -> str:
        return str(torch.__version__)

    optimizer: torch.optim.Optimizer | None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        if o.optimizer == "adam":
            return torch.optim.Adam(
                self.model.parameters(), lr=o.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0
            )
        return torch.optim.SGD(
            self.model.parameters(), lr=o.learning_rate, momentum=o.momentum, dampening=0.0, nesterov=False
        )

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.optimizer is not None, "built with trainable=False"
        if not self.model.training:  # a recursive walk over the modules: not on every step
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast:
            logits = self._forward(x)  # (N, *P, C) against labels (N, *P): the mean over every label
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self._scaler.scale(loss).backward()
        if self.options.workers > 1:
            self._all_reduce_gradients()
        self._scaler.step(self.optimizer)  # float16: unscaled, skipped on a non-finite gradient
        self._scaler.update()
        return loss.detach()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            self.model.eval()
        with torch.inference_mode(), self._autocast:
            out: torch.Tensor = self._forward(x)
        return out.float()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def ready(self) -> bool:
        return self.device.type != "cuda" or torch.cuda.current_stream(self.device).query()

    def to_numpy(self, value: torch.Tensor) -> np.ndarray:
        return value.detach().cpu().numpy()

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        check_params(self.arch, params)
        with torch.no_grad():
            for name, binding in self._bindings.items():
                value = params[name].T if binding.transposed else params[name]
                binding.tensor().copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
        if self.device.type == "cuda":
            for rnn in self._rnns:  # re-pack cuDNN's flat weight buffer (a no-op on CPU)
                rnn.flatten_parameters()
        # torch.optim imports torch._dynamo (about 2 s): only pay for it when training
        self.optimizer = self._make_optimizer() if self.options.trainable else None

    def loss_scale(self) -> float | None:
        return float(self._scaler.get_scale()) if self.loss_scaling else None

    def export_params(self) -> dict[str, np.ndarray]:
        """Parameters and batch-norm running statistics, float32, canonical layout (fresh arrays)."""
        out: dict[str, np.ndarray] = {}
        for name, binding in self._bindings.items():
            value = binding.tensor().detach().cpu().numpy()
            out[name] = np.array(value.T if binding.transposed else value, dtype=np.float32, order="C")
        return out

    def native_param_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def device_memory_peak_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def runtime_info(self) -> dict[str, Any]:
        return {
            "threads": torch.get_num_threads(),
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "compute_dtype": self.options.precision,
            "autocast": "off" if (low := self.options.precision) == "float32" else f"{self.device.type} {low}",
        }


def _float32_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A normalisation's input as float32 (the contract's float32 island)."""
    return (args[0].float(), *args[1:])


ADAPTER = TorchAdapter
