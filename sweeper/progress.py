"""Progress of a sweep on the terminal: one line per epoch result and per finished trial."""

from __future__ import annotations

import math
import sys

from ray.tune import Callback


def _fmt(value) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


class ProgressPrinter(Callback):
    """Prints ``[subject trial] epoch k: val r ...`` lines and a running count of finished trials."""

    def __init__(self, total: int, stream=None):
        self.total = total
        self.finished = 0
        self.stream = stream

    def _print(self, message: str) -> None:
        print(message, file=self.stream or sys.stderr, flush=True)

    def _name(self, trial) -> str:
        return f"[{trial.config.get('subject', '?')} {trial.trial_id}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        settings = ", ".join(f"{k}={v}" for k, v in trial.config.get("settings", {}).items())
        self._print(f"{self._name(trial)} start: {settings or 'fixed settings'}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("done_training"):
            return
        self._print(f"{self._name(trial)} epoch {result.get('epoch')}: val r {_fmt(result.get('val_r'))} "
                    f"(best {_fmt(result.get('best_val_r'))})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        r = trial.last_result or {}
        if r.get("done_training"):
            outcome = f"test r {_fmt(r.get('test_r'))} (baseline {_fmt(r.get('baseline_r'))})"
        else:
            outcome = f"stopped early at epoch {r.get('epoch')}"
        self._print(f"{self._name(trial)} done: {outcome}  [{self.finished}/{self.total} trials]")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished += 1
        self._print(f"{self._name(trial)} FAILED: see {trial.local_path}  [{self.finished}/{self.total} trials]")
