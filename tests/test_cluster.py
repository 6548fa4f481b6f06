"""Sweeps on a real multi-node Ray cluster on this machine, and the faults they survive.

The cluster is the one users run, on one machine: a head node and a worker node, each a
``ray start --block`` process in its own process group with 1 CPU and its own temp folder,
so that killing one node's process group is that node crashing (``ray stop`` would stop
every Ray instance on the machine, other tests' included). Ray turns token authentication
on for a head that finds ``~/.ray/auth_token``; the nodes and the driver here share a token
made for the test session, as a real cluster's nodes must. The sweep's storage is one
folder that every node sees (the machine's file system here, NFS or EFS on a cluster);
tracking goes through an ``mlflow server`` on 127.0.0.1 backed by SQLite. The sweep is run
as users run it, ``python -m sweeper.launch --address ... --tracking-uri http://...``, and
checked through the MLflow server.

Ray resolves ``--node-ip-address 127.0.0.1`` to the machine's own address, so both nodes
share one IP; the Ray node id (the ``node_id`` tag of each trial's MLflow run) tells them
apart.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from sweeper.tracking import MLflowTracker

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 3  # the worker node is killed after epoch 1
FIXED = {"readout_layer": 3, "epochs": EPOCHS, "block_trs": 15, "bottleneck": 8, "lora_alpha": 16, "readout_lr": 1e-3,
         "device": "cpu"}
START_S = 180  # a Ray node or an mlflow server starting on a busy 2-core machine
SWEEP_S = 600


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """A long-running command in its own process group, its output in ``log``."""

    def __init__(self, command: list[str], log: Path, env: dict):
        self.command, self.log, self.env = command, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM, group: bool = True) -> None:
        """Signal the process group (or its leader only); after 30 s, or once the leader is gone, SIGKILL the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            (os.killpg if group else os.kill)(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def wait_until(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_S
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start; its log ends:\n{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)


class RayNode(Service):
    """One Ray node: ``ray start --block`` with 1 CPU and its own temp folder."""

    def __init__(self, name: str, log: Path, env: dict, head: RayNode | None = None):
        # Ray's socket paths must stay under 108 bytes: pytest's tmp_path is too deep.
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"bs-{name}-", dir="/tmp"))
        command = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
                   "--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                   "--temp-dir", str(self.temp_dir), "--dashboard-agent-listen-port", str(_free_port())]
        if head is None:
            self.port, self.dashboard = _free_port(), f"http://127.0.0.1:{_free_port()}"
            command += ["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", self.dashboard.rsplit(":", 1)[1],
                        "--ray-client-server-port", str(_free_port())]
        else:
            self.port, self.dashboard = head.port, head.dashboard
            command += ["--address", f"127.0.0.1:{head.port}"]
        super().__init__(command, log, env)
        self.node_id: str | None = None

    def nodes(self) -> list[dict]:
        """The cluster's nodes (Ray's state API on the head's dashboard); [] while it does not answer."""
        request = urllib.request.Request(f"{self.dashboard}/api/v0/nodes",
                                          headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)["data"]["result"]["result"]
        except OSError:
            return []

    def start(self) -> None:
        """Start the node and wait until the cluster lists it alive; sets ``node_id``."""
        known = {node["node_id"] for node in self.nodes()}
        super().start()

        def joined():
            new = [node for node in self.nodes() if node["state"] == "ALIVE" and node["node_id"] not in known]
            if new:
                self.node_id = new[0]["node_id"]
            return bool(new)

        self.wait_until(joined, f"Ray node ({' '.join(self.command)})")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop (``ray start`` drains the node and stops its processes; a
        SIGTERM to the whole group would stop the GCS under it). SIGKILL: the node crashes."""
        super().stop(sig, group=sig == signal.SIGKILL)
        # Ray's worker processes have sessions of their own; they end when their raylet
        # dies, but make sure no process of this node outlives the test.
        for pid in _pids_mentioning(str(self.temp_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


class MLflowServer(Service):
    """``mlflow server`` on a fixed port and SQLite database, so it can be stopped and started again."""

    def __init__(self, folder: Path, env: dict):
        self.url = f"http://127.0.0.1:{_free_port()}"
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                   "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                   "--port", self.url.rsplit(":", 1)[1], "--workers", "1"]
        super().__init__(command, folder / "mlflow-server.log", env)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, wait: bool = True) -> None:
        super().start()
        if wait:
            self.ready()

    def ready(self) -> None:
        self.wait_until(self.healthy, "mlflow server")


@pytest.fixture(scope="module")
def env():
    """Environment of every process of the cluster tests: one Ray token, a quick verdict on dead nodes."""
    return dict(os.environ, PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                RAY_health_check_failure_threshold="5")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, env):
    """Started, not waited for (it boots while the Ray nodes start): call ``ready()`` before use."""
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"), env)
    try:
        server.start(wait=False)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def head(tmp_path_factory, env):
    node = RayNode("head", tmp_path_factory.mktemp("ray") / "head.log", env)
    try:
        node.start()
        yield node
    finally:
        node.remove()


@pytest.fixture(scope="module")
def worker_node(head, env):
    node = RayNode("worker", head.log.with_name("worker.log"), env, head=head)
    try:
        node.start()
        yield node
    finally:
        node.remove()


def _runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id], max_results=1000)
    return ([run for run in runs if run.data.tags.get("sweep.role") == "parent"],
            [run for run in runs if run.data.tags.get("sweep.role") == "trial"])


def _check_complete(client: MlflowClient, child, epochs: int = EPOCHS) -> None:
    """A finished trial's run: every epoch's validation metrics once, the test metrics, the artifacts."""
    assert child.info.status == "FINISHED"
    steps = [point.step for point in client.get_metric_history(child.info.run_id, "val_r")]
    assert steps == list(range(epochs + 1)), steps
    assert {"test_r", "test_r.AC", "baseline_r", "best_val_r", "train_loss"} <= set(child.data.metrics)
    assert child.data.tags["stopped_early"] == "false"
    artifacts = {item.path for item in client.list_artifacts(child.info.run_id)}
    assert {"summary.json", "config.yaml", "voxel_r.hf5", "roi_r.png"} <= artifacts


def _space(folder: Path, data: Path, name: str, trials: int, concurrency: int, epochs: int = EPOCHS) -> Path:
    space = {"name": name, "data": str(data), "subjects": ["UTS01"], "fixed": {**FIXED, "epochs": epochs},
             "search": {"lora_rank": {"choice": [1, 2]}, "lr": {"loguniform": [1e-3, 1e-2]},
                        "lora_layers": {"top_layers": [1, 2]}},
             "objective": {"metric": "best_val_r", "mode": "max"}, "scheduler": "none",
             "budget": {"trials": trials, "concurrency": concurrency},
             "resources": {"workers": 1, "cpus_per_worker": 1}, "seed": 0}
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    return folder / "space.yaml"


def _launch(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sweeper.launch", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait for a launch to end by ``deadline`` (monotonic) and succeed; on a timeout kill it and show its log."""
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        pytest.fail(f"the sweep still ran at its deadline; its log ends:\n{log.read_text()[-6000:]}")
    assert rc == 0, log.read_text()[-4000:]


@dataclass
class FaultedSweep:
    """What :func:`faulted_sweep` saw: the node of each trial's run before the kill, the killed trial's run."""

    log: Path
    storage: Path
    nodes_before_kill: dict[str, str]  # run id -> Ray node id
    killed_run: str
    epochs_before_kill: list[int]


@pytest.fixture(scope="module")
def faulted_sweep(small_data, tmp_path_factory, mlflow_server, head, worker_node, env):
    """A sweep of two trials on the two nodes; the worker node is killed once its trial has reported epoch 1.

    One sweep serves the placement and the fault tests (a sweep takes a minute on a
    2-core machine): two 1-CPU trials at a time on two 1-CPU nodes land one on each.
    """
    folder = tmp_path_factory.mktemp("sweep")
    storage, log = folder / "shared", folder / "launch.log"
    space = _space(folder, small_data, "cluster", trials=2, concurrency=2)
    mlflow_server.ready()
    proc = _launch(["--config", str(space), "--address", f"127.0.0.1:{head.port}", "--storage", str(storage),
                    "--tracking-uri", mlflow_server.url], log, env)
    deadline = time.monotonic() + SWEEP_S
    client = MlflowClient(mlflow_server.url)
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the sweep never had both trials running with one at epoch 1 on the worker node; "
                            f"its log ends:\n{log.read_text()[-6000:]}")
            time.sleep(1)
            _, children = _runs(client, "cluster")
            nodes = {child.info.run_id: child.data.tags.get("node_id") for child in children}
            on_worker = [child.info.run_id for child in children if nodes[child.info.run_id] == worker_node.node_id]
            if len(children) == 2 and all(nodes.values()) and on_worker:
                epochs = [point.step for point in client.get_metric_history(on_worker[0], "val_r")]
                if 1 in epochs:
                    worker_node.stop(signal.SIGKILL)
                    break
    except BaseException:
        _kill(proc)
        raise
    _wait(proc, log, deadline)
    return FaultedSweep(log, storage, nodes, on_worker[0], epochs)


def test_sweep_places_trials_on_both_nodes_and_records_them_in_the_mlflow_server(faulted_sweep, head, worker_node,
                                                                                  mlflow_server):
    assert sorted(faulted_sweep.nodes_before_kill.values()) == sorted([head.node_id, worker_node.node_id])
    client = MlflowClient(mlflow_server.url)
    parents, children = _runs(client, "cluster")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["best_trial_id"] in {child.data.tags["trial_id"] for child in children}
    assert len(children) == 2 and len({child.data.tags["trial_id"] for child in children}) == 2
    for child in children:
        _check_complete(client, child)
        trial_dir = faulted_sweep.storage / "trials" / "UTS01" / child.data.tags["trial_id"]
        assert (trial_dir / "checkpoints" / "last.pt").is_file()


def test_trial_of_a_killed_node_resumes_from_its_checkpoint_on_the_other_node(faulted_sweep, head, mlflow_server):
    assert max(faulted_sweep.epochs_before_kill) < EPOCHS, (
        f"the node was killed after training ended (epochs {faulted_sweep.epochs_before_kill})")
    client = MlflowClient(mlflow_server.url)
    parents, children = _runs(client, "cluster")
    assert {run.info.status for run in parents + children} == {"FINISHED"}
    (retried,) = [child for child in children if child.info.run_id == faulted_sweep.killed_run]
    assert [child.data.tags["trial_id"] for child in children].count(retried.data.tags["trial_id"]) == 1
    assert retried.data.tags["node_id"] == head.node_id
    # Every epoch once (_check_complete): the retried trial went on from its checkpoint, it did not start over.
    _check_complete(client, retried)


def test_tracking_calls_wait_out_an_mlflow_server_outage_in_order(mlflow_server, caplog):
    """The tracker against a real server that is stopped, then started again on the same port and database."""
    sweep = {"name": "outage", "objective": {"metric": "val_r", "mode": "max"}}
    tracker = MLflowTracker(mlflow_server.url, "outage", None, sweep, ["UTS01"], trial_dir=lambda trial: None,
                            retry_interval_s=0.0)
    trial = Trial("run_trial", config={"subject": "UTS01", "params": {"lr": 1e-3}}, trial_id="outage_00000", stub=True)
    mlflow_server.ready()

    def result(epoch, **more):
        return {"epoch": epoch, "val_r": 0.1 * epoch, "node_id": "node-a", **more}

    with caplog.at_level(logging.WARNING, logger="sweeper.tracking"):
        tracker.setup()
        tracker.on_trial_start(0, [trial], trial)
        tracker.on_trial_result(0, [trial], trial, result(0))
        mlflow_server.stop()
        try:
            for epoch in (1, 2):  # training goes on: no call raises or waits on the server
                started = time.monotonic()
                tracker.on_trial_result(0, [trial], trial, result(epoch))
                assert time.monotonic() - started < 5
        finally:
            mlflow_server.start()
        final = result(3, test_r=0.25, done_training=1)
        tracker.on_trial_result(0, [trial], trial, final)  # sends the queued calls first
        client = MlflowClient(mlflow_server.url)
        (child,) = _runs(client, "outage")[1]
        history = client.get_metric_history(child.info.run_id, "val_r")
        assert [(point.step, point.value) for point in history] == [(e, pytest.approx(0.1 * e)) for e in range(4)]
        trial.update_last_result(final)
        trial.set_status(Trial.TERMINATED)
        tracker.on_trial_complete(0, [trial], trial)
        tracker.on_experiment_end([trial])
    messages = [record.getMessage() for record in caplog.records if record.name == "sweeper.tracking"]
    assert len(messages) == 2, messages  # one when the outage starts, one when it ends
    assert "unreachable" in messages[0] and "reachable again" in messages[1]

    parents, children = _runs(client, "outage")
    assert len(parents) == 1 and len(children) == 1
    assert [run.info.status for run in parents + children] == ["FINISHED", "FINISHED"]
    assert len(client.get_metric_history(children[0].info.run_id, "val_r")) == 4
    assert children[0].data.metrics["test_r"] == pytest.approx(0.25)
    assert children[0].data.tags["node_id"] == "node-a" and children[0].data.params["lr"] == "0.001"


def test_killed_driver_resumes_and_what_mlflow_missed_is_synced_from_the_sweep_folder(small_data, tmp_path, head,
                                                                                    mlflow_server, env):
    """Two faults in one sweep on the cluster: the driver is killed once a trial has finished,
    then the MLflow server is down for the whole resumed sweep. ``--resume`` completes the
    sweep without re-running the finished trial; ``python -m sweeper.sync`` then records in
    MLflow what it missed, once, and a second sync adds nothing."""
    storage, log = tmp_path / "shared", tmp_path / "launch.log"
    space = _space(tmp_path, small_data, "resumed", trials=3, concurrency=1, epochs=2)
    mlflow_server.ready()
    args = ["--config", str(space), "--address", f"127.0.0.1:{head.port}", "--storage", str(storage),
            "--tracking-uri", mlflow_server.url]
    proc = _launch(args, log, env)
    deadline = time.monotonic() + SWEEP_S
    while not list(storage.glob("trials/UTS01/*/summary.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            pytest.fail(f"no trial finished before the deadline; the log ends:\n{log.read_text()[-6000:]}")
        time.sleep(0.5)
    _kill(proc)
    finished = {path.parent.name: path.stat().st_mtime for path in storage.glob("trials/UTS01/*/summary.json")}

    mlflow_server.stop()
    try:
        resumed = _launch([*args, "--resume"], log, env)
        _wait(resumed, log, time.monotonic() + SWEEP_S)
    finally:
        mlflow_server.start()
    assert f"python -m sweeper.sync --storage {storage}" in log.read_text()
    for trial, mtime in finished.items():  # not trained again
        assert (storage / "trials" / "UTS01" / trial / "summary.json").stat().st_mtime == mtime
    assert len(list(storage.glob("trials/UTS01/*/summary.json"))) == 3

    def sync() -> str:
        done = subprocess.run([sys.executable, "-m", "sweeper.sync", "--storage", str(storage)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=START_S)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "synced 3 trials" in sync()
    assert (storage / "report" / "report.md").read_text().count("| finished |") == 3
    client = MlflowClient(mlflow_server.url)
    parents, children = _runs(client, "resumed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # A trial the killed driver had just started, before Tune saved it, is not resumed
    # (whether there is one depends on when the kill lands): its run is closed, not RUNNING.
    lost = [child for child in children if child.data.tags.get("lost") == "true"]
    assert all(child.info.status == "KILLED" for child in lost)
    children = [child for child in children if child not in lost]
    assert sorted(child.data.tags["trial_id"] for child in children) == sorted(
        path.parent.name for path in storage.glob("trials/UTS01/*/summary.json"))
    for child in children:
        _check_complete(client, child, epochs=2)
    best = [child for child in children if child.data.tags.get("best_trial") == "true"]
    assert len(best) == 1 and parents[0].data.tags["best_trial_id"] == best[0].data.tags["trial_id"]
    assert "synced 3 trials: 0 metric values added" in sync()
    assert [len(client.get_metric_history(child.info.run_id, "val_r")) for child in children] == [3, 3, 3]
