"""The ``roi`` report: ROI-targeted tuning as a trained-on x evaluated-on matrix per subject."""

from __future__ import annotations

from .. import plots
from .store import Report, Sweep, TrialRun, WHOLE_CORTEX
from .tables import best_per_label, fmt, matrix_cell, per_subject


def weighting_label(params: dict[str, str]) -> str:
    """A trial's loss weighting from its ``roi_weight.<ROI>`` params: ``whole cortex``, ``AC``, ``AC=1, rest=0.25``."""
    weights = {key.split(".", 1)[1]: float(value) for key, value in params.items() if key.startswith("roi_weight.")}
    if not weights:
        return "whole cortex"
    if len(weights) == 1:
        return next(iter(weights))
    return ", ".join(f"{roi}={weight:g}" for roi, weight in weights.items())


def roi_report(sweep: Sweep) -> Report:
    return per_subject(
        sweep, "ROI-targeted fine-tuning",
        "Each row is a model trained with one loss weighting; each column an ROI it is evaluated on "
        "(ridge refit on the tuned features, test stories). Cells: mean test r, its change from the "
        "frozen baseline (ridge on the pretrained model) and, where the noise ceiling is known, the "
        "fraction of it reached.", lambda subject, trials: _roi_section(sweep, subject, trials))


def _roi_section(sweep: Sweep, subject: str, trials: list[TrialRun]) -> tuple[list[str], dict]:
    rois = trials[0].rois()
    rows = best_per_label(trials, weighting_label, sweep)
    rows = dict(sorted(rows.items(), key=lambda item: item[0] != "whole cortex"))  # stable: trial order after
    baseline = {roi: trials[0].value("baseline_r", roi) for roi in rois}
    lines = [f"### {subject}", "", "| trained on \\ evaluated on | " + " | ".join(rois) + " |",
             "|---|" + "---|" * len(rois),
             "| frozen baseline | " + " | ".join(
                 matrix_cell(baseline[roi], None, trials[0].value("baseline_r_ceiling_fraction", roi)) for roi in rois) + " |"]
    for label, trial in rows.items():
        lines.append(f"| {label} | " + " | ".join(
            matrix_cell(trial.value("test_r", roi), trial.value("test_r", roi) - baseline[roi],
                  trial.value("test_r_ceiling_fraction", roi)) for roi in rois) + " |")
    deltas = [[trial.value("test_r", roi) - baseline[roi] for roi in rois] for trial in rows.values()]
    values = [[trial.value("test_r", roi) for roi in rois] for trial in rows.values()]
    name = f"roi_matrix_{subject}.png"
    figure = plots.change_matrix(
        deltas, values, list(rows), [f"{'whole cortex' if roi == WHOLE_CORTEX else roi}\nfrozen {fmt(baseline[roi])}"
                                     for roi in rois],
        title=f"{subject}: test r by loss weighting, change from the frozen baseline",
        xlabel="evaluated on (ROI; frozen-baseline r below)", ylabel="trained on (loss weighting)",
        change_label="test r minus frozen-baseline r")
    return lines + ["", f"![{subject}]({name})", ""], {name: figure}
