"""sweeper.report: study reports rebuilt from a real MLflow store alone.

The store is written the way a sweep writes it, by :class:`sweeper.tracking.MLflowTracker`
(its Tune callbacks, with Tune trial objects), from chosen numbers, so that every cell of
a report can be checked; tests/test_sweep.py runs a real study sweep end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from sweeper.reports.publish import build
from sweeper.reports.roi import weighting_label
from sweeper.reports.stability import method_label
from sweeper.reports.store import load_sweep
from sweeper.tracking import MLflowTracker

REPO = Path(__file__).resolve().parent.parent
ROIS = ("AC", "left", "right")


def record(uri: str, name: str, report: str, trials: list[dict], subjects=("UTS01",)) -> None:
    """Record a finished sweep: each trial dict has ``subject``, ``params`` and final ``metrics``."""
    sweep = {"name": name, "report": report, "objective": {"metric": "best_val_r", "mode": "max"}}
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"  # not ./mlruns in the working tree
    tracker = MLflowTracker(uri, name, str(artifacts), sweep, list(subjects), trial_dir=lambda trial: None)
    tracker.setup()
    objects = []
    for i, spec in enumerate(trials):
        trial = Trial("run_trial", config={"subject": spec["subject"], "params": spec["params"]},
                      trial_id=f"{name}_{i:05d}", stub=True)
        tracker.on_trial_start(0, [], trial)
        final = {"epoch": 2, "best_val_r": spec["metrics"].get("best_val_r", 0.5), "done_training": 1, **spec["metrics"]}
        tracker.on_trial_result(0, [], trial, {"epoch": 0, "val_r": 0.4})
        tracker.on_trial_result(0, [], trial, final)
        trial.update_last_result(final)
        trial.set_status(Trial.TERMINATED)
        tracker.on_trial_complete(0, [], trial)
        objects.append(trial)
    tracker.on_experiment_end(objects)


def _rois(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {(prefix if roi == "all" else f"{prefix}.{roi}"): value for roi, value in values.items()}


BASELINE = {"all": 0.50, "AC": 0.70, "left": 0.48, "right": 0.52}


def test_roi_report_is_a_trained_on_by_evaluated_on_matrix_relative_to_the_frozen_baseline(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tuned = {"whole cortex": {"all": 0.55, "AC": 0.71, "left": 0.53, "right": 0.56},
             "AC": {"all": 0.49, "AC": 0.78, "left": 0.47, "right": 0.50}}
    params = {"whole cortex": {"lr": 0.01}, "AC": {"lr": 0.01, "roi_weight.AC": 1.0}}
    record(uri, "roi", "roi", [
        {"subject": "UTS01", "params": params[label],
         "metrics": {**_rois("test_r", r), **_rois("baseline_r", BASELINE), "test_r_ceiling_fraction.AC": 0.8,
                     "baseline_r_ceiling_fraction.AC": 0.71}}
        for label, r in tuned.items()])

    report = build(load_sweep(MlflowClient(uri), "roi"))

    lines = report.markdown.splitlines()
    assert "| trained on \\ evaluated on | all | AC | left | right |" in lines
    assert "| frozen baseline | 0.500 | 0.700 (71% of ceiling) | 0.480 | 0.520 |" in lines
    assert "| AC | 0.490 (-0.010) | 0.780 (+0.080, 80% of ceiling) | 0.470 (-0.010) | 0.500 (-0.020) |" in lines
    assert "| whole cortex | 0.550 (+0.050) | 0.710 (+0.010, 80% of ceiling) | 0.530 (+0.050) | 0.560 (+0.040) |" in lines
    (figure,) = report.figures.values()
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["whole cortex", "AC"]
    assert [label.get_text() for label in axes.get_xticklabels()][1] == "AC\nfrozen 0.700"
    assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title()
    assert "0.780\n(+0.080)" in [text.get_text() for text in axes.texts]


def test_stability_report_gives_mean_and_spread_over_seeds_per_method(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = []
    for seed, (lora, full, control) in enumerate([(0.60, 0.58, 0.50), (0.62, 0.52, 0.51), (0.64, 0.55, 0.52)]):
        for rank, lr, r in ((4, 0.01, lora), (0, 0.01, full), (4, 0.0, control)):
            runs.append({"subject": "UTS01", "params": {"seed": seed, "lora_rank": rank, "lr": lr},
                         "metrics": {"test_r": r, "baseline_r": 0.5, "best_epoch": 2 + seed}})
    record(uri, "stab", "stability", runs)

    markdown = build(load_sweep(MlflowClient(uri), "stab")).markdown

    assert "| frozen baseline | 9 | 0.500 | 0.000 | 0.500 | 0.500 | | | |" in markdown
    assert "| LoRA rank 4 | 3 | 0.620 | 0.020 | 0.600 | 0.640 | +0.120 | 3.0 | 1.0 |" in markdown
    assert "| full fine-tuning | 3 | 0.550 | 0.030 | 0.520 | 0.580 | +0.050 | 3.0 | 1.0 |" in markdown
    assert "| readout only (lr 0) | 3 | 0.510 | 0.010 | 0.500 | 0.520 | +0.010 | 3.0 | 1.0 |" in markdown


def test_transfer_report_pairs_every_backbone_with_every_subject(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record(uri, "transfer", "transfer", [
        {"subject": "UTS01", "params": {"lr": 0.01},
         "metrics": {"test_r": 0.60, "baseline_r": 0.50, "transfer_r.UTS02": 0.57, "transfer_baseline_r.UTS02": 0.52,
                     "test_readout_r": 0.59, "transfer_readout_r.UTS02": 0.56, "transfer_baseline_readout_r.UTS02": 0.51,
                     "transfer_r_25pct.UTS02": 0.40, "transfer_baseline_r_25pct.UTS02": 0.30}},
        {"subject": "UTS02", "params": {"lr": 0.02},
         "metrics": {"test_r": 0.58, "baseline_r": 0.52, "transfer_r.UTS01": 0.55, "transfer_baseline_r.UTS01": 0.50,
                     "test_readout_r": 0.57, "transfer_readout_r.UTS01": 0.54, "transfer_baseline_readout_r.UTS01": 0.49}},
    ], subjects=("UTS01", "UTS02"))

    report = build(load_sweep(MlflowClient(uri), "transfer"))

    ridge, bottleneck = report.markdown.split("### Bottleneck readout")
    assert "| pretrained | 0.500 | 0.520 |" in ridge.splitlines()
    assert "| UTS01 (tuned, trial transfer_00000) | 0.600 (+0.100) | 0.570 (+0.050) |" in ridge.splitlines()
    assert "| UTS02 (tuned, trial transfer_00001) | 0.550 (+0.050) | 0.580 (+0.060) |" in ridge.splitlines()
    assert "| pretrained | 0.490 | 0.510 |" in bottleneck.splitlines()
    assert "| UTS01 (tuned, trial transfer_00000) | 0.590 (+0.100) | 0.560 (+0.050) |" in bottleneck.splitlines()
    assert list(report.figures) == ["transfer_ridge.png", "transfer_bottleneck.png", "data_efficiency.png"]
    # The data-efficiency curve of UTS01's backbone for UTS02 (transfer_fractions), 100% from the matrix.
    efficiency = bottleneck.split("### Data efficiency")[1].split("\n\n")[2].splitlines()
    assert efficiency[2:] == ["| UTS01 (trial transfer_00000) | UTS02 | 25% | 0.300 | 0.400 | +0.100 |",
                              "| UTS01 (trial transfer_00000) | UTS02 | 100% | 0.520 | 0.570 | +0.050 |"]


def test_data_efficiency_compares_backbones_tuned_on_one_and_on_two_subjects(tmp_path):
    """With ``subjects`` searched, each set of training subjects is its own backbone in the curve."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    curve = {"alone": (0.40, 0.50), "joint": (0.42, 0.55)}
    record(uri, "eff", "transfer", [
        {"subject": "UTS01", "params": {"subjects": subjects},
         "metrics": {"test_r": 0.6, "baseline_r": 0.5, "best_val_r": val, "transfer_r.UTS03": r100,
                     "transfer_baseline_r.UTS03": 0.52, "transfer_r_25pct.UTS03": r25,
                     "transfer_baseline_r_25pct.UTS03": 0.30}}
        for subjects, val, (r25, r100) in (("[]", 0.5, curve["alone"]), ("UTS02", 0.6, curve["joint"]),
                                            ("UTS02", 0.4, (0.0, 0.0)))])  # a worse joint trial: not shown

    report = build(load_sweep(MlflowClient(uri), "eff"))

    rows = [line for line in report.markdown.splitlines() if "| UTS03 |" in line]
    assert rows == ["| UTS01 (trial eff_00000) | UTS03 | 25% | 0.300 | 0.400 | +0.100 |",
                    "| UTS01 (trial eff_00000) | UTS03 | 100% | 0.520 | 0.500 | -0.020 |",
                    "| UTS01+UTS02 (trial eff_00001) | UTS03 | 25% | 0.300 | 0.420 | +0.120 |",
                    "| UTS01+UTS02 (trial eff_00001) | UTS03 | 100% | 0.520 | 0.550 | +0.030 |"]
    axes = report.figures["data_efficiency.png"].axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    assert lines == {"tuned on UTS01": [0.40, 0.50], "tuned on UTS01+UTS02": [0.42, 0.55], "pretrained": [0.30, 0.52]}


def test_report_command_rebuilds_a_report_into_the_parent_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record(uri, "roi", "roi", [{"subject": "UTS01", "params": {"lr": 0.01},
                                "metrics": {**_rois("test_r", BASELINE), **_rois("baseline_r", BASELINE)}}])
    done = subprocess.run([sys.executable, "-m", "sweeper.report", "--experiment", "roi", "--tracking-uri", uri,
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Sweep `roi`")
    client = MlflowClient(uri)
    (parent,) = [run for run in client.search_runs([client.get_experiment_by_name("roi").experiment_id])
                 if run.data.tags["sweep.role"] == "parent"]
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/report.md", "report/roi_matrix_UTS01.png"}

    missing = subprocess.run([sys.executable, "-m", "sweeper.report", "--experiment", "nope", "--tracking-uri", uri],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: no MLflow experiment 'nope' at {uri}"


@pytest.mark.parametrize("params, label", [
    ({"lr": "0.01"}, "whole cortex"), ({"roi_weight.AC": "1"}, "AC"),
    ({"roi_weight.AC": "1", "roi_weight.rest": "0.25"}, "AC=1, rest=0.25")])
def test_weighting_labels(params, label):
    assert weighting_label(params) == label


def test_method_labels():
    assert method_label({"lora_rank": "0", "lr": "0.01", "seed": "1"}, ["seed", "lora_rank"]) == "full fine-tuning"
    assert method_label({"lora_rank": "4", "lr": "0.0", "seed": "1"}, ["seed", "lr"]) == "readout only (lr 0)"
    assert method_label({"lora_rank": "4", "lr": "0.01", "loss": "mse"}, ["loss"]) == "LoRA rank 4 (loss=mse)"


def test_probes_report_shows_each_family_and_layer_pretrained_vs_tuned(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = {"test_r": 0.6, "baseline_r": 0.5}
    for layer, (pretrained, tuned) in {1: (0.80, 0.80), 3: (0.886, 0.95)}.items():
        metrics.update({f"probe_baseline_r.planted.L{layer}": pretrained, f"probe_r.planted.L{layer}": tuned,
                        f"probe_baseline_r.acoustic.L{layer}": 0.18, f"probe_r.acoustic.L{layer}": 0.18})
    record(uri, "probes", "probes", [{"subject": "UTS01", "params": {"lr": 0.01}, "metrics": metrics}])

    report = build(load_sweep(MlflowClient(uri), "probes"))

    lines = report.markdown.splitlines()
    assert "| planted | 3 | 0.886 | 0.950 | +0.064 |" in lines and "| acoustic | 1 | 0.180 | 0.180 | +0.000 |" in lines
    axes = report.figures["probes_UTS01.png"].axes[0]
    assert axes.get_xlabel() == "layer probed" and len(axes.lines) == 4
    assert {text.get_text() for text in axes.get_legend().get_texts()} == {
        "acoustic: pretrained", "acoustic: tuned", "planted: pretrained", "planted: tuned"}
