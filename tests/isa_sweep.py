"""How far kernel choices move what the parity and conformance suites compare: the measurement behind
their tolerances. ``python -m tests.isa_sweep OUT_DIR [VARIANT ...]`` (minutes per variant: XLA compiles).

oneDNN, MKL, OpenBLAS and XLA pick kernels (vector width, blocking, so summation order) from the CPU
they find, so another machine computes other float32 roundings. Each variant below restricts the
libraries through their own controls and reruns every framework's probe (``tests.parity_probe``, and
the conformance quantities against the float64 reference); the report gives, per quantity, the worst
difference absolute and relative to the output's scale (max |value|), between frameworks within a
variant, between variants of one framework, and over every (framework, variant) mix. Results are
cached in OUT_DIR (delete a variant's folder to rerun it). ``python -m tests.isa_sweep --precision OUT_DIR
[VARIANT ...]`` does the same for ``tests.precision_probe`` and reports the share of
``tests/test_precision.py``'s bounds each (framework, variant) takes.

Controls, as checked against these versions (torch 2.13, TF 2.21, jax/jaxlib 0.10.2, MXNet 1.9.1):

- oneDNN (torch, TF eager): ``ONEDNN_MAX_CPU_ISA``. MXNet 1.9's oneDNN 2.x reads ``DNNL_MAX_CPU_ISA``
  only (``MKLDNN_``/``ONEDNN_`` prefixes are ignored; ``DNNL_VERBOSE=1`` prints the ISA it uses).
- ATen's own vectorised kernels (torch reductions, elementwise): ``ATEN_CPU_CAPABILITY`` (default/avx2/avx512).
- MKL (torch's sgemm): ``MKL_ENABLE_INSTRUCTIONS`` has no effect on an AMD CPU (MKL takes its
  non-Intel path whatever it says); ``MKL_CBWR=COMPATIBLE`` does change the kernel there.
- XLA (JAX, TF ``jit_compile``): ``--xla_cpu_max_isa=SSE4_2|AVX|AVX2|AVX512...`` caps the code XLA emits
  (fusions, elementwise); dots and reductions go to YNNPACK, which picks its kernels from the CPU at run
  time and ignores the cap. ``--xla_cpu_experimental_ynn_fusion_type=`` (empty) turns YNNPACK off:
  Eigen kernels, another summation order.
- OpenBLAS (numpy's reference, MXNet's dot): ``OPENBLAS_CORETYPE``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.tolerances import (
    ADAM_NOISY_SHARE,
    BN_ARCHS,
    REFERENCE_LOGITS,
    REFERENCE_LOSS,
    REFERENCE_STATS,
    Tol,
    tolerance,
)

REPO = Path(__file__).resolve().parent.parent
FRAMEWORK_NAMES = ("torch", "tensorflow", "jax", "mxnet")


def _caps(onednn: str, xla: str, aten: str, openblas: str, mkl: str) -> dict[str, str]:
    return {
        "ONEDNN_MAX_CPU_ISA": onednn,
        "DNNL_MAX_CPU_ISA": onednn,
        "MKL_ENABLE_INSTRUCTIONS": mkl,
        "XLA_FLAGS": f"--xla_cpu_max_isa={xla}",
        "ATEN_CPU_CAPABILITY": aten,
        "OPENBLAS_CORETYPE": openblas,
    }


VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "avx2": _caps("AVX2", "AVX2", "avx2", "Haswell", "AVX2"),
    "avx": _caps("AVX", "AVX", "default", "Sandybridge", "AVX"),
    "sse41": _caps("SSE41", "SSE4_2", "default", "Nehalem", "SSE4_2") | {"MKL_CBWR": "COMPATIBLE"},
    # library kernels that ignore the ISA caps, swapped for others: Eigen for YNNPACK, MKL's compatible path
    "altlib": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=", "MKL_CBWR": "COMPATIBLE"},
}


def conformance_probe(framework: str) -> dict[str, np.ndarray]:
    """What ``tests/test_adapters.py`` compares with the float64 reference, and that reference."""
    from adapters import load_adapter
    from adapters.base import BuildOptions
    from tests.test_adapters import perturbed_state, reference_eval, reference_train
    from workloads.architectures import ARCHITECTURES

    out: dict[str, np.ndarray] = {}
    for name, arch in ARCHITECTURES.items():
        x, expected = reference_eval(name)
        out[f"{name}/eval/ref"] = expected
        for compile_ in ("auto", "off"):
            options = BuildOptions(threads=2, trainable=False, compile=compile_)
            a = load_adapter(framework)(arch, perturbed_state(arch, seed=8), options)
            out[f"{name}/eval_{compile_}"] = a.to_numpy(a.infer(a.to_device(x)))
        x, y, loss, state = reference_train(name)
        a = load_adapter(framework)(arch, perturbed_state(arch, seed=10), BuildOptions(threads=2))
        out[f"{name}/loss1"] = np.array(float(a.to_numpy(a.train_step(a.to_device(x), a.to_device(y)))))
        out[f"{name}/loss1/ref"] = np.array(loss)
        exported = a.export_params()
        for key, value in state.items():
            out[f"{name}/stats/{key}"] = exported[key]
            out[f"{name}/stats/{key}/ref"] = value
    return out


def run_variant(out_dir: Path, variant: str) -> None:
    from harness.envs import interpreter

    env = os.environ | VARIANTS[variant]
    if "XLA_FLAGS" in VARIANTS[variant] and os.environ.get("XLA_FLAGS"):
        env["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {VARIANTS[variant]['XLA_FLAGS']}"
    (out_dir / variant).mkdir(parents=True, exist_ok=True)
    for fw in FRAMEWORK_NAMES:
        for kind, module in (("parity", "tests.parity_probe"), ("conformance", "tests.isa_sweep")):
            path = out_dir / variant / f"{kind}-{fw}.npz"
            if path.exists():
                continue
            args = [fw, str(path)] if kind == "parity" else ["--conformance", fw, str(path)]
            proc = subprocess.run(
                [interpreter(fw), "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True
            )
            if proc.returncode:
                raise RuntimeError(f"{variant} {kind} {fw}:\n{proc.stderr[-3000:]}")
            print(f"{variant} {kind} {fw}: done", flush=True)


Row = tuple[str, str]  # (check, models)


class Worst:
    """Per (check, models) row and comparison: the worst abs difference, relative to scale, share of tolerance."""

    def __init__(self) -> None:
        self.cells: dict[tuple[Row, str], tuple[float, float, float, str]] = {}

    def note(self, row: Row, comparisons: list[str], d: float, rel: float, used: float, where: str) -> None:
        for c in comparisons:
            old = self.cells.get((row, c), (0.0, 0.0, 0.0, ""))
            self.cells[(row, c)] = (
                max(old[0], d),
                max(old[1], rel),
                max(old[2], used),
                where if used > old[2] else old[3],
            )

    def diff(self, row: Row, comparisons: list[str], a: np.ndarray, b: np.ndarray, tol: Tol, where: str) -> None:
        """One compared output: scale is its largest magnitude in either array."""
        d = np.abs(np.asarray(a, np.float64) - b)
        scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-30)
        self.note(row, comparisons, float(d.max()), float(d.max()) / scale, tol.used(a, b), where)


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in arrays])


def report(out_dir: Path) -> None:
    from tests.parity_probe import TRAINING
    from workloads.architectures import ARCHITECTURES

    variants = [v for v in VARIANTS if all((out_dir / v / f"parity-{fw}.npz").exists() for fw in FRAMEWORK_NAMES)]
    probes = {(fw, v): dict(np.load(out_dir / v / f"parity-{fw}.npz")) for v in variants for fw in FRAMEWORK_NAMES}
    conf = {(fw, v): dict(np.load(out_dir / v / f"conformance-{fw}.npz")) for v in variants for fw in FRAMEWORK_NAMES}
    worst = Worst()
    for arch, spec in ARCHITECTURES.items():
        bn = arch in BN_ARCHS
        models = "bn" if bn else "non-bn"
        state = set(spec.state_layout())
        keys = list(spec.init_variables(0))
        for (ka, pa), (kb, pb) in itertools.combinations(probes.items(), 2):
            comparisons = ["all mixes"]
            if ka[1] == kb[1]:
                comparisons.append(f"frameworks@{ka[1]}")
            elif ka[0] == kb[0]:
                comparisons.append("one framework, variants")
            where = f"{arch} {ka[0]}@{ka[1]}/{kb[0]}@{kb[1]}"
            for check in ("logits", "logits_after"):
                name = f"{arch}/logits" if check == "logits" else f"{arch}/sgd/logits_after"
                worst.diff((check, models), comparisons, pa[name], pb[name], tolerance(check, arch), where)
            for opt, (steps, lr) in TRAINING.items():
                name = f"{arch}/{opt}/loss"
                worst.diff(
                    (f"loss {opt}", models), comparisons, pa[name], pb[name], tolerance("loss", arch, opt), where
                )
                tol = tolerance("weights", arch, opt)
                for kind, group in (("weights", [k for k in keys if k not in state]), ("running stats", sorted(state))):
                    if not group:
                        continue
                    wa = [pa[f"{arch}/{opt}/w/{k}"] for k in group]
                    wb = [pb[f"{arch}/{opt}/w/{k}"] for k in group]
                    d = float(np.abs(_flat(wa).astype(np.float64) - _flat(wb)).max())
                    if opt == "sgd":
                        scale = max(float(np.abs(_flat(wa)).max()), float(np.abs(_flat(wb)).max()))
                        used = max(tol.used(a, b) for a, b in zip(wa, wb, strict=True))
                        worst.note((f"{kind} sgd", models), comparisons, d, d / scale, used, where)
                    elif kind == "weights" and not bn:  # Adam: max |diff| against steps * lr; share outside tol
                        worst.note(("adam max |dw|", models), comparisons, d, d / (steps * lr), d / (steps * lr), where)
                        tight = [(a, b) for k, a, b in zip(group, wa, wb, strict=True) if not k.endswith(".bk")]
                        outside = sum(int((np.abs(a - b) > tol.allowed(a, b)).sum()) for a, b in tight)
                        share = outside / sum(a.size for a, _ in tight)
                        worst.note(
                            ("adam share outside", models), comparisons, share, share, share / ADAM_NOISY_SHARE, where
                        )
        for (fw, v), c in conf.items():  # against the float64 reference
            where, comparisons = f"{arch} {fw}@{v}", ["float64 reference"]
            for mode in ("auto", "off"):
                worst.diff(
                    (f"ref logits {mode}", models),
                    comparisons,
                    c[f"{arch}/eval_{mode}"],
                    c[f"{arch}/eval/ref"],
                    REFERENCE_LOGITS,
                    where,
                )
            worst.diff(
                ("ref loss", models), comparisons, c[f"{arch}/loss1"], c[f"{arch}/loss1/ref"], REFERENCE_LOSS, where
            )
            for key in state:
                ref = c[f"{arch}/stats/{key}/ref"]
                worst.diff(
                    ("ref running stats", models), comparisons, c[f"{arch}/stats/{key}"], ref, REFERENCE_STATS, where
                )

    same = [
        v
        for v in variants
        if v != "default"
        and all(
            all(np.array_equal(probes[(fw, v)][k], probes[(fw, "default")][k]) for k in probes[(fw, v)])
            for fw in FRAMEWORK_NAMES
        )
    ]
    print(f"variants: {', '.join(variants)}" + (f" ({', '.join(same)}: bit for bit the default here)" if same else ""))
    print("cells: max |a - b| / max(|a|, |b|) (weights: over the model); used: share of the tolerance, worst case")
    columns = [f"frameworks@{v}" for v in variants if v not in same] + ["one framework, variants"]
    rows = sorted({row for row, _ in worst.cells}, key=lambda r: (r[0].startswith("ref"), r))
    print(
        f"{'check':20} {'models':7}"
        + "".join(f" {c.split('@')[-1][:9]:>9}" for c in columns)
        + f" {'abs':>9} {'used':>6}  worst at"
    )
    for row in rows:
        if (row, "float64 reference") in worst.cells:
            d, rel, used, where = worst.cells[(row, "float64 reference")]
            cells = "".join(f" {'':>9}" for _ in columns[:-1]) + f" {rel:9.2e}"
        else:
            d, rel, used, where = worst.cells[(row, "all mixes")]
            cells = "".join(f" {worst.cells.get((row, c), (0, 0, 0, ''))[1]:9.2e}" for c in columns)
        print(f"{row[0]:20} {row[1]:7}{cells} {d:9.2e} {used:6.3f}  {where}")


def run_precision_variant(out_dir: Path, variant: str) -> None:
    """``tests.precision_probe`` under one variant, for every framework with a low precision on CPU."""
    from harness.envs import interpreter
    from tests.test_precision import LOW_FWS

    env = os.environ | VARIANTS[variant]
    (out_dir / variant).mkdir(parents=True, exist_ok=True)
    for fw in LOW_FWS:
        path = out_dir / variant / f"precision-{fw}.npz"
        if not path.exists():
            cmd = [interpreter(fw), "-m", "tests.precision_probe", fw, str(path)]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{variant} precision {fw}:\n{proc.stderr[-3000:]}")
            print(f"{variant} precision {fw}: done", flush=True)


def precision_report(out_dir: Path) -> None:
    """Per (framework, variant): the largest share of ``tests/test_precision.py``'s bounds taken."""
    from tests.precision_probe import batch
    from tests.test_precision import FORWARD, bound
    from workloads.architectures import ARCHITECTURES
    from workloads.architectures.reference import forward

    print(f"{'framework':11} {'variant':8} {'logits':>7} {'head':>6} {'l2':>6}  worst at (share of the bound)")
    for path in sorted(out_dir.glob("*/precision-*.npz")):
        p, fw, variant = dict(np.load(path)), path.stem.split("-", 1)[1], path.parent.name
        worst = {"logits": (0.0, ""), "head": (0.0, ""), "l2": (0.0, "")}
        for arch_name, precision in FORWARD:
            arch = ARCHITECTURES[arch_name]
            params, (x, _) = arch.init_variables(13), batch(arch_name)
            tol, state = Tol(scale=bound(arch, precision)), set(arch.state_layout())
            used = {"logits": tol.used(p[f"{arch_name}/{precision}/logits"], forward(arch, params, x)[0])}
            head = f"{len(arch.layers) - 1}.kernel"
            moved = {k: p[f"{arch_name}/{precision}/w/{k}"] - params[k] for k in params if k not in state}
            moved32 = {k: p[f"{arch_name}/float32/w/{k}"] - params[k] for k in moved}
            used["head"] = Tol(scale=2 * tol.scale).used(moved[head], moved32[head])
            diff = sum(float(((moved[k] - moved32[k]) ** 2).sum()) for k in moved)
            used["l2"] = (diff / sum(float((v**2).sum()) for v in moved32.values())) ** 0.5 / 0.5
            for key, value in used.items():
                if value > worst[key][0]:
                    worst[key] = (value, f"{arch_name} {precision}")
        cells = " ".join(f"{worst[k][0]:6.2f}" for k in ("logits", "head", "l2"))
        print(f"{fw:11} {variant:8} {cells}  " + ", ".join(f"{k}: {v[1]}" for k, v in worst.items()))


def main(argv: list[str]) -> None:
    if argv[0] == "--conformance":
        np.savez(argv[2], **conformance_probe(argv[1]))  # type: ignore[arg-type]
        return
    if argv[0] == "--precision":  # --precision OUT_DIR [VARIANT ...]
        for variant in argv[2:] or VARIANTS:
            run_precision_variant(Path(argv[1]), variant)
        precision_report(Path(argv[1]))
        return
    out_dir = Path(argv[0])
    for variant in argv[1:] or VARIANTS:
        run_variant(out_dir, variant)
    report(out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
