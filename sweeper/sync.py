"""Record a sweep in MLflow from its sweep folder: ``python -m sweeper.sync --storage DIR``.

Live tracking (:class:`sweeper.tracking.MLflowTracker`) waits out a tracking outage, but
calls still queued when the sweep ends, or made by a driver that was killed, never reach
MLflow. Everything they carried is in the sweep folder: Tune's experiment state (each
trial's status and configuration), each trial's ``result.json`` (every result it
reported) and each trial's output folder (``summary.json`` with the per-epoch history,
figures, voxel r). This command records the sweep from those files as live tracking would
have, adding only what MLflow lacks, so it is safe to run at any time and more than once.

It also fills a gap live tracking cannot see: an epoch whose report died with its node
after the checkpoint was written (the retried trial goes on from the next epoch); the
trial's ``summary.json`` history still has it.

    python -m sweeper.sync --storage runs/demo [--tracking-uri URI]

The tracking URI defaults to the one the sweep used (recorded in ``DIR/sweep.json``). The
sweep's report (:mod:`sweeper.report`) is then built again from the completed runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from core.cli import progress, quiet_libraries, run
from core.errors import BrainsweepError, ConfigError
from core.tuning.protocol import improves

from .folder import SweepFolder
from .reports.publish import write_report
from .trial import EpochReports

class TrackingError(BrainsweepError):
    """MLflow did not take the sweep's records."""


def load_trials(tune_dir: Path) -> list:
    """The Tune trials of an experiment folder, with their last status, config and last result."""
    from ray.tune import ExperimentAnalysis

    try:
        return list(ExperimentAnalysis(str(tune_dir)).trials)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"{tune_dir}: no Tune experiment state ({str(error).splitlines()[0]})") from None


def trial_results(result_file: Path, summary_file: Path) -> list[dict]:
    """Every result a trial reported (``result.json``), then the epochs of its history that no result carries."""
    rows = []
    if result_file.is_file():
        for line in result_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
    try:
        history = json.loads(summary_file.read_text())["history"]
    except (OSError, ValueError, KeyError):
        return rows
    reported = {row.get("epoch") for row in rows}
    reports, best = EpochReports(), {"epoch": 0, "val_r": -math.inf}
    for record in history:
        if improves(record["epoch"], record["val_r"], best["val_r"]):
            best = {"epoch": record["epoch"], "val_r": record["val_r"]}
        flat = reports.epoch(dict(record, best_epoch=best["epoch"], best_val_r=best["val_r"]))
        if record["epoch"] not in reported:
            rows.append(flat)
    return rows


def sync(storage: Path, tracking_uri: str | None = None) -> dict[str, int]:
    """Record the sweep in ``storage`` in MLflow (see the module docstring); returns the counts of :meth:`replay`."""
    from .tracking import MLflowTracker

    folder = SweepFolder(Path(storage).resolve())
    sweep = folder.read_sweep_file()
    trials = load_trials(folder.tune / sweep["experiment"])
    uri = tracking_uri or sweep["tracking_uri"]
    artifacts = sweep.get("artifact_location")
    if uri != sweep["tracking_uri"]:  # another store: artifacts as sweeper.launch would place them for it
        artifacts = folder.artifact_location(uri)
    tracker = MLflowTracker(uri, sweep["experiment"], artifacts,
                            sweep=sweep["sweep"], subjects=sweep["subjects"],
                            trial_dir=lambda trial: folder.trial(trial.config["subject"], trial.trial_id),
                            storage=str(folder.root))

    def results(trial) -> list[dict]:
        out = folder.trial(trial.config["subject"], trial.trial_id)
        return trial_results(Path(trial.storage.trial_fs_path) / "result.json", out / "summary.json")

    return tracker.replay(trials, results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.sync", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the sweep folder (--storage of sweeper.launch)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the sweep used)")
    args = parser.parse_args(argv)
    storage = Path(args.storage).expanduser()
    if not storage.is_dir():
        raise ConfigError(f"{storage}: sweep folder not found")
    folder = SweepFolder(storage)
    uri = args.tracking_uri or folder.read_sweep_file()["tracking_uri"]
    progress(f"recording {storage} in MLflow at {uri}")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        counts = sync(storage, uri)
    except (OSError, MlflowException) as error:
        raise TrackingError(f"MLflow at {uri}: {str(error).strip().splitlines()[0][:300]} "
                            "(nothing is lost: run this command again once it answers)") from None
    print(f"synced {counts['trials']} trials: {counts['points']} metric values added")
    write_report(uri, folder.read_sweep_file()["experiment"], SweepFolder(storage.resolve()).report)
    return 0


if __name__ == "__main__":
    quiet_libraries()
    sys.exit(run(main))
