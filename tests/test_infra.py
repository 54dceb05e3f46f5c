"""The deployment recipes under infra/ (container images, KubeRay manifests, the Ray cluster launcher
config, the MLflow tracking server): every file parses, every manifest has the fields its consumer
reads (each assertion names the consumer), and every harness command line in them plans locally
with ``--dry-run`` appended.

Nothing here builds an image, applies a manifest or starts a cluster (no container daemon, no
Kubernetes, no cloud from this machine). Where the consumer's own code is installed it does the
checking: Ray's cluster-config preparation and schema for the launcher YAML, Ray's KubeRay
autoscaler for the RayCluster specs, Ray's TPU type and topology tables, MLflow's registered apps.
"""

from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO

INFRA = REPO / "infra"
IMAGES = INFRA / "images"
KUBERAY = INFRA / "kuberay"
LAUNCHER = INFRA / "ray" / "cluster-gcp.yaml"
MLFLOW = INFRA / "mlflow"
COMPOSE = MLFLOW / "compose.yaml"

IMAGE_KINDS = ("cpu", "cuda", "tpu")
# The frameworks each image serves (issue #10: CPU all four, CUDA torch/jax/tensorflow, TPU jax/tensorflow).
IMAGE_FRAMEWORKS = {
    "cpu": {"torch", "tensorflow", "jax", "mxnet"},
    "cuda": {"torch", "jax", "tensorflow"},
    "tpu": {"jax", "tensorflow"},
}
# The one version that cannot follow pyproject.toml: TensorFlow's TPU build (tensorflow-tpu) has no
# 2.21.0 release; tpu.Dockerfile says so, and TPU cells record the version they ran.
PIN_EXCEPTIONS = {("tpu", "TF_TPU_VERSION"): "2.20.0"}

DOCKERFILE_KEYWORDS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


# --- reading ------------------------------------------------------------------------------------


def infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one_doc(path: Path) -> dict[str, Any]:
    (doc,) = yaml_docs(path)
    assert isinstance(doc, dict), f"{path.name}: a mapping at the top"
    return doc


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction: continuation lines joined, comments dropped (also
    those inside a continuation, as Docker drops them)."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{path.name}: the last instruction ends in a line continuation"
    return instructions


def key_values(args: str) -> dict[str, str]:
    """``ENV``/``ARG``/``LABEL`` arguments in their ``key=value`` form."""
    pairs = (item.split("=", 1) for item in shlex.split(args))
    return {k: v for k, v in (p if len(p) == 2 else (p[0], "") for p in pairs)}


def image(kind: str) -> dict[str, Any]:
    """The facts of one image's Dockerfile the tests below look at."""
    path = IMAGES / f"{kind}.Dockerfile"
    steps = dockerfile(path)
    env: dict[str, str] = {}
    args: dict[str, str] = {}
    for keyword, rest in steps:
        if keyword == "ENV":
            env.update(key_values(rest))
        elif keyword == "ARG":
            args.update(key_values(rest))
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    return {"path": path, "steps": steps, "env": env, "args": args, "runs": runs}


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pinned(extra: str, name: str) -> str:
    """The exact version pyproject.toml pins ``name`` to in ``extra``."""
    for line in pyproject()["project"]["optional-dependencies"][extra]:
        req = Requirement(line)
        if req.name == name:
            (spec,) = req.specifier
            assert spec.operator == "==", f"pyproject pins {name} with =="
            return spec.version
    raise AssertionError(f"pyproject.toml's extra {extra!r} has no {name}")


def pins() -> dict[str, str]:
    """ARG name in the Dockerfiles -> the version pyproject.toml pins."""
    return {
        "TORCH_VERSION": pinned("torch", "torch"),
        "JAX_VERSION": pinned("jax", "jax"),
        "TF_VERSION": pinned("tensorflow", "tensorflow-cpu"),
    }


def ray_version() -> str:
    return pinned("driver", "ray")


# --- every file parses --------------------------------------------------------------------------


def parse_any(path: Path) -> None:
    name = path.name
    if name.endswith((".yaml", ".yml")):
        assert yaml_docs(path), f"{name}: no YAML document"
    elif name.endswith(".Dockerfile"):
        steps = dockerfile(path)
        # Docker: FROM starts a build stage; only ARG may come before it (none of ours do).
        assert steps and steps[0][0] == "FROM", f"{name}: FROM is the first instruction"
        unknown = {k for k, _ in steps} - DOCKERFILE_KEYWORDS
        assert not unknown, f"{name}: not Dockerfile instructions: {unknown}"
        for keyword, rest in steps:
            if keyword in ("CMD", "ENTRYPOINT") and rest.startswith("["):
                assert all(isinstance(t, str) for t in json.loads(rest)), f"{name}: {keyword} exec form"
    elif name.endswith(".ini"):
        parser = configparser.ConfigParser()
        parser.read_string(path.read_text(), source=name)
        assert parser.sections(), f"{name}: no section"
    elif name.endswith(".sh"):
        checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)  # bash's own parse
        assert checked.returncode == 0, f"{name}: {checked.stderr}"
    elif name.endswith((".txt", ".sql", ".dockerignore", ".gitignore", ".example", ".env")):
        assert path.read_text(encoding="utf-8").strip(), f"{name}: empty"
    else:
        raise AssertionError(f"{path}: no parser here for this kind of file; add one to parse_any")


@pytest.mark.parametrize("path", infra_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_file_parses(path: Path) -> None:
    parse_any(path)


def test_the_recipes_of_issue_10_are_there() -> None:
    for kind in IMAGE_KINDS:
        assert (IMAGES / f"{kind}.Dockerfile").is_file()
    kinds = {one_doc(p)["kind"] for p in KUBERAY.glob("*.yaml")}
    assert {"RayCluster", "RayJob"} <= kinds
    assert LAUNCHER.is_file() and COMPOSE.is_file()


# --- container images ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", IMAGE_KINDS, ids=lambda k: f"{k}.Dockerfile")  # not "tpu": a conftest marker
def test_image_installs_the_project_for_ray(kind: str) -> None:
    img = image(kind)
    name = img["path"].name
    base = img["steps"][0][1]
    python = pyproject()["project"]["requires-python"]
    # Ray: every node of a cluster runs the same Python minor version as the driver (3.11 here).
    assert re.match(r"python:3\.11[.-]", base), f"{name}: Python 3.11 ({python}) base image, got {base}"
    # Ray's raylet starts task workers at the niceness in RAY_worker_niceness (15 without it); trials inherit it.
    assert img["env"].get("RAY_worker_niceness") == "0", f"{name}: ENV RAY_worker_niceness=0"
    # docker build: every COPY source must exist in the context (the repository root).
    for keyword, rest in img["steps"]:
        if keyword == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY {src}: not in the build context"
    copied = {src for k, rest in img["steps"] if k == "COPY" for src in shlex.split(rest)[:-1]}
    # pip install of the project: its metadata (pyproject.toml, README.md as the readme) and packages.
    assert {"pyproject.toml", "README.md", "harness", "adapters", "workloads"} <= copied, f"{name}: copies"
    # Ray workers unpickle the harness's tasks (harness.schedule) and the CLI is the `harness`
    # script: the driver extra (Ray, MLflow) installed in the image's Python, from the repository.
    system = [r for r in img["runs"] if re.search(r"(?<![/\w])pip install (.* )?-e \"\.\[[^\]]*driver", r)]
    assert system, f"{name}: pip install -e '.[driver,...]' of the repository"
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile: the local venvs stay out of the context.
    ignore = (IMAGES / f"{name}.dockerignore").read_text().split()
    assert {".venv", ".venvs", ".git"} <= set(ignore), f"{name}.dockerignore"


@pytest.mark.parametrize("kind", IMAGE_KINDS, ids=lambda k: f"{k}.Dockerfile")  # not "tpu": a conftest marker
def test_image_has_each_framework_where_the_harness_looks(kind: str) -> None:
    """harness/envs.py interpreter(): HARNESS_PYTHON_<FW>, else .venvs/<fw> beside the project,
    else the harness's own Python."""
    img = image(kind)
    name = img["path"].name
    runs = [expand(r, img["args"]) for r in img["runs"]]
    system_extras = {
        extra
        for r in runs
        for m in re.finditer(r"(?<![/\w])pip install (?:.* )?-e \"\.\[([^\]]*)\]\"", r)
        for extra in m[1].split(",")
    }
    for fw in IMAGE_FRAMEWORKS[kind]:
        python = img["env"].get(f"HARNESS_PYTHON_{fw.upper()}")
        if python is None:
            assert fw in system_extras, f"{name}: {fw}: neither HARNESS_PYTHON_{fw.upper()} nor in the extras"
            continue
        venv = python.removesuffix("/bin/python")
        assert python.endswith("/bin/python") and venv.endswith(f"/.venvs/{fw}"), f"{name}: {python}"
        assert any(f"python -m venv {venv}" in r for r in runs), f"{name}: no RUN creates {venv}"
        # The worker side of the project in that venv (python -m harness.worker runs there).
        installs = [r for r in runs if f"{venv}/bin/pip install" in r and re.search(r" -e (\.|\"\.\[)", r)]
        assert installs, f"{name}: the project is not installed in {venv}"
    for fw in {"torch", "tensorflow", "jax", "mxnet"} - IMAGE_FRAMEWORKS[kind]:
        assert f"HARNESS_PYTHON_{fw.upper()}" not in img["env"], f"{name}: {fw} is not in this image"


@pytest.mark.parametrize("kind", IMAGE_KINDS, ids=lambda k: f"{k}.Dockerfile")  # not "tpu": a conftest marker
def test_image_versions_follow_pyproject(kind: str) -> None:
    img = image(kind)
    name = img["path"].name
    wanted = pins()
    for arg, default in img["args"].items():
        if (kind, arg) in PIN_EXCEPTIONS:
            assert default == PIN_EXCEPTIONS[kind, arg], f"{name}: ARG {arg}"
        elif arg in wanted:
            assert default == wanted[arg], f"{name}: ARG {arg}={default}, pyproject.toml pins {wanted[arg]}"
    # Each pinned framework requirement in a RUN (after ARG expansion) has pyproject's version.
    by_name = {"torch": wanted["TORCH_VERSION"], "jax": wanted["JAX_VERSION"], "tensorflow": wanted["TF_VERSION"]}
    for run in (expand(r, img["args"]) for r in img["runs"]):
        for m in re.finditer(r"\"(torch|jax|tensorflow)(\[[^\]]*\])?==([^\"]+)\"", run):
            assert m[3] == by_name[m[1]], f"{name}: {m[0]}: pyproject.toml pins {by_name[m[1]]}"


def test_cpu_image_builds_the_mxnet_venv_as_make_setup_does() -> None:
    img = image("cpu")
    python = img["env"]["HARNESS_PYTHON_MXNET"]
    venv = python.removesuffix("/bin/python")
    runs = " ".join(img["runs"])
    # Makefile's $(MXNET_STAMP): the requirements file, then the project without its dependencies.
    assert f"{venv}/bin/pip install -r infra/requirements-mxnet.txt" in runs
    assert f"{venv}/bin/pip install --no-deps -e ." in runs
    reqs = (INFRA / "requirements-mxnet.txt").read_text()
    assert "mxnet==1.9.1" in reqs and "numpy==1.23.5" in reqs, "MXNet 1.9.1 needs numpy <= 1.23.5"


# --- KubeRay ------------------------------------------------------------------------------------


def kuberay_docs(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, document)`` of every KubeRay manifest of ``kind``."""
    return [(p.name, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in yaml_docs(p) if d.get("kind") == kind]


def kuberay(kind: str) -> dict[str, Any]:
    """The one manifest of ``kind`` (the RayCluster)."""
    ((_name, doc),) = kuberay_docs(kind)
    return doc


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Each Ray cluster the manifests make: the RayCluster's spec, each RayJob's rayClusterSpec."""
    for name, doc in kuberay_docs("RayCluster"):
        yield name, doc["spec"]
    for name, doc in kuberay_docs("RayJob"):
        yield name, doc["spec"]["rayClusterSpec"]


CLUSTERS = [name for name, _spec in cluster_specs()]  # test ids: the manifests' file names
RAYJOBS = [name for name, _doc in kuberay_docs("RayJob")]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    # KubeRay: the Ray container is the first container of the pod template.
    container = group["template"]["spec"]["containers"][0]
    assert isinstance(container, dict)
    return container


def image_kind(container: dict[str, Any]) -> str:
    m = re.search(r"dl-bench-harness-(cpu|cuda|tpu):", container["image"])
    assert m, f"{container['image']}: not one of the images of infra/images"
    return m[1]


def cores(quantity: str) -> int:
    assert quantity.isdigit(), f"cpu {quantity}: whole cores (static CPU manager, exclusive cores)"
    return int(quantity)


def limits(group: dict[str, Any]) -> dict[str, Any]:
    found = ray_container(group)["resources"]["limits"]
    assert isinstance(found, dict)
    return found


def tpu_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker groups whose pods ask GKE for TPU chips (google.com/tpu)."""
    return [g for g in spec["workerGroupSpecs"] if "google.com/tpu" in limits(g)]


def slice_type(group: dict[str, Any]) -> str:
    """The TPU type of a group's slice (``v4-16``) from its GKE node selectors, as Ray's KubeRay autoscaler names it."""
    from ray.autoscaler._private.kuberay.utils import tpu_node_selectors_to_type

    selectors = group["template"]["spec"]["nodeSelector"]
    kind = tpu_node_selectors_to_type(
        selectors["cloud.google.com/gke-tpu-topology"], selectors["cloud.google.com/gke-tpu-accelerator"]
    )
    assert kind, f"{group['groupName']}: {selectors}: no TPU type"
    return kind


@pytest.mark.parametrize("name", sorted(p.name for p in KUBERAY.glob("*.yaml")))
def test_kuberay_manifest_header(name: str) -> None:
    doc = one_doc(KUBERAY / name)
    # The KubeRay operator's CRDs: apiVersion ray.io/v1 (v1alpha1 is gone), metadata.name set.
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    assert doc["metadata"]["name"]
    # Each manifest makes its own objects: kubectl apply of one must not replace another's.
    names = [d["metadata"]["name"] for _n, d in kuberay_docs(doc["kind"])]
    assert len(names) == len(set(names)), f"{doc['kind']} names: {names}"


@pytest.mark.parametrize("which", CLUSTERS)
def test_kuberay_cluster_spec(which: str) -> None:
    spec = dict(cluster_specs())[which]
    # rayVersion: KubeRay picks the submitter's `ray job submit` syntax from it; the images' Ray.
    assert spec["rayVersion"] == ray_version()
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    # ray.io/v1 HeadGroupSpec: `template` and `rayStartParams` are required (no omitempty).
    assert {"template", "rayStartParams"} <= head.keys()
    # The head runs the driver and Ray's GCS only: num-cpus "0" keeps every trial off it.
    assert head["rayStartParams"].get("num-cpus") == "0"
    # ...and it runs the driver, which needs the harness and probes each framework: the CPU image (all four).
    assert image_kind(ray_container(head)) == "cpu"
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)), "KubeRay: groupName distinguishes worker groups"
    for group in [head, *groups]:
        where = group.get("groupName", "head")
        # rayStartParams is map[string]string in the CRD: a YAML number is rejected by the API server.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{where}: rayStartParams strings"
        container = ray_container(group)
        assert container.get("name") and container.get("image"), f"{where}: Kubernetes: container name and image"
        # Ray's raylet reads RAY_worker_niceness from its environment (the images set it too).
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("RAY_worker_niceness") == "0", f"{where}: env RAY_worker_niceness=0"
        res = container["resources"]
        # Kubernetes: requests equal to limits (Guaranteed QoS; required anyway for extended resources).
        assert res["requests"] == res["limits"], f"{where}: requests == limits"
        cores(res["limits"]["cpu"])
    for group in groups:
        where = group["groupName"]
        # ray.io/v1 WorkerGroupSpec: groupName, minReplicas, maxReplicas, rayStartParams, template required.
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= group.keys(), where
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], f"{where}: replicas"
        # numOfHosts (KubeRay v1.1+): pods per replica, an integer of at least 1 (1 when absent).
        assert isinstance(group.get("numOfHosts", 1), int) and group.get("numOfHosts", 1) >= 1, where
        limit = cores(limits(group)["cpu"])
        # One core per node stays with Ray's daemons (the default --reserve-cores 1 below 32 cores).
        assert group["rayStartParams"].get("num-cpus") == str(limit - 1), f"{where}: num-cpus = cpu limit - 1"


@pytest.mark.parametrize("which", CLUSTERS)
def test_kuberay_gpu_and_tpu_groups(which: str) -> None:
    from ray._private.accelerators.tpu import VALID_TPU_TOPOLOGY, TPUAcceleratorManager, get_num_chips_from_topology
    from ray.autoscaler._private.kuberay.utils import gke_tpu_accelerator_to_generation

    spec = dict(cluster_specs())[which]
    gpus = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in limits(g)]
    assert gpus, f"{which}: every cluster here has GPU workers"
    for gpu in gpus:
        # The NVIDIA device plugin serves nvidia.com/gpu; KubeRay passes the count to ray start --num-gpus.
        assert int(limits(gpu)["nvidia.com/gpu"]) >= 1, which
        assert image_kind(ray_container(gpu)) == "cuda", which
    for tpu in tpu_groups(spec):
        where = f"{which}: {tpu['groupName']}"
        selectors = tpu["template"]["spec"]["nodeSelector"]
        accelerator = selectors["cloud.google.com/gke-tpu-accelerator"]
        topology = selectors["cloud.google.com/gke-tpu-topology"]
        # GKE: the accelerator and topology node selectors pick the TPU slice's node pool.
        generation = gke_tpu_accelerator_to_generation.get(accelerator)
        assert generation, f"{where}: {accelerator}: not a GKE TPU accelerator Ray knows"
        assert topology in VALID_TPU_TOPOLOGY[generation], f"{where}: {topology}: not a {generation} topology"
        # KubeRay: one pod per TPU VM host of a slice (numOfHosts), each asking for its host's chips
        # (google.com/tpu, served by GKE): the hosts together hold the topology's chips. The KubeRay
        # TPU webhook rejects the RayCluster otherwise (numOfHosts = max(chips / google.com/tpu, 1)).
        hosts = tpu.get("numOfHosts", 1)
        chips = int(limits(tpu)["google.com/tpu"])
        assert hosts >= 1 and chips * hosts == get_num_chips_from_topology(topology), f"{where}: chips per host x hosts"
        assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(slice_type(tpu)), where
        assert image_kind(ray_container(tpu)) == "tpu", where
        # The KubeRay TPU webhook (TPU_WORKER_ID, TPU_NAME, TPU_WORKER_HOSTNAMES) mutates only pods
        # labelled app.kubernetes.io/name: kuberay, which KubeRay sets unless the template overrides it.
        labels = tpu["template"].get("metadata", {}).get("labels", {})
        assert labels.get("app.kubernetes.io/name", "kuberay") == "kuberay", f"{where}: webhook's pod label"


def test_kuberay_v4_16_slice_group() -> None:
    """The RayCluster's multi-host group: one TPU v4-16 slice, the harness's --tpu-slice v4-16."""
    from harness.gang import tpu_hosts

    spec = kuberay("RayCluster")["spec"]
    tpus = tpu_groups(spec)
    # Single-host trials keep their v5e group; the slice is a group of its own.
    assert any(g.get("numOfHosts", 1) == 1 for g in tpus), "the single-host TPU group"
    multi = [g for g in tpus if g.get("numOfHosts", 1) > 1]
    assert len(multi) == 1, f"one multi-host TPU group, got {[g['groupName'] for g in multi]}"
    (group,) = multi
    selectors = group["template"]["spec"]["nodeSelector"]
    # GKE: a TPU v4 slice of 2x2x2 chips is a multi-host node pool (ct4p-hightpu-4t hosts) with these labels.
    assert selectors["cloud.google.com/gke-tpu-accelerator"] == "tpu-v4-podslice"
    assert selectors["cloud.google.com/gke-tpu-topology"] == "2x2x2"
    # Ray (KubeRay autoscaler; TPU_ACCELERATOR_TYPE on the hosts): that slice is a v4-16, and worker 0
    # holds TPU-v4-16-head, where harness/gang.py find_slice() looks for a slice of --tpu-slice v4-16.
    assert slice_type(group) == "v4-16"
    hosts, chips = tpu_hosts("v4-16")
    # harness/gang.py placement(): one worker per host of the slice (2), each bundle holding its host's
    # chips (4): the group's pods per slice are those hosts, each asking GKE for those chips.
    assert (group["numOfHosts"], int(limits(group)["google.com/tpu"])) == (hosts, chips) == (2, 4)
    # KubeRay: replicas count slices (numOfHosts pods each); GKE provides one slice per node pool.
    assert group["replicas"] >= 1 and group["maxReplicas"] >= group["replicas"]
    assert int(group["rayStartParams"]["num-cpus"]) >= 1


@pytest.mark.parametrize("which", CLUSTERS)
def test_kuberay_specs_as_rays_autoscaler_reads_them(which: str) -> None:
    """Ray's KubeRay autoscaler turns a RayCluster spec into node types (and validates the result
    against Ray's cluster-config schema): what each group offers the harness's trials."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec = dict(cluster_specs())[which]
    cr = {"metadata": {"name": "harness", "namespace": "default"}, "spec": copy.deepcopy(spec)}
    types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0, which
    for group in spec["workerGroupSpecs"]:
        where = f"{which}: {group['groupName']}"
        node = types[group["groupName"]]
        if "nvidia.com/gpu" in limits(group):
            assert node["resources"]["GPU"] >= 1, where
        if "google.com/tpu" in limits(group):
            # Each pod offers Ray its host's chips; the type's TPU-<type>-head marks a slice's worker 0.
            assert node["resources"]["TPU"] == int(limits(group)["google.com/tpu"]), where
            assert node["resources"].get(f"TPU-{slice_type(group)}-head") == 1, where
        # A multi-host replica is numOfHosts Ray nodes, scaled as one (Ray 2.32+, KubeRay 1.1+).
        hosts = group.get("numOfHosts", 1)
        assert (node["min_workers"], node["max_workers"]) == (
            group["minReplicas"] * hosts,
            group["maxReplicas"] * hosts,
        ), where


def options(args: list[str]) -> dict[str, str]:
    """``--option value`` pairs (a flag with no value maps to "")."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else "--"
            found[name] = value or ("" if nxt.startswith("--") else nxt)
    return found


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_runs_one_batch_and_cleans_up(name: str) -> None:
    spec = dict(kuberay_docs("RayJob"))[name]["spec"]
    # KubeRay deletes the RayCluster when the job ends, ttlSecondsAfterFinished later (only with shutdown on).
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    # K8sJobMode/HTTPMode submit the entrypoint; InteractiveMode would wait for someone to.
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    # rayClusterSpec: KubeRay creates the cluster (clusterSelector would reuse one, never deleting it).
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec
    # KubeRay's submitter runs `... ray job submit ... -- ENTRYPOINT ; fi` in a shell: a `;`, `&&` or
    # `|` in the entrypoint would end the job's command there and run the rest in the submitter pod.
    assert not re.search(r"[;&|`$]", spec["entrypoint"]), "one command, no shell operators"
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["harness", "run"], "the entrypoint is a harness run line"
    opts = options(args[3:])  # after `harness run SUITE`
    # Without --address (or RAY_ADDRESS) the harness starts an embedded Ray on the head pod alone.
    assert opts.get("--address") == "auto"
    head_env = {e["name"] for e in ray_container(spec["rayClusterSpec"]["headGroupSpec"])["env"]}
    # MLflow: an explicit tracking server (the default ./mlflow.db would vanish with the head pod),
    # and the basic-auth credentials the recipe's server asks for (MLflow's client reads them).
    assert "--tracking-uri" in opts or "MLFLOW_TRACKING_URI" in head_env
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= head_env
    # The harness refuses a batch whose trials no node (set) can hold (harness/schedule.py
    # unschedulable(), before the first trial) rather than wait for a scale-up: every worker group
    # is fixed, its pods there from the start (whether they suffice: test_harness_lines_fit_their_cluster).
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] >= 1, group["groupName"]


def test_rayjob_scaling_runs_data_parallel_cells() -> None:
    """rayjob-scaling.yaml: W = 1 and 2 of each framework, the 2-worker cells across two GPU pods."""
    spec = dict(kuberay_docs("RayJob"))["rayjob-scaling.yaml"]["spec"]
    args = shlex.split(spec["entrypoint"])
    opts = options(args[3:])
    # harness/cells.py: scaling_efficiency of a W-worker cell needs the batch's 1-worker cell of the same spec.
    workers = [int(w) for w in opts["--workers"].split(",")]
    assert 1 in workers and max(workers) > 1
    # Multi-worker cells measure training throughput on the synthetic batch (else planned unsupported).
    assert opts["--mode"] == "train" and opts["--dataset"] == "synthetic"
    assert {"torch", "jax", "tensorflow"} <= set(opts["--framework"].split(","))
    # The dry run plans against this machine's cores: --threads and --reserve-cores are explicit.
    assert "--threads" in opts and opts.get("--reserve-cores") == "1"
    gpus = [g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if "nvidia.com/gpu" in limits(g)]
    # One GPU per pod: W workers of one GPU each need W GPU pods (harness/gang.py: SPREAD across nodes).
    pods = sum(g["replicas"] * g.get("numOfHosts", 1) * int(limits(g)["nvidia.com/gpu"]) for g in gpus)
    assert pods >= max(workers), f"{pods} GPUs for {max(workers)} workers"


# --- Ray cluster launcher -----------------------------------------------------------------------


def test_launcher_config_as_ray_up_reads_it() -> None:
    from ray._private.accelerators.tpu import TPUAcceleratorManager
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = one_doc(LAUNCHER)
    # `ray up`: defaults merged in, node types filled out, then Ray's JSON schema of the cluster config.
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    provider = config["provider"]
    # Ray's GCP node provider: type gcp, a region and a zone in it, project_id (null until set).
    assert provider["type"] == "gcp"
    assert provider["availability_zone"].startswith(provider["region"] + "-")
    assert "project_id" in provider
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    head = types[config["head_node_type"]]
    # A head with CPU 0 keeps every trial off the driver's node.
    assert head["resources"] == {"CPU": 0}
    docker = config["docker"]
    images = {name: t.get("docker", {}).get("worker_image", docker["image"]) for name, t in types.items()}
    assert image_kind({"image": docker.get("head_image", docker["image"])}) == "cpu"
    gpus = [n for n, t in types.items() if t["resources"].get("GPU")]
    tpus = [n for n, t in types.items() if t["resources"].get("TPU")]
    cpus = [n for n, t in types.items() if n not in gpus + tpus and n != config["head_node_type"]]
    assert gpus and tpus and cpus, "CPU, GPU and TPU node types"
    for name in gpus:
        node = types[name]["node_config"]
        # GCE: a VM with a GPU attaches it as guestAccelerators and cannot live-migrate.
        assert node["guestAccelerators"][0]["acceleratorCount"] == types[name]["resources"]["GPU"]
        assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"
        assert image_kind({"image": images[name]}) == "cuda"
    for name in tpus:
        node = types[name]["node_config"]
        # Ray's GCP provider (gcp/config.py get_node_type): no machineType and an acceleratorType
        # (v<generation>-<cores>) make a TPU VM, created with the TPU API's runtimeVersion.
        assert "machineType" not in node and node["runtimeVersion"]
        assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(node["acceleratorType"])
        assert image_kind({"image": images[name]}) == "tpu"
    for name in cpus:
        assert "machineType" in types[name]["node_config"], "Ray's GCP provider: a Compute VM has a machineType"
        assert image_kind({"image": images[name]}) == "cpu"
    for name, t in types.items():
        m = re.fullmatch(r"\w+-standard-(\d+)", t["node_config"].get("machineType", ""))
        if m and name != config["head_node_type"]:
            # One vCPU per node stays with Ray's daemons (the default --reserve-cores 1).
            assert t["resources"]["CPU"] == int(m[1]) - 1, f"{name}: CPU = vCPUs - 1"
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    # Ray's raylet reads RAY_worker_niceness (the images set it, the start commands say it again).
    assert start.count("RAY_worker_niceness=0") == 2
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])


def test_launcher_multi_host_tpu_slice() -> None:
    """A multi-host TPU node type: one TPU pod, one Ray node per host, a slice the harness can find."""
    from ray._private.accelerators.tpu import get_num_tpu_visible_chips_per_host, get_total_chips_from_accelerator_type
    from ray.autoscaler._private.util import prepare_config

    from harness.gang import tpu_hosts

    config = prepare_config(copy.deepcopy(one_doc(LAUNCHER)))
    types = config["available_node_types"]
    pods = {
        name: t
        for name, t in types.items()
        if "acceleratorType" in t["node_config"]
        and get_total_chips_from_accelerator_type(t["node_config"]["acceleratorType"])
        > get_num_tpu_visible_chips_per_host(t["node_config"]["acceleratorType"])
    }
    # Ray's GCP provider (gcp/config.py _is_single_host_tpu): more chips than one host sees is a TPU pod.
    assert pods, "a multi-host TPU node type"
    for name, t in pods.items():
        kind = t["node_config"]["acceleratorType"]
        hosts, chips = tpu_hosts(kind)
        # Each host runs `ray start` with the type's resources (gcp/tpu_command_runner.py): per host,
        # the chips one worker's bundle asks for in harness/gang.py placement() (a v5litepod-16: 4 x 4).
        assert hosts > 1 and t["resources"]["TPU"] == chips, f"{name}: {kind}: {hosts} hosts x {chips} chips"
        # Ray warns it cannot autoscale TPU pods (every host runs one program): a fixed count, started with `ray up`.
        assert t["min_workers"] == t["max_workers"] >= 1, f"{name}: min_workers = max_workers"
    # `max_workers` bounds the workers of all types together (Ray: each TPU pod counts as one).
    assert sum(t["min_workers"] for n, t in types.items() if n != config["head_node_type"]) <= config["max_workers"]


# --- MLflow tracking server ---------------------------------------------------------------------


def compose_value(text: str) -> str:
    """docker compose's interpolation: ``${VAR:-default}`` gives the default, the rest a placeholder."""
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+(:?\?[^}]*)?\}", "PLACEHOLDER", text)


def mlflow_service() -> dict[str, Any]:
    service = one_doc(COMPOSE)["services"]["mlflow"]
    assert isinstance(service, dict)
    return service


def mlflow_options() -> dict[str, str]:
    command = [compose_value(str(a)) for a in mlflow_service()["command"]]
    assert command[:2] == ["mlflow", "server"]
    return options(command[2:])


def test_compose_services() -> None:
    compose = one_doc(COMPOSE)
    services = compose["services"]
    assert {"mlflow", "postgres"} <= services.keys()
    postgres = services["postgres"]
    # The postgres image creates POSTGRES_USER and POSTGRES_DB on an empty volume; a password is required.
    assert {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"} <= postgres["environment"].keys()
    assert any(v.split(":")[1] == "/var/lib/postgresql/data" for v in postgres["volumes"]), "data on a volume"
    assert "healthcheck" in postgres
    mlflow = services["mlflow"]
    # docker compose: the server starts once PostgreSQL answers (its healthcheck).
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (MLFLOW / mlflow["build"]["dockerfile"]).is_file()
    assert any(str(p).endswith(":5000") for p in mlflow["ports"])
    # Named volumes used by a service are declared at the top level (docker compose refuses otherwise).
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in compose["volumes"], f"volume {source} is not declared"
            else:
                assert (MLFLOW / source).is_file(), f"{source}: bind-mounted file missing"


def test_mlflow_server_backend_artifacts_and_auth() -> None:
    opts = mlflow_options()
    service = mlflow_service()
    env = service["environment"]
    postgres = one_doc(COMPOSE)["services"]["postgres"]["environment"]
    # mlflow server --backend-store-uri: the PostgreSQL service, its POSTGRES_DB, as its POSTGRES_USER.
    uri = opts["--backend-store-uri"]
    assert uri == f"postgresql://{postgres['POSTGRES_USER']}@postgres:5432/{postgres['POSTGRES_DB']}"
    # No password in a URI: libpq reads PGPASSWORD when the URI has none.
    assert "PGPASSWORD" in env
    # Artifacts proxied by the server (clients need no storage credentials) to a volume it mounts.
    assert "--serve-artifacts" in opts
    destination = opts["--artifacts-destination"]
    assert destination and any(v.split(":")[1] == destination for v in service["volumes"])
    assert opts["--host"] == "0.0.0.0"
    # Authentication: MLflow's basic-auth app (mlflow server --app-name looks it up among the
    # `mlflow.app` entry points), configured by the file at MLFLOW_AUTH_CONFIG_PATH.
    assert opts["--app-name"] == "basic-auth"
    assert "basic-auth" in {e.name for e in entry_points(group="mlflow.app")}
    config_path = env["MLFLOW_AUTH_CONFIG_PATH"]
    (mounted,) = (v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == config_path)
    auth = configparser.ConfigParser()
    auth.read(MLFLOW / mounted)
    # mlflow/server/auth/config.py read_auth_config(): [mlflow] default_permission and database_uri
    # are read unconditionally; the admin's password comes from MLFLOW_AUTH_ADMIN_PASSWORD, not the file.
    section = auth["mlflow"]
    assert section["default_permission"] in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
    assert section["admin_username"] and "admin_password" not in section
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in env
    # Every auth-app worker signs sessions with the same key.
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in env
    # The user store: a PostgreSQL database the init script creates, with the same passwordless URI.
    auth_db = section["database_uri"]
    assert auth_db.startswith(f"postgresql://{postgres['POSTGRES_USER']}@postgres:5432/")
    name = auth_db.rsplit("/", 1)[1]
    assert f"CREATE DATABASE {name} " in (MLFLOW / "postgres-init.sql").read_text()
    init = [v for v in one_doc(COMPOSE)["services"]["postgres"]["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert init and init[0].startswith("./postgres-init.sql:")


def test_mlflow_image_can_serve_that() -> None:
    steps = dockerfile(MLFLOW / "mlflow.Dockerfile")
    args = {k: v for kw, rest in steps if kw == "ARG" for k, v in key_values(rest).items()}
    run = " ".join(expand(rest, args) for kw, rest in steps if kw == "RUN")
    m = re.search(r"\"mlflow\[([^\]]*)\]==([^\"]+)\"", run)
    # The basic-auth app imports Flask-WTF (mlflow's `auth` extra); PostgreSQL needs its driver.
    assert m and "auth" in m[1].split(","), "mlflow[auth]"
    assert "psycopg2" in run
    # The server's MLflow within the project's pin (pyproject.toml, extra driver).
    driver = pyproject()["project"]["optional-dependencies"]["driver"]
    (spec,) = (Requirement(r) for r in driver if Requirement(r).name == "mlflow")
    assert spec.specifier.contains(m[2]), f"mlflow {m[2]} outside {spec.specifier}"


def test_compose_variables_are_documented() -> None:
    """docker compose refuses to start when a ``${VAR:?...}`` variable is unset: env.example lists each."""
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):?\?", text))
    optional = set(re.findall(r"\$\{(\w+):?-", text))
    documented = set(re.findall(r"^(\w+)=", (MLFLOW / "env.example").read_text(), re.M))
    assert required and required <= documented
    assert optional - {"MLFLOW_PORT"} <= documented


# --- harness command lines ----------------------------------------------------------------------

SUBCOMMAND = re.compile(r"(?<![\w/.-])harness\s+(run|list|doctor|compare|calibrate|sync)\b")
# A command ends where its shell context does: a quote, a separator, a comment.
END = re.compile(r"[\"'`;|&)]| #")


def commands_in(text: str) -> Iterator[str]:
    for m in SUBCOMMAND.finditer(text):
        rest = text[m.start() :]
        cut = END.search(rest)
        yield (rest[: cut.start()] if cut else rest).strip().rstrip("\\").strip()


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def harness_lines() -> dict[tuple[str, ...], str]:
    """Every harness command line under infra/ (YAML values, whole-line comments, Dockerfile
    instructions with exec-form CMDs, any line of other files) -> where it was found."""
    found: dict[tuple[str, ...], str] = {}
    for path in infra_files():
        texts: list[str] = []
        lines = path.read_text().splitlines()
        if path.name.endswith((".yaml", ".yml")):
            # Comments line by line; values parsed, so folded multi-line scalars come whole.
            texts += [line for line in lines if line.lstrip().startswith("#")]
            texts += [s for doc in yaml_docs(path) for s in strings(doc)]
        elif path.name.endswith(".Dockerfile"):
            texts += [line for line in lines if line.lstrip().startswith("#")]
            for _keyword, rest in dockerfile(path):
                texts.append(shlex.join(json.loads(rest)) if rest.startswith("[") else rest)
        else:
            texts += lines
        for text in texts:
            for command in commands_in(text):
                found.setdefault(tuple(shlex.split(command)), str(path.relative_to(REPO)))
    return found


# Runs `harness` as its console script does (pyproject: harness = "harness.cli:entry", which exits
# with main()'s code), once per line, each in its own empty folder, all in one interpreter: importing
# the CLI, and asking each framework's interpreter for its version (a subprocess each), cost more than
# planning a line, so both happen once on this 2-core machine.
RUNNER = """
import contextlib, functools, io, json, os, sys
from harness import envs
from harness.cli import main
envs.probe = functools.cache(envs.probe)  # each framework's interpreter asked once for all the lines
results = []
for cwd, argv in json.load(sys.stdin):
    os.chdir(cwd)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: unknown option, bad value
            code = e.code if isinstance(e.code, int) else 2
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], tuple[str, Path, dict[str, Any]]]:
    """Each harness line with --dry-run appended, as written, in an empty folder of its own.

    --address and --tracking-uri stay: `harness run --dry-run` expands and prints the plan and
    returns before it opens the journal, the MLflow store or Ray (harness/cli.py cmd_run), so their
    placeholder hosts are never contacted, and a line that did reach for them would fail here."""
    lines = harness_lines()
    jobs = [(str(tmp_path_factory.mktemp("dry-run")), [*tokens[1:], "--dry-run"]) for tokens in lines]
    env = {**os.environ, "HARNESS_RUNS_DIR": "harness-runs"}  # relative: inside each line's folder
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(jobs), env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {t: (lines[t], Path(cwd), r) for t, (cwd, _), r in zip(lines, jobs, results, strict=True)}


def test_harness_lines_are_found() -> None:
    lines = harness_lines()
    where = set(lines.values())
    # The entrypoint of each RayJob, each image's CMD, the usage lines of the cluster recipes.
    recipes = [f"infra/kuberay/{p.name}" for p in sorted(KUBERAY.glob("*.yaml"))] + [str(LAUNCHER.relative_to(REPO))]
    for path in recipes:
        assert path in where, f"no harness line found in {path}"
    for kind in IMAGE_KINDS:
        assert f"infra/images/{kind}.Dockerfile" in where
    for name, doc in kuberay_docs("RayJob"):
        assert tuple(shlex.split(doc["spec"]["entrypoint"])) in lines, f"{name}: entrypoint"
    for tokens in lines:
        # Only `harness run` has --dry-run: the recipes hold no other subcommand.
        assert tokens[:2] == ("harness", "run"), f"{lines[tokens]}: {shlex.join(tokens)}"
        assert "--dry-run" not in tokens
    # Multi-worker trials: data-parallel scaling (--workers) in the scaling RayJob, one worker per host
    # of a TPU slice (--tpu-slice) where a recipe has a slice: the RayCluster's v4-16 group, the
    # launcher's TPU pod.
    multi = {(lines[t], o) for t in lines for o in ("--workers", "--tpu-slice") if o in t}
    assert ("infra/kuberay/rayjob-scaling.yaml", "--workers") in multi
    assert ("infra/kuberay/raycluster.yaml", "--tpu-slice") in multi
    assert (str(LAUNCHER.relative_to(REPO)), "--tpu-slice") in multi
    for tokens, path in lines.items():
        if "--tpu-slice" in tokens:
            # harness/plan.py: a slice's cells are TPU cells (on other devices the slice is dropped).
            assert options(list(tokens[3:]))["--device"] == "tpu", f"{path}: {shlex.join(tokens)}"


def ray_node(resources: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A live node as ``ray.nodes()`` lists it (the fields harness/schedule.py and harness/gang.py read)."""
    return {"Alive": True, "Resources": {k: float(v) for k, v in resources.items()}, "Labels": labels or {}}


def slice_nodes(name: str, kind: str, hosts: int, resources: dict[str, Any]) -> list[dict[str, Any]]:
    """The Ray nodes of one TPU slice of type ``kind`` named ``name``: each host offers ``resources``
    and the slice's name as a resource, labelled ray.io/tpu-slice-name and ray.io/tpu-worker-id;
    worker 0 alone holds TPU-<kind>-head (Ray's TPUAcceleratorManager on each host; the launcher's
    TPU command runner strips it from the other hosts)."""
    from harness.gang import SLICE_LABEL, WORKER_ID_LABEL

    head = f"TPU-{kind}-head"
    shared = {k: v for k, v in resources.items() if k != head}
    return [
        ray_node({**shared, name: 1, **({head: 1} if i == 0 else {})}, {SLICE_LABEL: name, WORKER_ID_LABEL: str(i)})
        for i in range(hosts)
    ]


def kuberay_nodes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The Ray nodes of a KubeRay cluster spec once its pods run: each group's resources as Ray's
    KubeRay autoscaler derives them, `replicas` x numOfHosts pods; a TPU group's replica is a slice
    named as the KubeRay TPU webhook's TPU_NAME (<group>-<replica>)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"metadata": {"name": "harness", "namespace": "default"}, "spec": copy.deepcopy(spec)}
    types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]
    nodes = [ray_node(types["headgroup"]["resources"])]
    for group in spec["workerGroupSpecs"]:
        name, hosts = group["groupName"], group.get("numOfHosts", 1)
        resources = types[name]["resources"]
        for replica in range(group["replicas"]):
            if "google.com/tpu" in limits(group):
                nodes += slice_nodes(f"{name}-{replica}", slice_type(group), hosts, resources)
            else:
                nodes += [ray_node(resources) for _ in range(hosts)]
    return nodes


def launcher_nodes() -> list[dict[str, Any]]:
    """The Ray nodes `ray up` starts from the launcher config: the head and min_workers of each type;
    a TPU type is one TPU VM (pod) whose every host runs `ray start` with the type's resources, plus
    the TPU-<type>-head Ray's GCP provider adds (fillout_available_node_types_resources)."""
    from ray._private.accelerators.tpu import get_num_tpu_visible_chips_per_host, get_total_chips_from_accelerator_type
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(copy.deepcopy(one_doc(LAUNCHER)))
    nodes: list[dict[str, Any]] = []
    for name, t in config["available_node_types"].items():
        count = 1 if name == config["head_node_type"] else t["min_workers"]
        kind = t["node_config"].get("acceleratorType")
        for i in range(count):
            if kind:
                chips = get_total_chips_from_accelerator_type(kind)
                hosts = max(1, chips // get_num_tpu_visible_chips_per_host(kind))
                nodes += slice_nodes(f"ray-harness-worker-{name}-{i}-tpu", kind, hosts, t["resources"])
            else:
                nodes.append(ray_node(t["resources"]))
    return nodes


def planned(tokens: tuple[str, ...]) -> list[Any]:
    """The trials `harness run` plans for a line: harness/plan.py expand() with the line's selections
    (as harness/cli.py cmd_run passes them), every framework available (the images have them)."""
    from harness import plan
    from harness.spec import load_suite

    opts = options(list(tokens[3:]))

    def csv(name: str) -> list[str] | None:
        return opts[name].split(",") if name in opts else None

    def ints(name: str) -> list[int] | None:
        return [int(v) for v in opts[name].split(",")] if name in opts else None

    threads = int(opts["--threads"])
    overrides = plan.Overrides(
        frameworks=csv("--framework"),
        architectures=csv("--arch"),
        modes=csv("--mode"),
        batch_sizes=ints("--batch-size"),
        devices=csv("--device"),
        datasets=csv("--dataset"),
        threads=threads,
        workers=ints("--workers"),
        scaling=opts.get("--scaling"),
        tpu_slices=csv("--tpu-slice"),
        accelerator_types=csv("--accelerator-type"),
    )
    return list(plan.expand(load_suite(tokens[2]), overrides, threads, {}).trials)


def test_harness_lines_fit_their_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every line of a cluster recipe passes harness/schedule.py unschedulable(), the check the harness
    makes against ray.nodes() before the first trial (exit 2 otherwise), on the nodes that recipe
    starts: each trial's device and --threads on one node, multi-worker cells placed by
    harness/gang.py placement() (a TPU slice: its hosts, worker 0 holding TPU-<type>-head)."""
    import ray

    from harness import schedule

    clusters = {f"infra/kuberay/{name}": spec for name, spec in cluster_specs()}
    checked: list[str] = []
    for tokens, path in harness_lines().items():
        if path == str(LAUNCHER.relative_to(REPO)):
            nodes = launcher_nodes()
        elif path in clusters:
            nodes = kuberay_nodes(clusters[path])
        else:
            continue  # an image's CMD: an embedded Ray on the container's own machine
        specs = planned(tokens)
        assert specs, f"{path}: {shlex.join(tokens)}: nothing planned"
        monkeypatch.setattr(ray, "nodes", lambda nodes=nodes: nodes)
        reserve = int(options(list(tokens[3:])).get("--reserve-cores", "0"))
        problems = schedule.unschedulable(specs, reserve)
        assert not problems, f"{path}: {shlex.join(tokens)}: {problems}"
        checked.append(path)
    # The slices and the scaling job among them (test_harness_lines_are_found lists which).
    assert len(checked) >= 6, checked


def test_every_harness_line_dry_runs(dry_runs: dict[tuple[str, ...], tuple[str, Path, dict[str, Any]]]) -> None:
    assert dry_runs
    for tokens, (where, cwd, result) in dry_runs.items():
        line = shlex.join(tokens)
        assert result["code"] == 0, f"{where}: {line} --dry-run: exit {result['code']}\n{result['stderr'][-2000:]}"
        assert "dry run: nothing was run" in result["stdout"], f"{where}: {line}"
        # Ran nothing: no journal, no MLflow store, nothing written where it ran.
        assert not list(cwd.iterdir()), f"{where}: {line} --dry-run left {list(cwd.iterdir())}"


QUICK = "decoder[layers=1,d_model=32,heads=2,seq=16,vocab=64]"  # the quick sweep's model


def test_gpu_check_runs_its_whole_path_on_cpu(tmp_path: Path) -> None:
    """infra/gpu-check.sh's Python half, rehearsed on tiny models on the CPU: the conformance checks and
    the sweep (quick: bfloat16 train and infer) each as a real worker process, and the table."""
    out = tmp_path / "gpu-check.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick", "--frameworks", "torch"]
    done = subprocess.run([*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["checks"] and all(c["ok"] for c in data["checks"])
    assert {c["what"].split(": ")[-1] for c in data["checks"]} >= {"bfloat16 logits vs float64", "export round trip"}
    runs = {(r["spec"]["architecture"], r["spec"]["mode"], r["spec"]["precision"]) for r in data["results"]}
    assert runs == {(QUICK, "train", "bfloat16"), (QUICK, "infer", "bfloat16")}
    assert all(r["status"] == "ok" and r["metrics"]["throughput_samples_per_s"] > 0 for r in data["results"])
    assert "| model | framework | mode | precision |" in done.stdout
