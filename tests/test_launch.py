"""The launcher: worker environment per framework, the per-trial memory cap, and deaths it did not cause."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from adapters import FRAMEWORKS
from harness.contract import TrialResult, TrialSpec
from harness.launch import BLAS_THREAD_VARS, launch, worker_env
from harness.memcap import MemoryCap, default_limit_mb
from tests.conftest import is_trial_worker
from tests.test_cli import TINY, harness


def spec(framework: str = "torch", threads: int = 1, **kw: object) -> TrialSpec:
    fields = {"architecture": "mlp_shallow", "framework": framework, "mode": "infer", "batch_size": 8} | kw
    return TrialSpec(threads=threads, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fw", list(FRAMEWORKS))
def test_worker_env_sets_blas_and_the_frameworks_own_thread_variables(fw: str) -> None:
    env = worker_env(spec(fw, threads=1))
    info = FRAMEWORKS[fw]
    for var in (*BLAS_THREAD_VARS, *info.thread_vars):
        assert env[var] == "1", var
    for var, flags in info.one_thread_flags:
        assert flags in env[var]
    assert all(env[var] == value for var, value in info.runtime_env)


def test_xla_flags_a_user_set_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    env = worker_env(spec("jax", threads=1))
    assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/x ") and "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
    assert "intra_op" not in worker_env(spec("jax", threads=2)).get("XLA_FLAGS", "")


def test_default_memory_limit_is_the_nodes_share_per_concurrent_trial() -> None:
    assert default_limit_mb(threads=1, cores=2, total_mb=24_000) == 12_000
    assert default_limit_mb(threads=2, cores=2, total_mb=24_000) == 24_000
    assert default_limit_mb(threads=3, cores=16, total_mb=64_000) == 12_800  # 5 trials fit
    assert default_limit_mb(threads=4, cores=2, total_mb=8_000) == 8_000  # never more than one share


def test_watchdog_kills_a_group_over_its_limit(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import time\nhoard = []\nwhile True:\n    hoard.append(bytearray(b'1' * (32 << 20)))\n    time.sleep(0.02)\n"
    )
    cap = MemoryCap(limit_mb=300)
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    cap.watch(proc.pid)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    cap.finish()
    assert proc.returncode == -signal.SIGKILL
    assert cap.tripped and cap.peak_mb > 300
    assert "300 MB" in cap.reason() and "peak" in cap.reason()


def test_cgroup_v2_path_on_a_fake_hierarchy(tmp_path: Path) -> None:
    """The cgroup v2 mechanism's logic (this machine's memory controller is cgroup v1, so the real
    kernel path cannot run here): detection, the child group, the verdict from memory.events."""
    from harness.memcap import cgroup2_dir

    proc, mount = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("1:memory:/x\n0::/ray/worker\n")
    (proc / "self" / "mounts").write_text(f"cgroup2 {mount} cgroup2 rw 0 0\n")
    here = mount / "ray" / "worker"
    here.mkdir(parents=True)
    (here / "cgroup.subtree_control").write_text("cpu io\n")
    assert cgroup2_dir(proc) is None  # memory not delegated: the watchdog it is
    (here / "cgroup.subtree_control").write_text("cpu io memory\n")
    assert cgroup2_dir(proc) == here

    cap = MemoryCap(limit_mb=256, cgroup_parent=here)
    assert cap.in_cgroup and cap.mechanism == "cgroup v2"
    (group,) = [p for p in here.iterdir() if p.is_dir()]
    assert (group / "memory.max").read_text() == str(256 * 2**20)
    assert (group / "memory.swap.max").read_text() == "0"
    cap.preexec()  # as the forked worker does before exec
    assert (group / "cgroup.procs").read_text() == str(os.getpid())
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (group / "memory.peak").write_text(str(300 * 2**20))
    for f in group.iterdir():  # a real cgroup's files vanish with it; these are plain files
        f.unlink()
    cap.finish()
    assert not cap.tripped and not group.exists()  # no events file left: no verdict
    cap = MemoryCap(limit_mb=256, cgroup_parent=here)
    (group,) = [p for p in here.iterdir() if p.is_dir()]
    (group / "memory.events").write_text("oom_kill 1\n")
    (group / "memory.peak").write_text(str(300 * 2**20))
    cap.finish()
    assert cap.tripped and cap.peak_mb == 300 and "cgroup v2" in cap.reason()


def test_this_machine_has_a_mechanism() -> None:
    cap = MemoryCap(limit_mb=100)
    assert cap.mechanism in ("watchdog", "cgroup v2")
    cap.finish()


@pytest.mark.slow
def test_trial_over_its_memory_limit_ends_oom_and_the_batch_goes_on(tmp_path: Path) -> None:
    faults = {"HARNESS_INJECT_FAULTS": "mlp_shallow-torch-infer=alloc"}
    run = harness(tmp_path, "run", TINY, "--mode", "infer", "--memory-limit", "1500", env=faults)
    assert run.proc.returncode == 1, run.proc.stdout[-2000:] + run.proc.stderr[-2000:]
    rows = {r["spec"]["framework"]: r for r in run.journal()}  # type: ignore[index]
    assert rows["torch"]["status"] == "oom"
    reason = str(rows["torch"]["reason"])
    assert "memory limit of 1500 MB" in reason and "peak" in reason
    assert rows["jax"]["status"] == "ok"  # the rest of the batch is unharmed
    assert rows["jax"]["spec"]["memory_limit_mb"] == 1500  # type: ignore[index]


def tiny(**kw: object) -> TrialSpec:
    measure = {"warmup_steps": 0, "min_steps": 2, "min_time_s": 0.0, "window_steps": 1, "latency_requests": 2}
    return spec(measure=measure, **kw)


@pytest.mark.slow
def test_cpu_trials_fork_from_one_server_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = launch(tiny(), cpus=None), launch(tiny(seed=1), cpus=None)
    for r in (first, second):
        assert r.status == "ok", r.reason + r.stderr_tail
        assert r.environment["process"] == "fork"
        assert r.metrics["import_s"] > 0  # the server's import, reported with every trial it serves
    assert first.environment["fork_server_pid"] == second.environment["fork_server_pid"]
    assert first.metrics["throughput_samples_per_s"] > 0
    other = launch(tiny(threads=2), cpus=None)  # another thread count: another environment, another server
    assert other.status == "ok" and other.environment["fork_server_pid"] != first.environment["fork_server_pid"]
    monkeypatch.setenv("HARNESS_PROCESS", "spawn")
    fresh = launch(tiny(), cpus=None)
    assert fresh.status == "ok" and fresh.environment["process"] == "spawn"


@pytest.mark.slow
def test_prestarted_servers_serve_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import forking

    monkeypatch.setenv("HARNESS_TEST_ENVIRONMENT", str(time.time()))  # an environment no server has yet
    before = {k.pid for k in psutil.Process().children() if "forkserver" in " ".join(k.cmdline())}
    assert forking.prestart([tiny(), tiny(seed=3), tiny(mode="train")]) == 1  # one environment, one server
    started = {k.pid for k in psutil.Process().children() if "forkserver" in " ".join(k.cmdline())} - before
    assert len(started) == 1
    r = launch(tiny(seed=5), cpus=None)
    assert r.status == "ok" and r.environment["fork_server_pid"] in started
    assert forking.prestart([tiny(device="gpu")]) == 0  # device trials are never forked


@pytest.mark.slow
def test_a_server_survives_bad_requests_and_its_loss_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from harness import forking

    monkeypatch.setenv("HARNESS_TEST_ENVIRONMENT", f"bad-{time.time()}")
    assert forking.prestart([tiny()]) == 1
    (server,) = [k for k in psutil.Process().children() if "HARNESS_TEST_ENVIRONMENT" in k.environ()
                 and k.environ()["HARNESS_TEST_ENVIRONMENT"].startswith("bad-")]  # fmt: skip
    sock_path = next(a for a in server.cmdline() if a.endswith(".sock"))
    for garbage in (b"not json\n", b'{"request": 1}\n'):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(sock_path)
            conn.sendall(garbage)
            assert b"error" in conn.recv(4096)  # answered, not crashed
    assert launch(tiny(), cpus=None).environment["fork_server_pid"] == server.pid  # still serving

    out: list[TrialResult] = []
    t = threading.Thread(target=lambda: out.append(launch(tiny(timeout_s=120), cpus=None, fault="hang")))
    t.start()
    deadline = time.monotonic() + 60
    while not any(is_trial_worker(k) for k in server.children()) and time.monotonic() < deadline:
        time.sleep(0.1)
    server.kill()  # the server goes away mid-trial
    t.join(timeout=60)
    (result,) = out
    assert result.status == "crash" and f"fork server {server.pid} went away" in result.reason


@pytest.mark.slow
@pytest.mark.parametrize("process", ["fork", "spawn"])
def test_timeout_kills_the_trial_either_way(process: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PROCESS", process)
    r = launch(tiny(timeout_s=5), cpus=None, fault="hang")
    assert r.status == "timeout" and "5 s timeout" in r.reason


@pytest.mark.slow
def test_a_sigkill_the_harness_did_not_send_is_reported_as_such() -> None:
    out: list[TrialResult] = []
    t = threading.Thread(target=lambda: out.append(launch(spec(timeout_s=120), cpus=None, fault="hang")))
    t.start()
    deadline = time.monotonic() + 60
    worker = None
    while worker is None and time.monotonic() < deadline:  # bounded wait for the worker to appear
        kids = psutil.Process().children(recursive=True)
        worker = next((k for k in kids if is_trial_worker(k)), None)
        time.sleep(0.1)
    assert worker is not None, "worker never started"
    worker.send_signal(signal.SIGKILL)  # as the kernel's OOM killer would
    t.join(timeout=60)
    (result,) = out
    assert result.status == "crash"
    assert "killed by SIGKILL from outside the harness, possibly the kernel's OOM killer" in result.reason
