"""A sweep as the MLflow store holds it: its definition, its subjects' parent runs and its trial runs."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import BrainsweepError


WHOLE_CORTEX = "all"


class ReportError(BrainsweepError):
    """The MLflow store has no such sweep, or not what its report needs."""


@dataclass
class TrialRun:
    """One child run of a sweep, as MLflow has it (params are strings)."""

    trial_id: str
    subject: str
    params: dict[str, str]
    metrics: dict[str, float]
    status: str
    best: bool
    stopped_early: bool

    @property
    def finished(self) -> bool:
        """Trained to the end and evaluated on the test stories."""
        return self.status == "FINISHED" and not self.stopped_early and "test_r" in self.metrics

    def rois(self, prefix: str = "test_r") -> list[str]:
        """``all`` then the ROIs of ``prefix.<ROI>`` metrics, sorted."""
        return [WHOLE_CORTEX] + sorted(key[len(prefix) + 1:] for key in self.metrics
                                       if key.startswith(prefix + ".") and "." not in key[len(prefix) + 1:])

    def value(self, prefix: str, roi: str = WHOLE_CORTEX) -> float:
        return self.metrics.get(prefix if roi == WHOLE_CORTEX else f"{prefix}.{roi}", math.nan)


@dataclass
class Sweep:
    """A sweep as recorded in MLflow: its definition, its subjects' parent runs, its trials."""

    experiment: str
    definition: dict
    parents: dict[str, str]  # subject -> parent run id
    trials: list[TrialRun] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.definition.get("report", "sweep"))

    def finished(self, subject: str) -> list[TrialRun]:
        return [trial for trial in self.trials if trial.subject == subject and trial.finished]


@dataclass
class Report:
    """A markdown text and the figures it shows (file name -> matplotlib Figure)."""

    markdown: str
    figures: dict = field(default_factory=dict)


def load_sweep(client, experiment: str) -> Sweep:
    """Read a sweep's runs from MLflow."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}")
    runs = client.search_runs([found.experiment_id], max_results=50000)
    parents = {run.data.tags["sweep.subject"]: run for run in runs if run.data.tags.get("sweep.role") == "parent"}
    if not parents:
        raise ReportError(f"experiment {experiment!r} at {client.tracking_uri} has no sweep (no parent run)")
    first = next(iter(parents.values()))
    with tempfile.TemporaryDirectory(prefix="brainsweep-report-") as folder:
        definition = yaml.safe_load(Path(client.download_artifacts(first.info.run_id, "search_space.yaml", folder)).read_text())
    trials = [
        TrialRun(trial_id=run.data.tags.get("trial_id", run.info.run_id), subject=run.data.tags.get("sweep.subject", ""),
                 params=dict(run.data.params), metrics=dict(run.data.metrics), status=run.info.status,
                 best=run.data.tags.get("best_trial") == "true", stopped_early=run.data.tags.get("stopped_early") == "true")
        for run in runs if run.data.tags.get("sweep.role") == "trial"
    ]
    trials.sort(key=lambda trial: (trial.subject, trial.trial_id))
    return Sweep(experiment, definition, {subject: run.info.run_id for subject, run in sorted(parents.items())}, trials)
