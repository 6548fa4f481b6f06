"""The ``probes`` report: word-level probes per family and layer, pretrained vs the best tuned model."""

from __future__ import annotations

import math

from .. import plots
from .store import Report, Sweep, TrialRun
from .tables import best_trial, fmt, per_subject


def probe_scores(trial: TrialRun) -> dict[str, dict[int, tuple[float, float]]]:
    """``{family: {layer: (pretrained r, tuned r)}}`` from a trial's ``probe_*`` metrics."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for key, value in trial.metrics.items():
        if key.startswith("probe_r."):
            family, layer = key[len("probe_r."):].rsplit(".L", 1)
            pretrained = trial.metrics.get(f"probe_baseline_r.{family}.L{layer}", math.nan)
            out.setdefault(family, {})[int(layer)] = (pretrained, value)
    return {family: dict(sorted(layers.items())) for family, layers in sorted(out.items())}


def probes_report(sweep: Sweep) -> Report:
    return per_subject(
        sweep, "Linear probes",
        "Ridge probes from each layer's features at every word to word-level targets, fitted on the "
        "training stories' words and scored on the test stories' words (mean held-out r over the "
        "family's target dimensions), for the pretrained model and for each subject's best tuned model.",
        _probes_section, trials_of=lambda subject: [t for t in sweep.finished(subject) if probe_scores(t)],
        empty="No finished trial has probe results (set `probes:`).")


def _probes_section(subject: str, trials: list[TrialRun]) -> tuple[list[str], dict]:
    best = best_trial(trials)
    scores = probe_scores(best)
    lines = [f"### {subject} (trial {best.trial_id})", "", "| family | layer | pretrained r | tuned r | change |",
             "|---|---|---|---|---|"]
    for family, layers in scores.items():
        for layer, (pretrained, tuned) in layers.items():
            lines.append(f"| {family} | {layer} | {fmt(pretrained)} | {fmt(tuned)} | {fmt(tuned - pretrained, sign=True)} |")
    name = f"probes_{subject}.png"
    figure = plots.probe_lines(scores, title=f"{subject}: word-level probes, pretrained vs tuned (trial {best.trial_id})")
    return lines + ["", f"![{subject}]({name})", ""], {name: figure}
