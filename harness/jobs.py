"""``harness submit | jobs | logs | stop``: a batch as a Ray Job on a cluster's job server.

``submit`` validates the run options here exactly as ``harness run ... --dry-run`` does (bad input:
one line, exit 2, nothing submitted), chooses the batch id, ships the project (without its venvs,
caches, journals and stores) as the job's working directory and submits ``python -m harness.cli run
SUITE [run options]`` with the tracking URI passed through; it prints the job id and the batch id and
returns. The driver runs on the cluster: the journal lives on the node it runs on, the results go to
MLflow, and ``harness compare BATCH`` reads them back from there when the journal is not local.
``jobs`` lists the cluster's jobs, ``logs JOB [--follow]`` prints (or follows to the end) a job's
output, ``stop JOB`` ends it. Every command takes the job server's address (``--address
http://HEAD:8265``, the head's dashboard port); one that does not answer is one line, exit 2, within
seconds; so is an unknown job id.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table

from harness import journal, track
from harness.batch import BATCH_ID_ENV
from harness.envs import PROJECT_ROOT
from harness.spec import SpecError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

EXCLUDES = (  # never shipped: environments, caches, journals, local stores (kept small, seconds to upload)
    ".venv",
    ".venvs",
    ".git",
    "harness-runs",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "build",
    "dist",
    "*.pyc",
)
SHIPPED_SUITES = "submitted-suites"  # a suite file given by path travels here, inside the working directory
# run options `submit` does not forward: its own (--address is the job server, --tracking-uri and
# --runs-dir are passed explicitly), and those that make no sense for a new job
NOT_FORWARDED = {"help", "address", "dry_run", "resume", "tracking_uri", "runs_dir"}
CONNECT_TIMEOUT_S = 5.0
STOP_WAIT_S = 60.0
RUNS_DIR_DEFAULT = "${HARNESS_RUNS_DIR:-$HOME/harness-runs}"  # expanded by the job's shell, on the cluster


def _consoles() -> tuple[Console, Console]:
    from harness import cli  # imported late: cli imports this module

    return cli.console, cli.err_console


# --- the job server ----------------------------------------------------------------------------


def default_address() -> str | None:
    """$RAY_DASHBOARD_ADDRESS, else $RAY_ADDRESS when it is a job server's http(s):// address."""
    given = os.environ.get("RAY_DASHBOARD_ADDRESS")
    if given:
        return given
    ray_address = os.environ.get("RAY_ADDRESS", "")
    return ray_address if ray_address.startswith(("http://", "https://")) else None


def _url(address: str | None) -> str:
    if not address:
        raise SpecError(
            "no job server address: pass --address http://HEAD:8265 (the Ray head's dashboard port) "
            "or set RAY_DASHBOARD_ADDRESS"
        )
    if address.startswith("ray://") or ("://" not in address and address.rsplit(":", 1)[-1] in ("6379", "10001")):
        raise SpecError(
            f"{address} is a Ray cluster address; jobs go to the head's job server: --address http://HEAD:8265"
        )
    return (address if "://" in address else f"http://{address}").rstrip("/")


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise SpecError(f"job server address {url!r} has no valid port") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SpecError(f"job server address {url!r} is not http://HOST:PORT")
    return parsed.hostname, port


def client(address: str | None) -> JobSubmissionClient:
    """A client of the job server at ``address``; a one-line :class:`SpecError` within seconds when
    nothing answers there (Ray's own client has no timeout)."""
    url = _url(address)
    try:
        socket.create_connection(_host_port(url), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SpecError(
            f"cannot reach the Ray job server at {url} ({e.strerror or e}); start the head with "
            "`ray start --head --dashboard-host 0.0.0.0` (jobs are served on its dashboard port, 8265) "
            "or check --address / RAY_DASHBOARD_ADDRESS"
        ) from None
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not every upload and closed log stream at INFO
    try:
        try:
            return JobSubmissionClient(url)
        except AuthenticationError:  # the cluster uses Ray's token authentication: send this machine's token
            token = _ray_token()
            if token is None:
                raise SpecError(
                    f"the Ray job server at {url} requires its token: set RAY_AUTH_TOKEN to it (`ray get-auth-token` "
                    "on the head prints it) or put it in ~/.ray/auth_token"
                ) from None
            return JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    except SpecError:
        raise
    except AuthenticationError:
        raise SpecError(
            f"the Ray job server at {url} refused this machine's Ray token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
            "~/.ray/auth_token); set RAY_AUTH_TOKEN to the cluster's (`ray get-auth-token` on the head)"
        ) from None
    except Exception as e:
        raise SpecError(f"{url} does not answer as a Ray job server ({_first_line(e)})") from None


def _ray_token() -> str | None:
    """This machine's Ray token, as Ray finds it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    try:
        loader = importlib.import_module("ray._raylet").AuthenticationTokenLoader.instance()
        if not loader.has_token(ignore_auth_mode=True):
            return None
        return str(loader.get_raw_token(ignore_auth_mode=True)).strip() or None
    except Exception:  # a Ray without token authentication
        return None


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def _info(c: JobSubmissionClient, job_id: str) -> JobDetails:
    try:
        return c.get_job_info(job_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise SpecError(f"no job {job_id!r} on {c.get_address()}; `harness jobs` lists them") from None
        raise SpecError(f"the job server could not say what job {job_id!r} is ({_first_line(e)})") from None


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


# --- submit ----------------------------------------------------------------------------------------


def _local_store(uri: str) -> Path | None:
    """The path of a store MLflow writes on the local disk (SQLite, file store), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    if "://" not in uri and not uri.startswith("databricks"):
        return Path(uri)
    return None


def _is_this_machine(host: str) -> bool:
    """Whether ``host`` is an address of this machine (then the head shares its disk)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((sockaddr[0], 0))  # only an address of this machine can be bound
                return True
        except OSError:
            continue
    return False


def tracking_uri(given: str | None, head: str, store_on_cluster: bool) -> str:
    """The tracking URI the job writes to: a server URI; or a local store's absolute path when the head
    is this machine (or ``store_on_cluster`` accepts a store on the driver node's own disk)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    local_head = _is_this_machine(head)
    if not uri:
        if not local_head and not store_on_cluster:
            raise SpecError(
                "the job's results go to MLflow: pass --tracking-uri http://MLFLOW_HOST:5000 (a tracking server "
                "the cluster and this machine reach) or set MLFLOW_TRACKING_URI"
            )
        from harness import track

        uri = track.default_tracking_uri()
    path = _local_store(uri)
    if path is None:
        host = urlparse(uri).hostname or ""
        if not local_head and host in ("127.0.0.1", "localhost", "::1"):
            _, err = _consoles()
            err.print(
                f"[yellow]warning:[/] {uri} names the machine it is used on: the job's driver writes to its own "
                "node, not to this machine; give an address the cluster reaches",
                soft_wrap=True,
            )
        return uri
    if not local_head and not store_on_cluster:
        raise SpecError(
            f"{uri} is a store on local disk: the job's driver runs on the cluster and would write it on its own "
            "node's disk, and the results would not come back here. Pass an MLflow server URI (--tracking-uri "
            "http://MLFLOW_HOST:5000), or --store-on-cluster to keep them on the cluster"
        )
    path = path if path.is_absolute() else Path.cwd() / path
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{path}"
    return f"file://{path}" if uri.startswith("file:") else str(path)


def _forwarded(actions: list[argparse.Action], args: argparse.Namespace) -> list[str]:
    """The run options given to ``submit``, as ``harness run`` arguments (those left at defaults omitted)."""
    out: list[str] = []
    for action in actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch (store_true)
            out.append(flag)
        elif isinstance(value, list):  # repeatable (append)
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


@contextmanager
def staged_project(suite: str) -> Iterator[tuple[Path, str, int, int]]:
    """A copy of the project without :data:`EXCLUDES` (the job's working directory), the suite as the
    job names it (a suite file is copied in), and the copy's file count and bytes."""
    with tempfile.TemporaryDirectory(prefix="harness-submit-") as tmp:
        root = Path(tmp) / "project"
        ignore = shutil.ignore_patterns(*EXCLUDES)
        if (PROJECT_ROOT / "pyproject.toml").exists():  # a checkout (or an editable install): the project
            shutil.copytree(PROJECT_ROOT, root, ignore=ignore)
        else:  # installed into site-packages: its packages only
            for package in ("harness", "adapters", "workloads"):
                shutil.copytree(PROJECT_ROOT / package, root / package, ignore=ignore)
        name = suite
        if Path(suite).suffix:  # a file: it travels with the project, under its own file name
            (root / SHIPPED_SUITES).mkdir(exist_ok=True)
            shutil.copyfile(suite, root / SHIPPED_SUITES / Path(suite).name)
            name = f"{SHIPPED_SUITES}/{Path(suite).name}"
        files = [f for f in root.rglob("*") if f.is_file()]
        yield root, name, len(files), sum(f.stat().st_size for f in files)


def _validate(args: argparse.Namespace) -> str:
    """``harness run SUITE [options] --dry-run`` here (raises :class:`SpecError` on bad input, like
    ``run``); the plan it printed, for this machine."""
    from harness import cli

    dry = argparse.Namespace(**{**vars(args), "dry_run": True, "resume": None, "address": None})
    saved = cli.console
    cli.console = Console(file=io.StringIO(), width=saved.width, highlight=False)
    try:
        cli.cmd_run(dry)
        printed = cli.console.file.getvalue()  # type: ignore[attr-defined]
    finally:
        cli.console = saved
    return "\n".join(line for line in printed.splitlines() if not line.startswith("dry run:"))


def cmd_submit(args: argparse.Namespace) -> int:
    console, err = _consoles()
    url = _url(args.address)
    uri = tracking_uri(args.tracking_uri, _host_port(url)[0], args.store_on_cluster)
    # the shipped copy has no .git: the job records the commit it was submitted from
    env_vars = {"MLFLOW_TRACKING_URI": uri, "RAY_worker_niceness": "0", track.GIT_COMMIT_ENV: track.git_commit()}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--env takes KEY=VALUE, got {item!r}")
        env_vars[key] = value
    plan_text = _validate(args)  # bad input: exit 2 before anything reaches the cluster
    c = client(args.address)
    batch_id = journal.new_batch_id()
    runs_dir = shlex.quote(args.runs_dir) if args.runs_dir else f'"{RUNS_DIR_DEFAULT}"'
    with staged_project(args.suite) as (root, suite, count, size):
        command = [args.python, "-m", "harness.cli", "run", suite, *_forwarded(args.run_actions, args)]
        entrypoint = (
            f"{BATCH_ID_ENV}={batch_id} {shlex.join(command)} --tracking-uri {shlex.quote(uri)} --runs-dir {runs_dir}"
        )
        suite_name = Path(args.suite).stem
        console.print(plan_text, markup=False, highlight=False, soft_wrap=True)
        console.print(f"shipping the project as the job's working directory: {count} files, {size / 1024:,.0f} KiB")
        try:
            job_id = c.submit_job(
                entrypoint=entrypoint,
                submission_id=f"harness-{batch_id}",
                runtime_env={"working_dir": str(root), "env_vars": env_vars},
                metadata={"harness_batch_id": batch_id, "harness_suite": suite_name, "harness_tracking_uri": uri},
            )
        except Exception as e:
            raise SpecError(f"the job server at {url} refused the job ({_first_line(e)})") from None
    console.print(f"job {job_id}\nbatch {batch_id}")
    err.print(
        f"submitted to {url}: {entrypoint}\nfollow it: harness logs {job_id} --follow --address {url}\n"
        f"its results: harness compare {batch_id} --tracking-uri {uri}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    return 0


# --- jobs, logs, stop ------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    console, _ = _consoles()
    c = client(args.address)
    try:
        found = c.list_jobs()
    except Exception as e:
        raise SpecError(f"the job server at {c.get_address()} could not list its jobs ({_first_line(e)})") from None
    table = Table(title=f"jobs on {c.get_address()}", header_style="bold")
    for col in ("job", "status", "batch", "suite", "started", "ended", "message"):
        table.add_column(col)
    for job in sorted(found, key=lambda j: j.start_time or 0):
        meta = job.metadata or {}
        table.add_row(
            job.submission_id or job.job_id or "-",
            str(job.status),
            meta.get("harness_batch_id", "-"),
            meta.get("harness_suite", "-"),
            _when(job.start_time),
            _when(job.end_time),
            (job.message or "")[:80],
        )
    console.print(table)
    return 0


def _follow(c: JobSubmissionClient, job_id: str) -> None:
    """Print the job's output as it comes, until the job ends (the job server closes the stream)."""

    async def tail() -> int:
        written = 0
        async for chunk in c.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
            written += len(chunk)
        return written

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as e:  # the stream broke: poll the whole log instead
        _, err = _consoles()
        err.print(f"[yellow]log stream lost ({_first_line(e)}); polling[/]", soft_wrap=True)
        printed = 0
        while True:
            done = _info(c, job_id).status.is_terminal()
            text = c.get_job_logs(job_id)
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)
            if done:
                return
            time.sleep(2.0)


def _wait_terminal(c: JobSubmissionClient, job_id: str, timeout_s: float) -> JobDetails:
    deadline = time.monotonic() + timeout_s
    info = _info(c, job_id)
    while not info.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        info = _info(c, job_id)
    return info


def _outcome(info: JobDetails) -> str:
    meta = info.metadata or {}
    batch = f", batch {meta['harness_batch_id']}" if "harness_batch_id" in meta else ""
    return f"job {info.submission_id}{batch}: {info.status}" + (f" ({info.message})" if info.message else "")


def cmd_logs(args: argparse.Namespace) -> int:
    _, err = _consoles()
    c = client(args.address)
    info = _info(c, args.job_id)
    if not args.follow:
        sys.stdout.write(c.get_job_logs(args.job_id))
        sys.stdout.flush()
        err.print(_outcome(info), soft_wrap=True, markup=False, highlight=False)
        return 0
    try:
        _follow(c, args.job_id)
    except KeyboardInterrupt:
        err.print(f"\nstopped following; the job goes on (harness stop {args.job_id} ends it)", markup=False)
        return 130
    info = _wait_terminal(c, args.job_id, STOP_WAIT_S)
    err.print(_outcome(info), soft_wrap=True, markup=False, highlight=False)
    return 0 if str(info.status) == "SUCCEEDED" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    console, _ = _consoles()
    c = client(args.address)
    info = _info(c, args.job_id)
    if info.status.is_terminal():
        console.print(f"{_outcome(info)}; it had already ended, nothing to stop", markup=False, highlight=False)
        return 0
    try:
        c.stop_job(args.job_id)
    except Exception as e:
        raise SpecError(f"the job server could not stop job {args.job_id!r} ({_first_line(e)})") from None
    info = _wait_terminal(c, args.job_id, STOP_WAIT_S)
    if not info.status.is_terminal():
        console.print(f"asked job {args.job_id} to stop; after {STOP_WAIT_S:.0f} s it is still {info.status}")
        return 1
    meta = info.metadata or {}
    after = (
        f"; trials finished before the stop are in the batch's journal on the cluster and in MLflow "
        f"(harness compare {meta['harness_batch_id']})"
        if "harness_batch_id" in meta
        else ""
    )
    console.print(f"stopped: {_outcome(info)}{after}", markup=False, highlight=False, soft_wrap=True)
    return 0


# --- the command line --------------------------------------------------------------------------------


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=default_address(),
        help="the Ray head's job server, http://HEAD:8265 (default: $RAY_DASHBOARD_ADDRESS, or $RAY_ADDRESS when "
        "it is an http(s):// address)",
    )


def add_parsers(sub: Any) -> None:
    """Register ``submit``, ``jobs``, ``logs`` and ``stop`` (after ``run``: ``submit`` takes its options)."""
    run: argparse.ArgumentParser = sub.choices["run"]
    s = sub.add_parser(
        "submit",
        help="submit a suite as a Ray Job to a cluster; prints the job id and the batch id, and returns",
        description="Check the run options here (as `harness run --dry-run`), then submit `harness run SUITE "
        "[run options]` as a Ray Job: the project (no venvs, caches, journals or stores) is the job's working "
        "directory, the driver runs on the cluster and joins it, and its journal lives there (--runs-dir). "
        "Results go to --tracking-uri: give an MLflow server the cluster and this machine reach; a sqlite:/// "
        "or file store is accepted when the head is this machine (same disk) and refused otherwise unless "
        "--store-on-cluster. Read them with `harness compare BATCH --tracking-uri URI` from anywhere.",
    )
    actions = [a for a in run._actions if a.dest not in NOT_FORWARDED]
    for action in actions:
        s._add_action(action)
    _address_arg(s)
    s.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI the job writes to (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db when "
        "the head is this machine); a local store's path is made absolute",
    )
    s.add_argument(
        "--runs-dir",
        help="where the batch journal goes on the node the driver runs on (default: $HARNESS_RUNS_DIR there, else "
        "~/harness-runs)",
    )
    s.add_argument(
        "--store-on-cluster",
        action="store_true",
        help="accept a sqlite/file --tracking-uri with a head on another machine: the driver writes it on its "
        "node's disk (a shared filesystem, or read the results there)",
    )
    s.add_argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="an environment variable for the job's driver and trials, e.g. HARNESS_VENVS=/opt/harness/.venvs "
        "(repeatable)",
    )
    s.add_argument(
        "--python", default="python", help="the cluster's interpreter that has the harness installed (default python)"
    )
    s.set_defaults(func=cmd_submit, run_actions=actions)

    j = sub.add_parser("jobs", help="the cluster's jobs: id, status, batch, suite, start and end")
    _address_arg(j)
    j.set_defaults(func=cmd_jobs)

    lg = sub.add_parser(
        "logs",
        help="a job's output; --follow: until it ends (exit 0 if it succeeded, else 1)",
        description="Print a job's output so far; with --follow, print it as it comes until the job ends and "
        "exit 0 when it SUCCEEDED, 1 when it FAILED or was STOPPED (Ctrl-C stops following, not the job).",
    )
    lg.add_argument("job_id", metavar="JOB", help="the job id `submit` printed (or from `harness jobs`)")
    lg.add_argument("--follow", "-f", action="store_true", help="follow the output until the job ends")
    _address_arg(lg)
    lg.set_defaults(func=cmd_logs)

    st = sub.add_parser("stop", help="stop a running job (its driver and trials); say how it ended")
    st.add_argument("job_id", metavar="JOB", help="the job id `submit` printed (or from `harness jobs`)")
    _address_arg(st)
    st.set_defaults(func=cmd_stop)
