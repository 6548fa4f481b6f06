"""The per-subject ASHA scheduler on real Tune trial objects (no Ray instance needed)."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sweeper.search import SubjectScheduler


def _scheduler(epochs=3):
    spec = SimpleNamespace(scheduler={"grace_period": 1, "reduction_factor": 2})
    scheduler = SubjectScheduler(spec, ["UTS01", "UTS02"], epochs=epochs)
    scheduler.set_search_properties("val_r", "max")
    return scheduler


def _trials(scheduler, subjects):
    trials = [Trial("t", config={"subject": s}, stub=True) for s in subjects]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    return trials


def test_rungs_are_epochs_compared_within_a_subject_and_never_the_last_epoch():
    scheduler = _scheduler(epochs=3)
    good, bad, other = _trials(scheduler, ["UTS01", "UTS01", "UTS02"])
    result = lambda epoch, r: {"epoch": epoch, "val_r": r, "training_iteration": epoch + 1}
    # Epoch 0 (the frozen model, the same for every trial) is never a rung.
    assert scheduler.on_trial_result(None, good, result(0, 0.5)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, good, result(1, 0.9)) == TrialScheduler.CONTINUE
    # Worse than the same subject's trial at the epoch-1 rung: stopped.
    assert scheduler.on_trial_result(None, bad, result(0, 0.5)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bad, result(1, 0.1)) == TrialScheduler.STOP
    # Another subject's trial is not compared with UTS01's.
    assert scheduler.on_trial_result(None, other, result(1, 0.1)) == TrialScheduler.CONTINUE
    # The last epoch and the final result are never stopped, however bad.
    for trial in (good, other):
        assert scheduler.on_trial_result(None, trial, result(3, -1.0)) == TrialScheduler.CONTINUE
        assert scheduler.on_trial_result(None, trial, {**result(3, -1.0), "done_training": 1}) == TrialScheduler.CONTINUE
