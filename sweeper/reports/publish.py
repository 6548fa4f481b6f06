"""Building a sweep's report from the store, and publishing it to its MLflow parent runs and a folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.cli import progress

from .probes import probes_report
from .roi import roi_report
from .stability import stability_report
from .store import Report, ReportError, Sweep, load_sweep
from .sweep import sweep_table
from .transfer import transfer_report


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


def write_report(tracking_uri: str, experiment: str, out: Path) -> None:
    """The sweep's report into its MLflow parent runs and ``out``; a failure only warns (the sweep is done)."""
    try:
        sweep, folder = report_sweep(tracking_uri, experiment, out)
    except Exception as error:  # noqa: BLE001 - e.g. MLflow down: the results are safe, the report can wait
        progress(f"warning: no report ({type(error).__name__}: {str(error).splitlines()[0][:200]}); build it later with: "
                 f"python -m sweeper.report --experiment {experiment} --tracking-uri {tracking_uri} --out {out}")
        return
    print(f"report ({sweep.kind}): {folder / 'report.md'}, also under report/ in the MLflow parent runs")
