"""The MLflow UI opens a recorded sweep on its trials, with the searched params and metrics as columns.

Starts a real ``mlflow server`` (sqlite store), records one subject's sweep of three
trials through :class:`sweeper.tracking.MLflowTracker` (no Ray: the trials are Tune's own
``Trial`` objects, driven through the callback methods), then opens the experiment's runs
page in headless Chromium driven by selenium at the link the sweep prints
(:func:`sweeper.tracking.landing_url`), with no clicking: the model-training runs table
lists the three trials with the ``lr``, ``val_r`` and ``test_r`` columns. The screenshot goes to ``tmp_path`` and, when
``BRAINSWEEP_ARTIFACTS`` is set, to that folder too.

Needs Chromium and its driver (Debian: ``apt-get install -y chromium chromium-driver``);
skipped where ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from sweeper.plots import roi_bar_chart
from sweeper.tracking import MLflowTracker, landing_url

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000"]
EXPERIMENT = "ui-sweep"
SUBJECT = "UTS01"
# trial id -> (lr, final val_r); values with few digits, as the UI shows them.
TRIALS = {"ui000_00000": (1e-3, 0.312), "ui000_00001": (3e-4, 0.231), "ui000_00002": (1e-4, 0.157)}
SERVER_START_S = 180  # a cold `mlflow server` takes ~25 s on a busy 2-core machine

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"needs Chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)"
)


@pytest.fixture
def mlflow_server(tmp_path):
    """URL of an ``mlflow server`` on a free port, stopped (with its workers) at the end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--default-artifact-root", str(tmp_path / "server-artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "w") as log:
        # Its own process group: the server runs uvicorn (and job runners) as children.
        server = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def record_sweep(url: str, outputs: Path) -> None:
    """Record a finished sweep of :data:`TRIALS` for :data:`SUBJECT` as Tune would."""
    sweep = {"name": EXPERIMENT, "search": {"lr": {"loguniform": [1e-4, 1e-2]}},
             "objective": {"metric": "val_r", "mode": "max"}}
    tracker = MLflowTracker(url, EXPERIMENT, None, sweep, [SUBJECT], trial_dir=lambda trial: outputs / trial.trial_id)
    trials = [Trial("train_trial", config={"subject": SUBJECT, "params": {"lr": lr, "lora_rank": 4, "subject": SUBJECT}},
                    trial_id=trial_id, stub=True) for trial_id, (lr, _) in TRIALS.items()]
    tracker.setup()
    for trial in trials:
        _, val_r = TRIALS[trial.trial_id]
        tracker.on_trial_start(0, trials, trial)
        for epoch in (1, 2):
            tracker.on_trial_result(0, trials, trial, {"epoch": epoch, "val_r": val_r * epoch / 2})
        folder = outputs / trial.trial_id
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"test_r": val_r}))
        roi_bar_chart(folder / "roi_r.png", {"all": 0.1}, {"all": val_r}, trial.trial_id)
        final = {"epoch": 2, "val_r": val_r, "test_r": val_r - 0.01, "baseline_r": 0.1, "done_training": 1}
        trial.update_last_result(final)
        tracker.on_trial_result(0, trials, trial, final)
        trial.set_status(Trial.TERMINATED)
        tracker.on_trial_complete(0, trials, trial)
    tracker.on_experiment_end(trials)


def open_chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # The driver from the distribution, so that selenium never tries to download one.
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_sweep_runs_are_shown_in_the_mlflow_ui(mlflow_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    record_sweep(mlflow_server, tmp_path / "outputs")
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id])
    assert sorted(run.info.run_name for run in runs) == sorted([*TRIALS, SUBJECT])
    assert {run.info.status for run in runs} == {"FINISHED"}
    trial_run = next(run for run in runs if run.info.run_name in TRIALS)
    assert {item.path for item in client.list_artifacts(trial_run.info.run_id)} == {"summary.json", "roi_r.png"}

    screenshot = tmp_path / "mlflow_ui_runs.png"
    browser = open_chromium(tmp_path / "chromium-profile")
    try:
        wait = WebDriverWait(browser, 90)
        browser.get(landing_url(mlflow_server, experiment_id))
        # No clicks: the trials (flat, not under their subject's run) and the columns are there.
        wait.until(lambda page: all(trial_id in page.find_element(By.TAG_NAME, "body").text for trial_id in TRIALS))
        headers = lambda: [h.text for h in browser.find_elements(By.CSS_SELECTOR, "[role=columnheader]")]
        wait.until(lambda page: {"lr", "val_r", "test_r"} <= {text.strip() for text in headers()})
        cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
        for trial_id, (lr, val_r) in TRIALS.items():
            assert any(trial_id in cell for cell in cells), (trial_id, cells)
            assert str(val_r) in cells and str(lr) in cells, (val_r, lr, cells)
    finally:
        browser.save_screenshot(str(screenshot))
        browser.quit()
        if os.environ.get("BRAINSWEEP_ARTIFACTS"):
            folder = Path(os.environ["BRAINSWEEP_ARTIFACTS"])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(screenshot, folder / screenshot.name)
