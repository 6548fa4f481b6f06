"""A trial's identity: a finished trial is found again wherever it ran."""

from __future__ import annotations

import json

from core.config import TrainConfig
from sweeper.trial import finished


def test_a_finished_trial_is_not_trained_again_on_another_device(tmp_path):
    """A driver restarted after a GPU trial finished: the trial reports its results instead of retraining,
    whichever device (``cuda:1`` of a second worker, ``auto``) the configuration now names."""
    ran = TrainConfig(readout_layer=3, lora_rank=2, device="cuda:0")
    (tmp_path / "summary.json").write_text(json.dumps({"config": ran.to_dict(), "best_epoch": 1}))
    (tmp_path / "loop_seconds.json").write_text(json.dumps({"loop_seconds": 12.5}))
    for device in ("cuda:0", "cuda:1", "auto", "cpu"):
        summary, seconds = finished(ran.replace(device=device), tmp_path)
        assert summary["best_epoch"] == 1 and seconds == 12.5
    assert finished(ran.replace(lora_rank=4), tmp_path) is None  # other settings: a different run
    (tmp_path / "loop_seconds.json").unlink()
    assert finished(ran, tmp_path) is None  # results not complete


def test_a_trial_whose_study_failed_is_evaluated_again(tmp_path):
    """Its results are kept, but it is not complete: a retry or --resume repeats the evaluation."""
    ran = TrainConfig(readout_layer=3, probes=["acoustic"])
    summary = {"config": ran.to_dict(), "best_epoch": 1, "failed_studies": {"probes": "a TextGrid went missing"}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "loop_seconds.json").write_text(json.dumps({"loop_seconds": 12.5}))
    assert finished(ran, tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "failed_studies": {}}))
    assert finished(ran, tmp_path) is not None
