"""sweeper.sync's reading of a sweep folder (the replay into a real MLflow server is in test_cluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.sync import trial_results

REPO = Path(__file__).resolve().parent.parent


def _record(epoch: int, val_r: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 - val_r, "val_r": val_r, "val_roi_r": {"AC": val_r + 0.1},
            "seconds": 2.0}


def test_an_epoch_missing_from_the_reports_is_taken_from_the_trial_history(tmp_path):
    """Epoch 1's report died with its node; the retried trial went on at epoch 2."""
    reported = [{"epoch": 0, "val_r": 0.30, "best_val_r": 0.30, "training_iteration": 1},
                {"epoch": 2, "val_r": 0.35, "best_val_r": 0.40, "training_iteration": 1},
                {"epoch": 2, "test_r": 0.5, "done_training": 1, "training_iteration": 2}]
    (tmp_path / "result.json").write_text("".join(json.dumps(row) + "\n" for row in reported) + '{"epoch": 3, "val')
    history = [_record(0, 0.30), _record(1, 0.40), _record(2, 0.35)]
    (tmp_path / "summary.json").write_text(json.dumps({"history": history}))

    rows = trial_results(tmp_path / "result.json", tmp_path / "summary.json")

    assert rows[:3] == reported  # the line cut short by a crash is left out
    (filled,) = rows[3:]
    assert filled["epoch"] == 1 and filled["val_r"] == 0.40 and filled["val_r.AC"] == pytest.approx(0.5)
    assert filled["best_epoch"] == 1 and filled["best_val_r"] == 0.40 and filled["best_val_r.AC"] == pytest.approx(0.5)


def test_a_trial_without_results_or_history_has_no_rows(tmp_path):
    assert trial_results(tmp_path / "result.json", tmp_path / "summary.json") == []


def test_sync_of_a_folder_that_is_no_sweep_is_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sweeper.sync", "--storage", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {tmp_path / 'sweep.json'}: not found; is {tmp_path} the folder of a sweep "
                                   "(--storage of sweeper.launch)?")
