"""Study reports from the MLflow store alone: ``python -m sweeper.report``.

A sweep's file names its report (``report:`` in the search space; see
:mod:`sweeper.space`). Each report is built only from what the sweep recorded in MLflow:
the parent runs' ``search_space.yaml`` and the child runs' params, metrics and tags. It
is a markdown file with tables and PNG figures, logged under ``report/`` in every parent
run of the sweep (one per subject) and, with ``--out``, written to a folder.
``python -m sweeper.launch`` builds it at the end of a sweep; this command rebuilds it,
e.g. after ``python -m sweeper.sync`` or on another machine.

Reports:

- ``sweep`` (every sweep): per subject, each finished trial's searched settings, best
  validation r, test r and frozen baseline r; the best trial marked.
- ``roi``: ROI-targeted tuning. Per subject a trained-on x evaluated-on matrix: mean
  test r of each loss weighting on each ROI, its change from the frozen baseline, and its
  fraction of the noise ceiling.
- ``stability``: configurations repeated over seeds (LoRA, full fine-tuning as
  ``lora_rank: 0``, the readout-only control ``lr: 0``): mean and spread of test r and of
  the best epoch next to the frozen baseline.
- ``transfer``: cross-subject transfer (trials run with ``transfer_to``). Per ordered pair
  (A, B): B's ridge readout on A's best tuned backbone vs B's own best tuned model vs the
  pretrained model.
- ``probes``: word-level linear probes (trials run with ``probes``): per target family and
  layer, held-out r from the pretrained and from the best tuned model.

    python -m sweeper.report --experiment roi [--tracking-uri URI] [--out DIR] [--report KIND]

Example
-------
>>> sweep = load_sweep(MlflowClient("sqlite:///runs/roi/mlflow.db"), "roi")  # doctest: +SKIP
>>> report = build(sweep)  # doctest: +SKIP
>>> publish(MlflowClient("sqlite:///runs/roi/mlflow.db"), sweep, report, out=Path("runs/roi/report"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.cli import progress, quiet_libraries, run
from core.errors import BrainsweepError

from . import plots
from .space import REPORTS

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


def build(sweep: Sweep, kind: str | None = None) -> Report:
    """The report the sweep's file asks for (or ``kind``), then the table every sweep gets."""
    kind = kind or sweep.kind
    builders = {"sweep": None, "roi": roi_report, "stability": stability_report, "transfer": transfer_report,
                "probes": probes_report}
    if kind not in builders:
        raise ReportError(f"sweep {sweep.experiment!r}: unknown report {kind!r} (known: {', '.join(builders)})")
    header = [f"# Sweep `{sweep.experiment}`", ""]
    if sweep.definition.get("description"):
        header += [str(sweep.definition["description"]), ""]
    study = builders[kind](sweep) if builders[kind] else Report("")
    table = sweep_table(sweep)
    return Report("\n".join(header) + "\n" + (study.markdown + "\n" if study.markdown else "") + table,
                  study.figures)


def publish(client, sweep: Sweep, report: Report, out: Path | None = None, artifact_path: str = "report") -> Path:
    """Write the report (``report.md`` and its PNGs) to ``out`` (a temp folder if None) and log it
    under ``artifact_path`` in every parent run of the sweep. Returns the folder."""
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="brainsweep-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(report.markdown)
    for name, figure in report.figures.items():
        figure.savefig(folder / name, dpi=120)
    for run_id in sweep.parents.values():
        client.log_artifacts(run_id, str(folder), artifact_path)
    return folder


# -- the table of every sweep ---------------------------------------------------------------


def _searched(sweep: Sweep) -> list[str]:
    """Param names that differ between trials (the searched settings, as MLflow params)."""
    names = sorted({name for trial in sweep.trials for name in trial.params} - {"subject"})
    return [name for name in names if len({trial.params.get(name) for trial in sweep.trials}) > 1]


def _f(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def sweep_table(sweep: Sweep) -> str:
    searched = _searched(sweep)
    metric = sweep.definition.get("objective", {}).get("metric", "best_val_r")
    header = ["trial", *searched, metric, "test r", "frozen baseline r", "status"]
    lines = ["## Trials", ""]
    for subject in sweep.parents:
        lines += [f"### {subject}", "", _row(header), _row(["---"] * len(header))]
        for trial in (trial for trial in sweep.trials if trial.subject == subject):
            lines.append(_row([f"**{trial.trial_id}** (best)" if trial.best else trial.trial_id,
                               *(trial.params.get(p, "") for p in searched), _f(trial.metrics.get(metric, math.nan)),
                               _f(trial.value("test_r")), _f(trial.value("baseline_r")),
                               "stopped early" if trial.stopped_early else trial.status.lower()]))
        lines.append("")
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# -- ROI-targeted tuning ----------------------------------------------------------------------


def weighting_label(params: dict[str, str]) -> str:
    """A trial's loss weighting from its ``roi_weight.<ROI>`` params: ``whole cortex``, ``AC``, ``AC=1, rest=0.25``."""
    weights = {key.split(".", 1)[1]: float(value) for key, value in params.items() if key.startswith("roi_weight.")}
    if not weights:
        return "whole cortex"
    if len(weights) == 1:
        return next(iter(weights))
    return ", ".join(f"{roi}={weight:g}" for roi, weight in weights.items())


def roi_report(sweep: Sweep) -> Report:
    return _per_subject(
        sweep, "ROI-targeted fine-tuning",
        "Each row is a model trained with one loss weighting; each column an ROI it is evaluated on "
        "(ridge refit on the tuned features, test stories). Cells: mean test r, its change from the "
        "frozen baseline (ridge on the pretrained model) and, where the noise ceiling is known, the "
        "fraction of it reached.", lambda subject, trials: _roi_section(sweep, subject, trials))


def _roi_section(sweep: Sweep, subject: str, trials: list[TrialRun]) -> tuple[list[str], dict]:
    rois = trials[0].rois()
    rows = _best_per_label(trials, weighting_label, sweep)
    rows = dict(sorted(rows.items(), key=lambda item: item[0] != "whole cortex"))  # stable: trial order after
    baseline = {roi: trials[0].value("baseline_r", roi) for roi in rois}
    lines = [f"### {subject}", "", "| trained on \\ evaluated on | " + " | ".join(rois) + " |",
             "|---|" + "---|" * len(rois),
             "| frozen baseline | " + " | ".join(
                 _cell(baseline[roi], None, trials[0].value("baseline_r_ceiling_fraction", roi)) for roi in rois) + " |"]
    for label, trial in rows.items():
        lines.append(f"| {label} | " + " | ".join(
            _cell(trial.value("test_r", roi), trial.value("test_r", roi) - baseline[roi],
                  trial.value("test_r_ceiling_fraction", roi)) for roi in rois) + " |")
    deltas = [[trial.value("test_r", roi) - baseline[roi] for roi in rois] for trial in rows.values()]
    values = [[trial.value("test_r", roi) for roi in rois] for trial in rows.values()]
    name = f"roi_matrix_{subject}.png"
    figure = plots.change_matrix(
        deltas, values, list(rows), [f"{'whole cortex' if roi == WHOLE_CORTEX else roi}\nfrozen {_f(baseline[roi])}"
                                     for roi in rois],
        title=f"{subject}: test r by loss weighting, change from the frozen baseline",
        xlabel="evaluated on (ROI; frozen-baseline r below)", ylabel="trained on (loss weighting)",
        change_label="test r minus frozen-baseline r")
    return lines + ["", f"![{subject}]({name})", ""], {name: figure}


def _per_subject(sweep: Sweep, heading: str, intro: str, section, trials_of=None,
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


def _cell(value: float, change: float | None, fraction: float) -> str:
    text = _f(value)
    extra = [] if change is None else [_f(change, sign=True)]
    if math.isfinite(fraction):
        extra.append(f"{100 * fraction:.0f}% of ceiling")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _best_trial(trials: list[TrialRun]) -> TrialRun:
    """The trial tagged best (by the sweep's objective), else the one with the best validation r."""
    return next((trial for trial in trials if trial.best), None) or max(trials, key=lambda t: t.value("best_val_r"))


def _best_per_label(trials: list[TrialRun], label, sweep: Sweep) -> dict[str, TrialRun]:
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


# -- stability over seeds -----------------------------------------------------------------------


def method_label(params: dict[str, str], varying: list[str]) -> str:
    """``LoRA rank 4`` / ``full fine-tuning`` / ``readout only (lr 0)``, plus the other varying settings."""
    if float(params.get("lr", "nan")) == 0:
        method = "readout only (lr 0)"
    elif params.get("lora_rank") == "0":
        method = "full fine-tuning"
    else:
        method = f"LoRA rank {params.get('lora_rank')}"
    rest = [f"{name}={params.get(name)}" for name in varying if name not in ("seed", "lora_rank", "lr")]
    return method + (f" ({', '.join(rest)})" if rest else "")


def stability_report(sweep: Sweep) -> Report:
    varying = _searched(sweep)
    return _per_subject(
        sweep, "Stability over seeds",
        "Each configuration is run with several seeds. Test r: ridge refit on the tuned features of the "
        "best epoch; frozen baseline: ridge on the pretrained model (the same for every seed up to the "
        "ridge's cross-validation split).", lambda subject, trials: _stability_section(subject, trials, varying))


def _stability_section(subject: str, trials: list[TrialRun], varying: list[str]) -> tuple[list[str], dict]:
    groups: dict[str, list[TrialRun]] = {}
    for trial in trials:
        groups.setdefault(method_label(trial.params, varying), []).append(trial)
    baseline = [trial.value("baseline_r") for trial in trials]
    lines = [f"### {subject}", "",
             "| configuration | seeds | test r mean | sd | min | max | gain over frozen | best epoch mean | sd |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| frozen baseline | {len(baseline)} | {_f(_mean(baseline))} | {_f(_sd(baseline))} | "
             f"{_f(min(baseline))} | {_f(max(baseline))} | | | |"]
    for label, group in groups.items():
        r = [trial.value("test_r") for trial in group]
        gain = [trial.value("test_r") - trial.value("baseline_r") for trial in group]
        epochs = [trial.metrics.get("best_epoch", math.nan) for trial in group]
        lines.append(f"| {label} | {len(group)} | {_f(_mean(r))} | {_f(_sd(r))} | {_f(min(r))} | {_f(max(r))} | "
                     f"{_f(_mean(gain), sign=True)} | {_f(_mean(epochs), 1)} | {_f(_sd(epochs), 1)} |")
    name = f"stability_{subject}.png"
    figure = plots.seed_spread(
        {label: [trial.value("test_r") for trial in group] for label, group in groups.items()},
        {label: [trial.metrics.get("best_epoch", math.nan) for trial in group] for label, group in groups.items()},
        baseline=_mean(baseline), title=f"{subject}: test r and best epoch over seeds")
    return lines + ["", f"![{subject}]({name})", ""], {name: figure}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _sd(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.stdev(finite) if len(finite) > 1 else math.nan


# -- cross-subject transfer ---------------------------------------------------------------------


def transfer_report(sweep: Sweep) -> Report:
    subjects = list(sweep.parents)
    best = {}
    for subject in subjects:
        trials = sweep.finished(subject)
        if trials:
            best[subject] = _best_trial(trials)
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
        for label, trial in _best_per_label(trials, trained_on(subject), sweep).items():
            for target, curve in data_efficiency(trial).items():
                if not lines:
                    lines = ["### Data efficiency", "",
                             "A new subject's ridge readout fitted on a share of its training stories (nested subsets), "
                             "on the tuned backbone and on the pretrained one; test r. `transfer_fractions` sets the "
                             "shares. A backbone is named by the subjects whose responses trained it.",
                             "", "| backbone | readout for | stories | pretrained | tuned | change |",
                             "|---|---|---|---|---|---|"]
                for percent, (pretrained, tuned) in curve.items():
                    lines.append(f"| {label} (trial {trial.trial_id}) | {target} | {percent:g}% | {_f(pretrained)} | "
                                 f"{_f(tuned)} | {_f(tuned - pretrained, sign=True)} |")
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
             "|---|" + "---|" * len(targets), "| pretrained | " + " | ".join(_f(pretrained[t]) for t in targets) + " |"]
    for source, row, change in zip(targets, cells, deltas):
        lines.append(f"| {source} (tuned, trial {best[source].trial_id}) | "
                     + " | ".join(f"{_f(v)} ({_f(d, sign=True)})" for v, d in zip(row, change)) + " |")
    lines.append("")
    figure = plots.change_matrix(
        deltas, cells, [f"{s} (tuned)" for s in targets], [f"{t}\npretrained {_f(pretrained[t])}" for t in targets],
        title=f"Cross-subject transfer, {readout} readout:\ntest r, change from the pretrained model",
        xlabel="readout fitted for (subject; pretrained r below)", ylabel="backbone tuned on",
        change_label="test r minus pretrained-model r")
    return lines, figure


# -- linear probes ------------------------------------------------------------------------------


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
    return _per_subject(
        sweep, "Linear probes",
        "Ridge probes from each layer's features at every word to word-level targets, fitted on the "
        "training stories' words and scored on the test stories' words (mean held-out r over the "
        "family's target dimensions), for the pretrained model and for each subject's best tuned model.",
        _probes_section, trials_of=lambda subject: [t for t in sweep.finished(subject) if probe_scores(t)],
        empty="No finished trial has probe results (set `probes:`).")


def _probes_section(subject: str, trials: list[TrialRun]) -> tuple[list[str], dict]:
    best = _best_trial(trials)
    scores = probe_scores(best)
    lines = [f"### {subject} (trial {best.trial_id})", "", "| family | layer | pretrained r | tuned r | change |",
             "|---|---|---|---|---|"]
    for family, layers in scores.items():
        for layer, (pretrained, tuned) in layers.items():
            lines.append(f"| {family} | {layer} | {_f(pretrained)} | {_f(tuned)} | {_f(tuned - pretrained, sign=True)} |")
    name = f"probes_{subject}.png"
    figure = plots.probe_lines(scores, title=f"{subject}: word-level probes, pretrained vs tuned (trial {best.trial_id})")
    return lines + ["", f"![{subject}]({name})", ""], {name: figure}


def report_sweep(tracking_uri: str, experiment: str, out: Path | None = None,
                 kind: str | None = None) -> tuple[Sweep, Path]:
    """Load, build and publish the report of one sweep (its own kind, or ``kind`` under
    ``report-<kind>/``); returns the sweep and the report's folder."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri)
    sweep = load_sweep(client, experiment)
    other = kind is not None and kind != sweep.kind
    return sweep, publish(client, sweep, build(sweep, kind), out, f"report-{kind}" if other else "report")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.report", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the sweep's MLflow experiment (its name:)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/<experiment>/mlflow.db)")
    parser.add_argument("--out", help="also write the report here (report.md and PNGs)")
    parser.add_argument("--report", choices=REPORTS,
                        help="another study's report of the same runs (default: the sweep file's report:); "
                             "logged under report-<kind>/")
    args = parser.parse_args(argv)
    uri = (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{Path('runs', args.experiment, 'mlflow.db').resolve()}")
    sweep, folder = report_sweep(uri, args.experiment, Path(args.out) if args.out else None, args.report)
    print(f"{args.experiment}: {args.report or sweep.kind} report of {len(sweep.trials)} trials ({', '.join(sweep.parents)}) "
          f"logged under report/ in each parent run; written to {folder / 'report.md'}")
    return 0


if __name__ == "__main__":
    quiet_libraries()
    sys.exit(run(main))
