"""sweeper.tracking.MLflowTracker against a real MLflow store (sqlite) and real Ray Tune runs.

The trainable is a stand-in for a training run (no model): it reports a few epochs of
validation metrics, then, unless ASHA stopped it, writes an output folder and reports the
final test metrics with ``done_training``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray
import ray.cloudpickle
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from sweeper.plots import roi_bar_chart, voxel_r_histogram
from sweeper.tracking import MLflowTracker

SUBJECTS = ["UTS01", "UTS02"]
EPOCHS = 4
# Best first, so that the best trial of each subject is never stopped and later, worse
# trials meet ASHA rungs that are already filled.
LRS = [1e-3, 3e-4, 1e-4]
FAILING_LR = LRS[-1]  # fails for UTS02
SWEEP = {"name": "test-sweep", "objective": {"metric": "val_r", "mode": "max"}, "params": {"lr": LRS}}


def fake_training(config):
    """Report epochs of made-up results; the quality of a trial grows with its lr."""
    if config["params"]["lr"] == FAILING_LR and config["subject"] == "UTS02":
        raise RuntimeError("a planted failure")
    quality = {lr: 0.3 - 0.1 * rank for rank, lr in enumerate(LRS)}[config["params"]["lr"]]
    for epoch in range(1, EPOCHS + 1):
        val_r = quality * epoch / EPOCHS
        tune.report({"epoch": epoch, "val_r": val_r, "val_r.AC": val_r / 2, "train_loss": -val_r,
                     "val_r.empty": float("nan"), "note": "not a metric"})
    folder = Path(config["outputs"]) / tune.get_context().get_trial_id()
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"test_r": val_r}))
    (folder / "config.yaml").write_text(f"lr: {config['params']['lr']}\n")
    roi_bar_chart(folder / "roi_r.png", {"all": 0.1, "AC": 0.2}, {"all": val_r, "AC": val_r / 2}, config["subject"])
    voxel_r = np.random.default_rng(0).normal(val_r, 0.1, size=(2, 50))
    voxel_r[:, :5] = np.nan
    voxel_r_histogram(folder / "voxel_r.png", voxel_r[0] - 0.05, voxel_r[1], config["subject"])
    with h5py.File(folder / "voxel_r.hf5", "w") as file:
        file["tuned_r"] = voxel_r[1]
    tune.report({"epoch": EPOCHS, "val_r": val_r, "test_r": val_r * 0.9, "test_r.AC": val_r / 3,
                 "baseline_r": 0.1, "done_training": 1})


class KeepTrials(tune.Callback):
    """Keeps the trials of the last experiment, to replay them."""

    def on_experiment_end(self, trials, **info):
        self.trials = trials


@pytest.fixture(scope="module")
def ray_session():
    # Ray workers cannot import this test module: send its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_tracker(tmp_path: Path, tracking_uri: str, **kwargs) -> MLflowTracker:
    outputs = tmp_path / "outputs"
    return MLflowTracker(tracking_uri, "test-sweep", str(tmp_path / "artifacts"), SWEEP, SUBJECTS,
                         trial_dir=lambda trial: outputs / trial.trial_id, **kwargs)


def run_sweep(tmp_path: Path, callbacks: list, name: str, lrs: list[float] = LRS):
    param_space = {
        "subject": tune.grid_search(SUBJECTS),
        "params": {
            "lr": tune.grid_search(lrs),
            "lora_layers": "2,3",
            "roi_weight.AC": 1.0,
            "subject": tune.sample_from(lambda config: config["subject"]),
        },
        "outputs": str(tmp_path / "outputs"),
    }
    scheduler = ASHAScheduler(metric="val_r", mode="max", time_attr="epoch", max_t=100, grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(
        fake_training,
        param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "ray"), callbacks=callbacks, verbose=0),
    )
    return tuner.fit()


def runs_by_role(client: MlflowClient, experiment: str) -> tuple[list, list]:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    return ([run for run in runs if run.data.tags.get("sweep.role") == "parent"],
            [run for run in runs if run.data.tags.get("sweep.role") == "trial"])


def check_sweep_record(client: MlflowClient, n_trials: int) -> None:
    parents, children = runs_by_role(client, "test-sweep")
    assert sorted(run.data.params["subject"] for run in parents) == SUBJECTS
    assert len(children) == n_trials
    assert len({run.data.tags["trial_id"] for run in children}) == n_trials
    assert {run.info.status for run in parents} == {"FINISHED"}
    failed = [run for run in children if run.info.status == "FAILED"]
    assert [(run.data.params["subject"], run.data.params["lr"]) for run in failed] == [("UTS02", str(FAILING_LR))]
    assert failed[0].data.tags["error_file"].endswith("error.txt")
    assert [item.path for item in client.list_artifacts(failed[0].info.run_id)] == ["error.txt"]
    assert {run.info.status for run in children if run not in failed} == {"FINISHED"}
    for parent in parents:
        subject = parent.data.params["subject"]
        own = [run for run in children if run.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert {run.data.params["subject"] for run in own} == {subject}
        assert len(own) == len(LRS)
        best = [run for run in own if run.data.tags.get("best_trial") == "true"]
        assert len(best) == 1
        assert best[0].data.params["lr"] == str(LRS[0])
        assert parent.data.tags["best_trial_id"] == best[0].data.tags["trial_id"]
        assert parent.data.metrics["best_val_r"] == pytest.approx(0.3)
        assert parent.data.metrics["test_r"] == pytest.approx(0.27)
        assert parent.data.metrics["baseline_r"] == pytest.approx(0.1)


def test_sweep_is_recorded_and_resuming_adds_no_runs(tmp_path, ray_session):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    keep = KeepTrials()
    results = run_sweep(tmp_path, [make_tracker(tmp_path, uri), keep], "sweep")
    assert len(results.errors) == 1
    client = MlflowClient(uri)
    check_sweep_record(client, n_trials=len(SUBJECTS) * len(LRS))

    experiment = client.get_experiment_by_name("test-sweep")
    assert experiment.artifact_location.endswith("artifacts")
    parents, children = runs_by_role(client, "test-sweep")
    assert all(run.data.tags["sweep.name"] == "test-sweep" for run in parents)
    assert [item.path for item in client.list_artifacts(parents[0].info.run_id)] == ["search_space.yaml"]
    stopped = [run for run in children if run.data.tags.get("stopped_early") == "true"]
    completed = [run for run in children if run.data.tags.get("stopped_early") == "false"]
    assert stopped and len(completed) + len(stopped) == len(children) - 1
    for run in stopped + completed:
        assert run.data.params["lora_layers"] == "2,3" and run.data.params["roi_weight.AC"] == "1.0"
        assert run.info.run_name == run.data.tags["trial_id"]
        assert "note" not in run.data.metrics and "val_r.empty" not in run.data.metrics
        steps = [point.step for point in client.get_metric_history(run.info.run_id, "val_r.AC")]
        assert sorted(set(steps)) == list(range(1, max(steps) + 1))
        assert client.get_metric_history(run.info.run_id, "train_loss")
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        if run in completed:
            assert max(steps) == EPOCHS and "test_r.AC" in run.data.metrics
            assert artifacts == {"summary.json", "config.yaml", "voxel_r.hf5", "roi_r.png", "voxel_r.png"}
        else:
            assert artifacts == set() and "test_r" not in run.data.metrics

    # A resumed sweep: Tune restores the tracker from its pickle; all trials are finished.
    tune.Tuner.restore(str(tmp_path / "ray" / "sweep"), trainable=fake_training).fit()
    check_sweep_record(client, n_trials=len(SUBJECTS) * len(LRS))
    for parent in parents:  # the restored tracker ran: it found the parents and logged again
        assert len(client.get_metric_history(parent.info.run_id, "best_val_r")) == 2

    # A resumed sweep that runs its trials again: same trial ids, new tracker.
    trials = keep.trials
    tracker = make_tracker(tmp_path, uri)
    tracker.setup()
    for trial in trials:
        tracker.on_trial_start(0, trials, trial)
    assert {run.info.status for run in sum(runs_by_role(client, "test-sweep"), [])} == {"RUNNING"}
    for trial in trials:
        if trial.status == Trial.ERROR:
            tracker.on_trial_error(0, trials, trial)
        else:
            tracker.on_trial_result(0, trials, trial, trial.last_result)
            tracker.on_trial_complete(0, trials, trial)
    tracker.on_experiment_end(trials)
    check_sweep_record(client, n_trials=len(SUBJECTS) * len(LRS))


def test_unreachable_tracking_server_does_not_stop_the_sweep(tmp_path, ray_session, caplog):
    caplog.set_level(logging.WARNING, logger="sweeper.tracking")
    results = run_sweep(tmp_path, [make_tracker(tmp_path, "http://127.0.0.1:9")], "unreachable", lrs=LRS[:1])
    assert not results.errors and len(results) == len(SUBJECTS)
    warnings = [record.getMessage() for record in caplog.records if record.name == "sweeper.tracking"]
    assert len(warnings) == 2, warnings  # one when the outage starts, one at the end
    assert "unreachable" in warnings[0] and "were not recorded" in warnings[1]


def test_queued_calls_are_sent_in_order_when_the_store_comes_back_and_unfinished_runs_end_killed(tmp_path, caplog):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    tracker = make_tracker(tmp_path, uri, retry_interval_s=0.0)
    trial = Trial("fake_training", config={"subject": "UTS01", "params": {"lr": 1e-3}}, trial_id="abc_00000", stub=True)

    with caplog.at_level(logging.WARNING, logger="sweeper.tracking"):
        tracker.setup()
        tracker.on_trial_start(0, [trial], trial)
        for epoch in (1, 2):
            tracker.on_trial_result(0, [trial], trial, {"epoch": epoch, "val_r": 0.1 * epoch})
        blocker.unlink()
        tracker.on_trial_result(0, [trial], trial, {"epoch": 3, "val_r": 0.3})
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and "unreachable" in messages[0] and "reachable again" in messages[1]

    client = MlflowClient(uri)
    parents, children = runs_by_role(client, "test-sweep")
    assert len(parents) == 2 and len(children) == 1
    assert children[0].data.params["lr"] == "0.001"
    history = client.get_metric_history(children[0].info.run_id, "val_r")
    assert [(point.step, point.value) for point in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]

    tracker.on_experiment_end([trial])  # the sweep was interrupted while the trial ran
    parents, children = runs_by_role(client, "test-sweep")
    assert children[0].info.status == "KILLED"
    assert {run.data.params["subject"]: run.info.status for run in parents} == {"UTS01": "KILLED", "UTS02": "FINISHED"}


def test_a_trial_the_killed_driver_started_but_tune_never_saved_is_closed_on_resume(tmp_path):
    """The driver dies right after starting a trial, before Tune saved its state: the resumed
    sweep does not know that trial, so its run must not stay RUNNING for ever."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done, lost = (Trial("fake_training", config={"subject": "UTS01", "params": {"lr": lr}}, trial_id=f"abc_{i:05d}",
                        stub=True) for i, lr in enumerate(LRS[:2]))
    first = make_tracker(tmp_path, uri)  # the driver that dies: no on_experiment_end
    first.setup()
    for trial in (done, lost):
        first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [done], done, {"epoch": 1, "val_r": 0.5, "done_training": 1, "test_r": 0.4})
    done.update_last_result({"epoch": 1, "val_r": 0.5, "done_training": 1, "test_r": 0.4})
    done.set_status(Trial.TERMINATED)
    first.on_trial_complete(0, [done], done)

    resumed = make_tracker(tmp_path, uri)  # knows only the trial Tune saved
    resumed.setup()
    resumed.on_experiment_end([done])
    client = MlflowClient(uri)
    _, children = runs_by_role(client, "test-sweep")
    status = {run.data.tags["trial_id"]: (run.info.status, run.data.tags.get("lost")) for run in children}
    assert status == {"abc_00000": ("FINISHED", None), "abc_00001": ("KILLED", "true")}
