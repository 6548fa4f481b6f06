"""The ``transfer`` report: cross-subject transfer matrices and data-efficiency curves."""

from __future__ import annotations

import math
import re

from .. import plots
from .store import Report, Sweep, TrialRun
from .tables import best_per_label, best_trial, fmt


def transfer_report(sweep: Sweep) -> Report:
    subjects = list(sweep.parents)
    best = {}
    for subject in subjects:
        trials = sweep.finished(subject)
        if trials:
            best[subject] = best_trial(trials)
    lines = ["## Cross-subject transfer", "",
             "Rows: the subject whose best tuned model gives the backbone; columns: the subject whose responses "
             "are predicted by a new readout on that backbone's features (test stories). The diagonal is each "
             "subject's own tuned model; the first row the pretrained model. Cells: mean test r and the change "
             "from the pretrained model.", ""]
    figures = {}
    if len(best) < 2:
        lines += ["Fewer than two subjects have a finished trial.", ""]
    else:
        targets = list(best)
        for readout, own, prefix in (("ridge", "test_r", "transfer"), ("bottleneck", "test_readout_r", "transfer_readout")):
            table, figure = _transfer_matrix(best, targets, readout, own, prefix)
            lines += table
            if figure is not None:
                name = f"transfer_{readout}.png"
                figures[name] = figure
                lines += [f"![transfer, {readout} readout]({name})", ""]
    efficiency, figure = _data_efficiency(sweep)
    lines += efficiency
    if figure is not None:
        figures["data_efficiency.png"] = figure
        lines += ["![data efficiency](data_efficiency.png)", ""]
    return Report("\n".join(lines), figures)


def trained_on(subject: str):
    """``params -> label`` for ``subject``'s trials: the subjects whose responses trained the backbone,
    ``UTS01`` or ``UTS01+UTS02`` (``subjects``)."""
    def label(params: dict[str, str]) -> str:
        others = [s for s in params.get("subjects", "[]").split(",") if s not in ("[]", "", "none", subject)]
        return "+".join([subject, *others])
    return label


_FRACTION = re.compile(r"^transfer_r_([0-9.]+)pct\.([^.]+)$")


def data_efficiency(trial: TrialRun) -> dict[str, dict[float, tuple[float, float]]]:
    """``{target: {percent of its training stories: (pretrained r, tuned r)}}`` of a trial, 100% included."""
    out: dict[str, dict[float, tuple[float, float]]] = {}
    for key, value in trial.metrics.items():
        match = _FRACTION.match(key)
        if match:
            percent, target = float(match.group(1)), match.group(2)
            out.setdefault(target, {})[percent] = (
                trial.metrics.get(f"transfer_baseline_r_{match.group(1)}pct.{target}", math.nan), value)
    for target, curve in out.items():
        curve[100.0] = (trial.metrics.get(f"transfer_baseline_r.{target}", math.nan),
                        trial.metrics.get(f"transfer_r.{target}", math.nan))
    return {target: dict(sorted(curve.items())) for target, curve in sorted(out.items())}


def _data_efficiency(sweep: Sweep) -> tuple[list[str], object]:
    """Per backbone -> target pair: test r of a new ridge readout fitted on a share of the target's stories.

    A backbone is named by the subjects that trained it (:func:`trained_on`): with
    ``subjects`` searched, each set of training subjects gets its best trial, so backbones
    tuned on 1 and on N subjects are compared on the same new subject.
    """
    lines, curves = [], {}
    for subject in sweep.parents:
        trials = [t for t in sweep.finished(subject) if data_efficiency(t)]
        for label, trial in best_per_label(trials, trained_on(subject), sweep).items():
            for target, curve in data_efficiency(trial).items():
                if not lines:
                    lines = ["### Data efficiency", "",
                             "A new subject's ridge readout fitted on a share of its training stories (nested subsets), "
                             "on the tuned backbone and on the pretrained one; test r. `transfer_fractions` sets the "
                             "shares. A backbone is named by the subjects whose responses trained it.",
                             "", "| backbone | readout for | stories | pretrained | tuned | change |",
                             "|---|---|---|---|---|---|"]
                for percent, (pretrained, tuned) in curve.items():
                    lines.append(f"| {label} (trial {trial.trial_id}) | {target} | {percent:g}% | {fmt(pretrained)} | "
                                 f"{fmt(tuned)} | {fmt(tuned - pretrained, sign=True)} |")
                curves.setdefault(target, {})[label] = curve
    if not lines:
        return [], None
    return lines + [""], plots.data_efficiency_lines(curves, title="A new subject's readout from a share of its stories")


def _transfer_matrix(best: dict[str, TrialRun], targets: list[str], readout: str, own: str, prefix: str):
    """One readout's table and figure: ``prefix_r.<B>`` of A's best trial, ``own`` on the diagonal."""
    base = prefix.replace("transfer", "transfer_baseline")
    pretrained = {}
    for target in targets:
        refs = [best[a].metrics.get(f"{base}_r.{target}") for a in targets if a != target]
        refs = [r for r in refs if r is not None]
        pretrained[target] = refs[0] if refs else math.nan
    cells = [[best[a].metrics.get(own if a == b else f"{prefix}_r.{b}", math.nan) for b in targets] for a in targets]
    if all(not math.isfinite(v) for row, a in zip(cells, targets) for v, b in zip(row, targets) if a != b):
        return [f"### {readout.capitalize()} readout", "", "No transfer results (set `transfer_to:`).", ""], None
    deltas = [[v - pretrained[b] for v, b in zip(row, targets)] for row in cells]
    lines = [f"### {readout.capitalize()} readout", "", "| backbone \\ readout for | " + " | ".join(targets) + " |",
             "|---|" + "---|" * len(targets), "| pretrained | " + " | ".join(fmt(pretrained[t]) for t in targets) + " |"]
    for source, row, change in zip(targets, cells, deltas):
        lines.append(f"| {source} (tuned, trial {best[source].trial_id}) | "
                     + " | ".join(f"{fmt(v)} ({fmt(d, sign=True)})" for v, d in zip(row, change)) + " |")
    lines.append("")
    figure = plots.change_matrix(
        deltas, cells, [f"{s} (tuned)" for s in targets], [f"{t}\npretrained {fmt(pretrained[t])}" for t in targets],
        title=f"Cross-subject transfer, {readout} readout:\ntest r, change from the pretrained model",
        xlabel="readout fitted for (subject; pretrained r below)", ylabel="backbone tuned on",
        change_label="test r minus pretrained-model r")
    return lines, figure
