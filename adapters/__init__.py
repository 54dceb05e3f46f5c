"""Framework adapters behind one interface, and what each framework can do.

The registry is plain data, so the driver can plan and validate without importing any framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass

from adapters.base import PRECISIONS, Adapter

# TPUs have no float16 arithmetic: their matrix units and vector units take bfloat16 and float32
_TPU_NO_FLOAT16 = (
    "tpu",
    "float16",
    "TPUs compute in bfloat16 and float32 (no float16 matrix or vector units); use bfloat16",
)
# XLA's CPU runtime (JAX, TensorFlow's jit_compile) keeps its own Eigen pool: one flag set pins it
_XLA_ONE_THREAD = (("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),)


@dataclass(frozen=True)
class FrameworkInfo:
    """A framework's adapter location and its capability flags."""

    name: str
    module: str
    import_name: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    compile_modes: tuple[str, ...]  # the modes ``auto``/``on``/``off`` may resolve to
    auto_compiles_on: tuple[str, ...] = ("cpu", "gpu", "tpu")  # devices where ``compile="auto"`` means on
    why_not: tuple[tuple[str, str], ...] = ()  # (device, reason) for devices it lacks
    # (device or "*", precision, reason): precisions it lacks (everywhere, or on one device)
    why_not_precision: tuple[tuple[str, str, str], ...] = ()
    options: tuple[str, ...] = ()  # framework-specific build options a suite may set
    modes: tuple[str, ...] = ("train", "infer", "serve")  # trial modes the adapter implements
    thread_vars: tuple[str, ...] = ()  # environment variables its thread pools read at start-up
    one_thread_flags: tuple[tuple[str, str], ...] = ()  # (variable, flags appended) when threads == 1
    runtime_env: tuple[tuple[str, str], ...] = ()  # defaults unless the user set them (e.g. no preallocation)
    preload: tuple[str, ...] = ()  # modules a fork server imports too (trials would import them lazily)
    data_parallel: str | None = None  # its native collectives ("torch.distributed"); None: no multi-worker path
    why_not_data_parallel: str = ""

    def worker_env(self, threads: int, environ: Mapping[str, str]) -> dict[str, str]:
        """Variables to set in a worker's environment (read before the framework initialises)."""
        env = {var: str(threads) for var in self.thread_vars}
        if threads == 1:
            for var, flags in self.one_thread_flags:
                env[var] = f"{environ[var]} {flags}" if environ.get(var) else flags
        env |= {var: value for var, value in self.runtime_env if var not in environ}
        return env

    def resolve_compile(self, choice: str, device: str) -> str:
        """``on`` or ``off``: what ``compile=choice`` does on ``device`` (``auto``: the framework's default there)."""
        if choice != "auto":
            return choice
        return "on" if device in self.auto_compiles_on else "off"

    def unsupported_reason(self, device: str, precision: str, mode: str = "train") -> str | None:
        """Why this framework cannot run a cell (None when it can): device, precision or trial mode."""
        if mode not in self.modes:
            return f"{self.name} does not support mode {mode!r} (supports {', '.join(self.modes)})"
        if device not in self.devices:
            why = dict(self.why_not).get(device, f"supports {', '.join(self.devices)}")
            return f"{self.name} does not support device {device!r}: {why}"
        for where, low, why in self.why_not_precision:
            if low == precision and where in ("*", device):
                return f"{self.name} does not support precision {precision!r} on {device}: {why}"
        if precision not in self.precisions:
            return f"{self.name} does not support precision {precision!r} (supports {', '.join(self.precisions)})"
        return None

    def multi_worker_reason(self, workers: int, mode: str, trains_on_data: bool) -> str | None:
        """Why a cell of ``workers`` data-parallel processes cannot run (None when it can)."""
        if workers == 1:
            return None
        if self.data_parallel is None:
            return f"{self.name} has no multi-worker path: {self.why_not_data_parallel}"
        if mode != "train":
            return "multi-worker trials train data-parallel; inference cells run with workers = 1"
        if trains_on_data:
            return "multi-worker trials measure training throughput; accuracy runs use workers = 1"
        return None


FRAMEWORKS: dict[str, FrameworkInfo] = {
    f.name: f
    for f in (
        FrameworkInfo(
            "torch",
            "adapters.torch_adapter",
            "torch",
            ("cpu", "gpu"),
            PRECISIONS,
            ("eager", "inductor"),
            auto_compiles_on=("gpu",),  # inductor's C++ compile costs tens of seconds per CPU process
            thread_vars=("OMP_NUM_THREADS", "MKL_NUM_THREADS"),
            preload=("torch._dynamo",),  # the first optimiser constructed imports it (about 2 s)
            data_parallel="torch.distributed (gloo on CPU, NCCL on GPU)",
        ),
        FrameworkInfo(
            "tensorflow",
            "adapters.tensorflow_adapter",
            "tensorflow",
            ("cpu", "gpu", "tpu"),
            PRECISIONS,
            ("eager", "xla"),
            why_not_precision=(_TPU_NO_FLOAT16,),
            thread_vars=("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"),
            one_thread_flags=_XLA_ONE_THREAD,
            runtime_env=(("TF_FORCE_GPU_ALLOW_GROWTH", "true"),),  # peaks mean nothing after a grab-all
            data_parallel="MultiWorkerMirroredStrategy's collective all-reduce (ring/gloo on CPU, NCCL on GPU)",
        ),
        FrameworkInfo(
            "jax",
            "adapters.jax_adapter",
            "jax",
            ("cpu", "gpu", "tpu"),
            PRECISIONS,
            ("eager", "jit"),
            why_not_precision=(_TPU_NO_FLOAT16,),
            one_thread_flags=_XLA_ONE_THREAD,
            runtime_env=(("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),),  # peaks mean nothing after a grab-all
            data_parallel="jax.distributed (gloo on CPU; NCCL/ICI on GPU/TPU), one global mesh",
        ),
        FrameworkInfo(
            "mxnet",
            "adapters.mxnet_adapter",
            "mxnet",
            ("cpu",),
            ("float32",),
            ("eager", "hybridize"),
            options=("static_alloc", "static_shape"),
            thread_vars=("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS"),
            why_not_precision=(
                (
                    "*",
                    "bfloat16",
                    "MXNet 1.9.1's bfloat16 runs only through oneDNN 2.x primitives that need AVX-512 "
                    "(on AVX2 its FullyConnected fails: 'could not create a primitive descriptor'), its AMP "
                    "converts a hybridized graph for inference, not float32-master training, and its numpy "
                    "front end cannot name the dtype ('bfloat16' not understood)",
                ),
                (
                    "*",
                    "float16",
                    "MXNet 1.9.1 has no float16 matrix products on CPU (FullyConnected: 'only supported by "
                    "CuDNN', Convolution: 'FP16 gemm on cpu not implemented', dot: 'float32/float64 for "
                    "CPU') and no usable GPU build",
                ),
            ),
            why_not=(
                ("gpu", "MXNet's last GPU wheels (1.9.1, CUDA <= 11.7) predate CUDA 11.8 and current drivers"),
                ("tpu", "MXNet has no TPU backend"),
            ),
            why_not_data_parallel=(
                "its kvstore dist_sync needs ps-lite's scheduler and server processes beside the workers "
                "(DMLC_ROLE roles), which the harness does not run; MXNet 1.9.1 is the retired last release"
            ),
        ),
    )
}


def load_adapter(framework: str) -> type[Adapter]:
    """Import a framework's adapter class (and so the framework itself)."""
    module = importlib.import_module(FRAMEWORKS[framework].module)
    cls: type[Adapter] = module.ADAPTER
    return cls
