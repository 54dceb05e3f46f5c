"""PyTorch adapter: ``nn.Sequential`` built from the spec; ``torch.compile`` (inductor) on GPU.

On CPU the default (``compile="auto"``) is eager: inductor's C++ compile costs tens of seconds per
process and, for these model sizes, buys little over the oneDNN/MKL eager kernels. ``compile="on"``
forces inductor anywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adapters.base import ADAM_BETAS, ADAM_EPS, Adapter, BuildOptions, check_params
from workloads.architectures import Architecture, Conv, Dense, Flatten

_ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


_Owner = nn.Linear | nn.Conv1d | nn.Conv2d


def _build(arch: Architecture) -> tuple[nn.Sequential, dict[int, _Owner]]:
    """The native model, and canonical layer index -> the module holding its parameters."""
    modules: list[nn.Module] = []
    owners: dict[int, _Owner] = {}
    for i, (layer, in_shape) in enumerate(zip(arch.layers, arch.shapes(), strict=False)):
        module: nn.Module | _Owner
        if isinstance(layer, Dense):
            module = nn.Linear(in_shape[0], layer.units)
        elif isinstance(layer, Conv):
            conv = {1: nn.Conv1d, 2: nn.Conv2d}[layer.spatial_dims]
            module = conv(in_shape[0], layer.filters, layer.kernel, layer.stride, layer.padding)  # type: ignore[arg-type]
        elif isinstance(layer, Flatten):
            module = nn.Flatten()
        else:
            raise TypeError(f"torch adapter cannot build {layer}")
        modules.append(module)
        if isinstance(module, _Owner):
            owners[i] = module
            if isinstance(layer, Dense | Conv) and layer.activation != "none":
                modules.append(_ACT[layer.activation]())
    return nn.Sequential(*modules), owners


def _bias(module: _Owner) -> torch.Tensor:
    assert module.bias is not None  # every canonical Dense/Conv has a bias
    return module.bias


class TorchAdapter(Adapter):
    name = "torch"

    def __init__(self, arch: Architecture, params: dict[str, np.ndarray], options: BuildOptions):
        super().__init__(arch, params, options)
        torch.set_num_threads(options.threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.device = torch.device("cuda" if options.device == "gpu" else options.device)
        self.model, self._owners = _build(arch)
        self.model.to(self.device)
        compiled = options.compile == "on" or (options.compile == "auto" and self.device.type == "cuda")
        self._mode = "inductor" if compiled else "eager"
        self._forward: Any = torch.compile(self.model) if compiled else self.model
        self.load_params(params)

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
        loss = F.cross_entropy(self._forward(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            self.model.eval()
        with torch.inference_mode():
            out: torch.Tensor = self._forward(x)
        return out

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
            for i, module in self._owners.items():
                kernel = params[f"{i}.kernel"]
                weight = kernel.T if isinstance(module, nn.Linear) else kernel  # (in,out) -> (out,in)
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
                _bias(module).copy_(torch.from_numpy(params[f"{i}.bias"]))
        # torch.optim imports torch._dynamo (about 2 s): only pay for it when training
        self.optimizer = self._make_optimizer() if self.options.trainable else None

    def export_params(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, module in self._owners.items():
            weight = module.weight.detach().cpu().numpy()
            out[f"{i}.kernel"] = np.ascontiguousarray(weight.T if isinstance(module, nn.Linear) else weight)
            out[f"{i}.bias"] = _bias(module).detach().cpu().numpy().copy()
        return out

    def native_param_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def device_memory_peak_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def runtime_info(self) -> dict[str, Any]:
        return {
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }


ADAPTER = TorchAdapter
