"""Sweeps end to end on a real local Ray instance and a real MLflow store (checked through MLflow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
FIXED = {"readout_layer": 3, "epochs": 2, "block_trs": 15, "bottleneck": 8, "lora_alpha": 16, "readout_lr": 1e-3,
         "device": "cpu"}


def _space(tmp_path, data, **changes) -> Path:
    raw = {"name": "t", "data": str(data), "subjects": "all", "fixed": dict(FIXED),
           "search": {"lora_rank": {"choice": [1, 2]}, "lr": {"loguniform": [1e-3, 1e-2]},
                      "lora_layers": {"top_layers": [1, 2]}},
           "objective": {"metric": "best_val_r", "mode": "max"}, "scheduler": "none",
           "budget": {"trials": 2, "concurrency": 1}, "resources": {"workers": 1, "cpus_per_worker": 1}, "seed": 0}
    raw.update(changes)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(args, log: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "sweeper.launch", *args], cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True, **kw)


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for a launch; on a timeout kill its whole process group (Ray included) and show its log."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"launch still running after {timeout:.0f} s; its log ends:\n{log.read_text()[-6000:]}")
    assert rc == 0, log.read_text()[-3000:]


def _runs(storage: Path, experiment: str = "t"):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def test_default_command_records_parent_and_child_runs_in_mlflow(tmp_path):
    """The README's main job, `python -m sweeper.launch` on its built-in default (demo.yaml:
    the demo synthetic data, made under data/ on first use; one backbone tuned on both
    subjects), checked through MLflow, and its closing summary on the planted voxels of
    each subject against the truth."""
    storage = tmp_path / "sweep"
    log = tmp_path / "log"
    proc = _launch(["--storage", str(storage)], log)
    _finish(proc, log, 600)
    out = log.read_text()
    assert "UTS01: best trial" in out and "  UTS02 tuned " in out and "mlflow ui --backend-store-uri" in out
    assert out.count("planted voxels: frozen ridge") == 2 and "UTS02 (trained with UTS01) planted voxels" in out
    assert out.count("; planted: [3]") == 1
    client, runs = _runs(storage, "demo")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.data.params["subject"] for r in parents] == ["UTS01"]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in runs)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"lora_rank", "lora_layers", "lr", "readout_layer", "subject", "subjects"} <= set(child.data.params)
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_r"))
        assert steps == [0, 1, 2, 3, 4] and child.data.tags["stopped_early"] == "false"
        metrics = child.data.metrics
        assert {"test_r", "baseline_r", "test_r.AC", "baseline_r.AC", "test_r.planted", "baseline_r.planted",
                "best_val_r", "cotrained_test_r.UTS02.planted", "cotrained_baseline_r.UTS02.planted",
                "val_r_subject.UTS02"} <= set(metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"voxel_r.hf5", "summary.json", "config.yaml", "roi_r.png", "voxel_r_hist.png"} <= artifacts
    assert len([c for c in children if c.data.tags.get("best_trial") == "true"]) == 1
    # The sweep's report (demo.yaml: the table of every sweep) in the parent run.
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")} == {"report/report.md"}
    report = (storage / "report" / "report.md").read_text()
    assert report.startswith("# Sweep `demo`") and report.count("(best)") == 1


def test_asha_with_more_trials_than_slots_finishes_and_frees_workers(small_data, tmp_path):
    """Two-worker Train trials, ASHA stopping some: every stopped trial must release its workers.

    One trial at a time: on a 2-CPU machine a second 2-worker trial can never be placed
    next to the first (2 x 1.01 CPUs), and the next trial only starts once the stopped
    one has given its workers back.
    """
    storage = tmp_path / "sweep"
    log = tmp_path / "log"
    # A gentle first trial, then two whose learning rate wrecks the features: their epoch-1
    # validation r falls below the first's, so ASHA stops them at its rung (epoch 1).
    space = _space(tmp_path, small_data, subjects=["UTS01"], scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}},
                   budget={"trials": 3, "concurrency": 1}, resources={"workers": 2, "cpus_per_worker": 0.5},
                   fixed={**FIXED, "epochs": 2}, search={"lr": {"loguniform": [1e-4, 3e-1]}},
                   points_to_evaluate=[{"lr": 1e-4}, {"lr": 3e-1}, {"lr": 3e-1}])
    proc = _launch(["--config", str(space), "--storage", str(storage)], log)
    _finish(proc, log, 900)
    out = log.read_text()
    assert out.count("done:") == 3 and "stopped early at epoch 1" in out
    _, runs = _runs(storage)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in runs)


def test_two_worker_trial_matches_one_worker_trial(small_data, tmp_path):
    """Data-parallel (gloo, 2 Ray Train workers, a block each per step) vs in-process (both blocks
    per step): the same parameters after training and the same numbers, the study measures
    included (transfer to the other subject, word-level probes; computed on rank 0), and the
    probes report built from MLflow at the end."""
    results, params = {}, {}
    fixed = {**FIXED, "lr": 3e-3, "lora_dropout": 0, "blocks_per_step": 2, "transfer_to": ["UTS01", "UTS02"],
             "transfer_fractions": [0.5, 1.0], "probes": ["acoustic", "planted"], "probe_layers": [3]}
    for workers in (1, 2):
        storage = tmp_path / f"w{workers}"
        space = _space(tmp_path, small_data, subjects=["UTS01"], search={}, budget={"trials": 1, "concurrency": 1},
                       resources={"workers": workers, "cpus_per_worker": 1 / workers}, fixed=fixed, report="probes")
        log = tmp_path / f"log{workers}"
        proc = _launch(["--config", str(space), "--storage", str(storage)], log)
        _finish(proc, log, 600)
        client, runs = _runs(storage)
        (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
            "report/report.md", "report/probes_UTS01.png"}
        assert "| planted | 3 |" in (storage / "report" / "report.md").read_text()
        results[workers] = child.data.metrics
        (last,) = (storage / "trials" / "UTS01").glob("*/checkpoints/last.pt")
        params[workers] = torch.load(last, weights_only=False)["model"]
    for name, value in params[1].items():
        torch.testing.assert_close(params[2][name], value, atol=1e-5, rtol=1e-5, msg=name)
    for metric in ("baseline_r", "test_r", "test_r.AC", "best_val_r", "test_readout_r", "transfer_r.UTS02",
                   "transfer_readout_r.UTS02", "transfer_baseline_r.UTS02", "transfer_r_50pct.UTS02",
                   "transfer_baseline_r_50pct.UTS02", "probe_r.planted.L3",
                   "probe_baseline_r.acoustic.L3"):
        assert results[1][metric] == pytest.approx(results[2][metric], abs=1e-4), metric


def test_which_subjects_train_the_backbone_is_searched(small_data, tmp_path):
    """``subjects`` as a searched choice: UTS01 alone, or UTS01 and UTS02 on one backbone.

    The joint trial records UTS02's own scores next to UTS01's, and each epoch's validation
    r of both subjects, whose mean is the objective's ``val_r``."""
    storage, log = tmp_path / "sweep", tmp_path / "log"
    space = _space(tmp_path, small_data, subjects=["UTS01"], fixed={**FIXED, "epochs": 1, "lr": 3e-3},
                   search={"subjects": {"choice": [[], ["UTS02"]]}}, points_to_evaluate=[{"subjects": []}, {"subjects": ["UTS02"]}],
                   budget={"trials": 2, "concurrency": 1})
    _finish(_launch(["--config", str(space), "--storage", str(storage)], log), log, 600)
    client, runs = _runs(storage)
    children = {r.data.params["subjects"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"[]", "UTS02"}
    alone, joint = children["[]"].data.metrics, children["UTS02"].data.metrics
    assert not any(k.startswith("cotrained_") for k in alone)
    assert {"cotrained_test_r.UTS02", "cotrained_baseline_r.UTS02", "cotrained_test_r.UTS02.planted"} <= set(joint)
    # Epoch 0 is the pretrained model for both trials: the same UTS01 baseline.
    assert joint["baseline_r"] == pytest.approx(alone["baseline_r"], rel=1e-6)
    history = {name: {m.step: m.value for m in client.get_metric_history(children["UTS02"].info.run_id, name)}
               for name in ("val_r", "val_r_subject.UTS01", "val_r_subject.UTS02")}
    for epoch in (0, 1):
        assert history["val_r"][epoch] == pytest.approx(
            (history["val_r_subject.UTS01"][epoch] + history["val_r_subject.UTS02"][epoch]) / 2, rel=1e-6)


def test_a_study_that_fails_after_training_is_reported_and_its_results_kept(small_data, tmp_path):
    """A word-vector file that breaks only when read (the checks before training see that it
    exists): the trial's results reach MLflow, the closing lines name the study, the sweep exits 1."""
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("the 0.1 0.2\nof 0.3\n")
    storage, log = tmp_path / "sweep", tmp_path / "log"
    space = _space(tmp_path, small_data, subjects=["UTS01"], search={}, budget={"trials": 1, "concurrency": 1},
                   fixed={**FIXED, "epochs": 1, "lora_layers": [3], "probes": [f"semantic:{vectors}"],
                          "probe_layers": [3]})
    proc = _launch(["--config", str(space), "--storage", str(storage)], log)
    try:
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert rc == 1, out[-3000:]
    closing = [line for line in out.splitlines() if "failed after training (its results are kept)" in line]
    assert len(closing) == 1 and "probes failed after training" in closing[0] and "vectors.txt:2" in closing[0]
    client, runs = _runs(storage)
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "FAILED" and child.data.tags["failed_studies"] == "probes"
    assert {"test_r", "baseline_r", "test_r.planted"} <= set(child.data.metrics)
    assert "summary.json" in {f.path for f in client.list_artifacts(child.info.run_id)}
    (summary,) = (storage / "trials" / "UTS01").glob("*/summary.json")
    assert "vectors.txt:2" in json.loads(summary.read_text())["failed_studies"]["probes"]
