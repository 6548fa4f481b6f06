"""One search per subject inside one Tune run.

Every subject gets its own Optuna study (hyperparameters can differ per subject) and, with
ASHA, its own rungs (a subject's trials are only compared with each other), yet all
subjects' trials run side by side in one ``Tuner`` sharing the cluster. Two small
dispatchers do it: :class:`SubjectSearcher` hands out trials round-robin over subjects
and routes results to the subject's ``OptunaSearch``; :class:`SubjectScheduler` routes
scheduler events to the subject's ASHA.
"""

from __future__ import annotations

import pickle
import warnings

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .space import SearchSpace, SweepSpec, optuna_point, train_config


def make_optuna(spec: SweepSpec, seed: int) -> OptunaSearch:
    """Seeded TPE for one objective, NSGA-II for two (a Pareto front)."""
    objective = spec.objective
    sampler = (optuna.samplers.NSGAIISampler(seed=seed) if objective.multi
               else optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, spec.trials // 3)))
    metric = objective.metrics if objective.multi else objective.metrics[0]
    mode = objective.modes if objective.multi else objective.modes[0]
    points = [optuna_point(spec, p) for p in spec.points_to_evaluate]
    return OptunaSearch(space=SearchSpace(spec), metric=metric, mode=mode, sampler=sampler,
                        points_to_evaluate=points or None)


class SubjectSearcher(Searcher):
    """Round-robin over subjects, each with its own Optuna search and budget of ``trials``."""

    def __init__(self, spec: SweepSpec, subjects: list[str]):
        objective = spec.objective
        super().__init__(metric=objective.metrics if objective.multi else objective.metrics[0],
                         mode=objective.modes if objective.multi else objective.modes[0])
        self.subjects = list(subjects)
        self.budget = spec.trials
        self.fixed = spec.fixed
        self.searchers = {s: make_optuna(spec, spec.seed + i) for i, s in enumerate(self.subjects)}
        self.owner: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        started = {s: sum(1 for o in self.owner.values() if o == s) for s in self.subjects}
        open_subjects = [s for s in self.subjects if started[s] < self.budget]
        if not open_subjects:
            return Searcher.FINISHED
        subject = min(open_subjects, key=lambda s: (started[s], self.subjects.index(s)))
        suggestion = self.searchers[subject].suggest(trial_id)
        if suggestion is None:
            return None
        self.owner[trial_id] = subject
        settings = suggestion["settings"]
        # Human-readable flat parameters of the whole configuration, for MLflow.
        params = {**train_config(self.fixed, settings).flat_params(), "subject": subject}
        return {"subject": subject, "settings": settings, "params": params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            with warnings.catch_warnings():
                # A retried trial counts Tune iterations from 1 again: Optuna keeps the
                # first value of each step and warns about the others, once per result.
                warnings.filterwarnings("ignore", message=r".*is already reported", category=UserWarning)
                self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        state = {"owner": self.owner, "searchers": {s: o.__dict__ for s, o in self.searchers.items()}}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.owner = state["owner"]
        for subject, values in state["searchers"].items():
            self.searchers[subject].__dict__.update(values)


class SubjectScheduler(TrialScheduler):
    """ASHA per subject, in epochs: trials are compared only with the same subject's trials.

    Rungs are at epochs ``grace_period * reduction_factor**k`` below the last epoch, so
    epoch 0 (the frozen model, the same for every trial) is never a rung, and a trial that
    has finished its last epoch is never stopped: its test evaluation, cheap next to its
    training, always runs. A rung compares the epoch's own validation r (``val_r`` for an
    objective ``best_val_r``, ``val_r.AC`` for ``best_val_r.AC``): the best so far would
    tie every trial whose training has not yet beaten the frozen model's epoch 0.
    """

    def __init__(self, spec: SweepSpec, subjects: list[str], epochs: int):
        super().__init__()
        asha = spec.scheduler
        self.epochs = epochs
        self.by_subject = {
            s: ASHAScheduler(time_attr="epoch", max_t=max(1, epochs), grace_period=asha["grace_period"],
                             reduction_factor=asha["reduction_factor"])
            for s in subjects
        }
        self.fifo = FIFOScheduler()

    def _for(self, trial) -> ASHAScheduler:
        return self.by_subject[trial.config["subject"]]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric = metric
        if isinstance(metric, str) and metric.startswith("best_val_r"):
            metric = metric[len("best_"):]
        return all(s.set_search_properties(metric, mode, **spec) for s in self.by_subject.values())

    def on_trial_add(self, tune_controller, trial):
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._for(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("epoch", 0) >= self.epochs:  # the last epoch or the final result
            return TrialScheduler.CONTINUE
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._for(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        return self.fifo.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return "ASHA per subject: " + "; ".join(f"{s}: {a.debug_string()}" for s, a in self.by_subject.items())
