"""Tracking to a real ``mlflow server`` on 127.0.0.1 (loopback only), and what its UI shows of a batch in a
real headless Chromium (driven by Playwright; no browser is downloaded)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.figures import COLORS, VERDICT_COLORS
from tests.test_cli import TINY, Run, harness
from tests.test_views import painted

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite store under ``root``; stop and start again
    (same port, same store) to simulate a store that goes away and comes back."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        with (self.root / "server.log").open("a") as log:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                cwd=self.root, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # wait for readiness (bounded), not a timing assertion
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    srv.start()
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def served(server: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The tiny suite (torch and jax, train and infer) logged to the server."""
    run = harness(tmp_path_factory.mktemp("served"), "run", TINY, "--tracking-uri", server)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    return run


CELLS = {f"mlp_shallow-{fw}-{mode}" for fw in ("torch", "jax") for mode in ("train-mnist1d", "infer")}


def test_run_logs_to_tracking_server(server: str, served: Run) -> None:
    assert not (served.cwd / "mlflow.db").exists()  # nothing went to the local default store
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    query = f"tags.batch_id = '{served.batch_id}' and tags.harness_kind = 'trial'"
    runs = client.search_runs([exp.experiment_id], query)
    assert {r.info.run_name for r in runs} == CELLS
    assert all(r.data.metrics["throughput_samples_per_s"] > 0 for r in runs)
    for r in runs:
        assert {"results.json", "processes.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}

    # sync replays the journal into the same server without duplicating the runs
    synced = harness(served.cwd, "sync", served.batch_id, "--tracking-uri", server)
    assert synced.proc.returncode == 0, synced.proc.stderr
    assert len(client.search_runs([exp.experiment_id], query)) == len(CELLS)


# --- the same batch in a real browser (headless Chromium from Debian's packages) ---------------------

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser")) if path), None)
NO_CHROMIUM = (
    "no Chromium here: `make test` installs Debian's chromium package (infra/browser/install-chromium.sh), "
    "which needs root and apt-get"
)
SCREENSHOTS_ENV = "HARNESS_SCREENSHOTS"  # also copy the screenshots there, small (the README's come from here)
PAGE_TIMEOUT_MS = 90_000  # MLflow's UI on a busy 2-core machine: its first page compiles a lot of JavaScript


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (make test)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _page(browser: Any) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


def _shot(target: Any, shots: Path, name: str, **options: Any) -> Path:
    """A screenshot for humans under the test's output folder (and, small, under $HARNESS_SCREENSHOTS)."""
    close = target.get_by_role("button", name="Close", exact=True) if hasattr(target, "get_by_role") else None
    if close is not None and close.count():  # MLflow's assistant panel: not what the picture is about
        close.first.click()
    path = shots / f"{name}.png"
    target.screenshot(path=str(path), **options)
    copy_to = os.environ.get(SCREENSHOTS_ENV)
    if copy_to:
        from PIL import Image

        with Image.open(path) as img:
            small = img.convert("RGB")
            small.thumbnail((960, 2000))
            small.quantize(colors=128).save(Path(copy_to) / f"{name}.png", optimize=True)
    return path


def _links(run: Run) -> dict[str, str]:
    """The MLflow pages the harness printed at the end of the run."""
    found = {}
    for line in run.proc.stdout.splitlines():
        what, _, url = line.strip().partition(": http")
        if url:
            found[what] = "http" + url
    return found


def _pixels(png: bytes) -> np.ndarray:
    from matplotlib import image

    return np.asarray(image.imread(io.BytesIO(png), format="png"))


def test_the_printed_experiment_page_lists_the_batch_runs(served: Run, browser: Any, shots: Path) -> None:
    page = _page(browser)
    page.goto(_links(served)["runs"])
    parent = f"batch-tiny-{served.batch_id}"
    page.get_by_text(parent, exact=True).first.wait_for()
    assert "/runs" in page.url and "overview" not in page.url  # the training runs, not the GenAI overview
    name_cell = page.locator('[role=gridcell][col-id="attributes.`Run Name`"]', has_text=parent).first
    name_cell.locator("button").first.click()  # expand the batch's parent run: one child run per cell
    for name in CELLS:
        page.get_by_text(name, exact=True).first.wait_for()
    _shot(page, shots, "mlflow-runs")


def test_the_printed_compare_page_compares_every_run(served: Run, browser: Any, shots: Path) -> None:
    page = _page(browser)
    page.goto(_links(served)["compare the batch's runs"])
    page.get_by_text(f"Comparing {len(CELLS)} Runs from 1 Experiment").wait_for()
    for name in CELLS:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("Parallel Coordinates Plot").first.wait_for()  # the comparison's own view
    _shot(page, shots, "mlflow-compare")


def test_the_parent_run_page_shows_the_description(served: Run, browser: Any, shots: Path) -> None:
    page = _page(browser)
    page.goto(_links(served)["the batch: description, figures, report"])
    page.get_by_text("Reproduce:").wait_for()
    page.get_by_role("button", name="Expand description").click()
    text = page.inner_text("body")
    assert f"Batch {served.batch_id} · suite tiny" in text
    assert re.search(r"Matrix: frameworks (torch, jax|jax, torch); architectures mlp_shallow", text), text
    assert text.count("mlp_shallow") >= len(CELLS)
    _shot(page, shots, "mlflow-parent-run")


def test_the_report_opens_from_disk_with_every_figure(served: Run, browser: Any, shots: Path) -> None:
    out = served.cwd / "report.html"
    made = harness(served.cwd, "report", served.batch_id, "-o", str(out))
    assert made.proc.returncode == 0, made.proc.stderr
    page = _page(browser)
    page.goto(out.as_uri())
    assert page.locator("table.cells tbody tr").count() == len(CELLS)
    # every figure this batch has data for (no time to target: the tiny suite sets no target accuracy)
    for name in ("throughput", "latency", "curves", "memory", "verdicts"):
        img = page.locator(f"figure#fig-{name} img")
        width, height = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert width >= 600 and height >= 200, name
        colours = VERDICT_COLORS.values() if name == "verdicts" else COLORS.values()
        drawn = _pixels(img.screenshot())
        assert max(painted(drawn, c) for c in colours) > 30, f"{name}: no data drawn in the browser"
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, shots, "report")
