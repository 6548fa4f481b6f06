"""What every report's tables share: number formatting, markdown rows, best trials and per-subject sections."""

from __future__ import annotations

import math
import statistics

from .store import Report, Sweep, TrialRun


def fmt(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def searched_params(sweep: Sweep) -> list[str]:
    """Param names that differ between trials (the searched settings, as MLflow params)."""
    names = sorted({name for trial in sweep.trials for name in trial.params} - {"subject"})
    return [name for name in names if len({trial.params.get(name) for trial in sweep.trials}) > 1]


def per_subject(sweep: Sweep, heading: str, intro: str, section, trials_of=None,
                 empty: str = "No trial finished.") -> Report:
    """A study report made of one section per subject: ``section(subject, trials) -> (lines, figures)``."""
    lines, figures = [f"## {heading}", "", intro, ""], {}
    for subject in sweep.parents:
        trials = (trials_of or sweep.finished)(subject)
        if not trials:
            lines += [f"### {subject}", "", empty, ""]
            continue
        more, pictures = section(subject, trials)
        lines += more
        figures.update(pictures)
    return Report("\n".join(lines), figures)


def matrix_cell(value: float, change: float | None, fraction: float) -> str:
    text = fmt(value)
    extra = [] if change is None else [fmt(change, sign=True)]
    if math.isfinite(fraction):
        extra.append(f"{100 * fraction:.0f}% of ceiling")
    return text + (f" ({', '.join(extra)})" if extra else "")


def best_trial(trials: list[TrialRun]) -> TrialRun:
    """The trial tagged best (by the sweep's objective), else the one with the best validation r."""
    return next((trial for trial in trials if trial.best), None) or max(trials, key=lambda t: t.value("best_val_r"))


def best_per_label(trials: list[TrialRun], label, sweep: Sweep) -> dict[str, TrialRun]:
    """One trial per label: the best by the sweep's objective where a label was tried more than once."""
    objective = sweep.definition.get("objective", {})
    metric, sign = objective.get("metric", "best_val_r"), (1 if objective.get("mode", "max") == "max" else -1)
    chosen: dict[str, TrialRun] = {}
    for trial in trials:
        key = label(trial.params)
        score = sign * trial.metrics.get(metric, -math.inf)
        if key not in chosen or score > sign * chosen[key].metrics.get(metric, -math.inf):
            chosen[key] = trial
    return chosen


def finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def finite_sd(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.stdev(finite) if len(finite) > 1 else math.nan
