"""The sweep folder's layout and its ``sweep.json``, in one place.

``--storage DIR`` of ``python -m sweeper.launch`` holds a whole sweep::

    DIR/sweep.json             what sync and report need to know (experiment, tracking, definition, subjects)
    DIR/mlflow.db              the MLflow store, unless a tracking URI is given
    DIR/mlartifacts/           its artifacts (with the SQLite store only)
    DIR/tune/<experiment>/     Tune's experiment state, one folder per trial (result.json)
    DIR/trials/<S>/<trial id>/ a trial's checkpoints and results (summary.json, figures, voxel r)
    DIR/train/                 Ray Train runs of data-parallel trials
    DIR/report/                the sweep's report (report.md and its figures)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class SweepFolder:
    """The folder of one sweep (``--storage``); its parts' paths (module docstring)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def train(self) -> Path:
        """Ray Train's storage: an absolute path (Ray refuses a relative one)."""
        return self.root.resolve() / "train"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def trial(self, subject: str, trial_id: str) -> Path:
        return self.root / "trials" / subject / trial_id

    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def artifact_location(self, tracking_uri: str) -> str | None:
        """Where MLflow keeps artifacts: in the folder with the SQLite store; the server's choice otherwise."""
        return (self.root / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite:") else None

    def write_sweep_file(self, **record) -> None:
        """What sync needs to know about a sweep (experiment, tracking, definition, subjects)."""
        (self.root / SWEEP_FILE).write_text(json.dumps(record, indent=2, default=str))

    def read_sweep_file(self) -> dict:
        path = self.root / SWEEP_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found; is {self.root} the folder of a sweep (--storage of sweeper.launch)?") from None
        except ValueError as error:
            raise ConfigError(f"{path}: unreadable ({error})") from None
