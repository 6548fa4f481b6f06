"""Recording a sweep in MLflow from the Tune driver: one parent run per subject, one child run per trial.

:class:`MLflowTracker` is a Ray Tune callback. It runs in the driver process only (trials
need no MLflow access) and talks to MLflow through :class:`mlflow.tracking.MlflowClient`
(no fluent API, no global active run). What lands in the MLflow experiment (one per sweep):

- a parent run per subject, named by the subject (tags ``sweep.subject=<S>``,
  ``sweep.role=parent``): params ``subject`` and ``sweep``, the sweep definition as
  ``search_space.yaml``; at the end of the sweep ``best_<metric>``, the best trial's final
  ``test_*``/``baseline_*`` metrics and the tag ``best_trial_id``;
- a child run per trial (tags ``mlflow.parentRunId``, ``trial_id``), named by the trial id:
  params ``trial.config["params"]`` as given, every numeric ``val_*``, ``train_*``,
  ``test_*``, ``baseline_*``, ``tuned_*`` result per epoch, the tag ``node_id`` (the Ray
  node of the latest result that names one: after a retry elsewhere, the new node), the
  tag ``failed_studies`` (the studies that failed after training, whose trial then ends in
  error with its results kept), on completion or error the files of the trial's output
  folder (:data:`TRIAL_ARTIFACTS` and ``*.png``), and the tags ``stopped_early`` (true when the scheduler stopped it before
  its final report, which carries ``done_training``) and ``best_trial`` (true on one child
  per subject); the best trial's run also gets its tuned model under ``export/``
  (:func:`core.export.export`: peft adapters and readouts; no merged checkpoint, which
  is as large as the base model: ``python -m core.export`` on the trial folder makes it).

The experiment opens on its trials (MLflow 3's UI otherwise opens a new experiment on the
GenAI traces page, with no param or metric column): it gets the tag
``mlflow.experimentKind=custom_model_development`` and a saved runs-table view,
:data:`VIEW_KEY` (an experiment tag ``mlflow.sharedViewState.<key>``, listed under "Views"),
that shows only the trial runs, sorted by the objective, with the searched params, the
objective and the ``test_*`` metrics as columns. :func:`landing_url` is the page with both.

Runs are found by these tags before any is created, so a resumed sweep (same trial ids)
continues its runs instead of duplicating them. No run is left RUNNING after the sweep:
an interrupted sweep leaves its unfinished runs KILLED, and resuming sets them RUNNING; a
trial the driver started just before it died, which Tune never saved and so does not
resume, is closed KILLED with the tag ``lost=true``.

A tracking outage never reaches Tune: every group of MLflow calls (a "step") goes through
:meth:`MLflowTracker._track`, which queues the step when MLflow is unreachable and sends
the queue in order at a later callback (at most every ``retry_interval_s``) and at the end.
One warning is logged when an outage starts, not one per call. Calls still queued when the
sweep ends are not lost: :meth:`MLflowTracker.replay` (``python -m sweeper.sync``) records
the sweep again from its Tune experiment folder, adding only what MLflow lacks.

Example
-------
>>> tracker = MLflowTracker("sqlite:///mlflow.db", "sweep-lora-rank", "/data/mlflow-artifacts",
...                         sweep=definition, subjects=["UTS01", "UTS02"],
...                         trial_dir=lambda trial: outputs / trial.trial_id)  # doctest: +SKIP
>>> tune.Tuner(trainable, param_space=space,
...            run_config=tune.RunConfig(callbacks=[tracker])).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

METRIC_PREFIXES = ("val_", "train_", "test_", "baseline_", "tuned_", "best_val_", "best_epoch", "gain_", "loop_",
                   "epoch_", "transfer_", "probe_", "cotrained_")
# Final metrics of the best trial that are copied onto its subject's parent run.
BEST_PREFIXES = ("test_", "baseline_")
TRIAL_ARTIFACTS = ("summary.json", "config.yaml", "voxel_r.hf5")
# The trial function reports this key in its final result only: without it a trial ended
# because the scheduler stopped it.
DONE_KEY = "done_training"
# The saved runs-table view the landing page opens; MLflow's UI reads saved views from the
# experiment tags named VIEW_TAG_PREFIX + key (MLflow 3 "Views" menu, shared by link).
VIEW_KEY = "brainsweep-trials"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


class MLflowTracker(Callback):
    """Ray Tune callback that records a sweep in MLflow (see the module docstring).

    Parameters
    ----------
    tracking_uri : ``sqlite:///path.db`` or ``http://host:port`` of an ``mlflow server``.
    experiment : MLflow experiment of this sweep; created if missing.
    artifact_location : where the experiment keeps artifacts when it is created here
        (a folder or URI); None leaves it to the tracking server.
    sweep : the sweep definition; ``sweep["objective"]`` has ``metric`` and ``mode``
        (``"max"`` or ``"min"``), ``sweep.get("name")`` names the sweep (default: the
        experiment).
    subjects : subjects of the sweep; each gets its parent run at the start.
    trial_dir : maps a trial to its output folder (None if it has none).
    retry_interval_s : during an outage, the least time between two attempts to send the
        queued calls.
    storage : the sweep folder, named in the warning about calls MLflow never received
        (``python -m sweeper.sync --storage <storage>`` records them later).
    data : the sweep's dataset folder; given, each subject's best trial is exported
        (:mod:`core.export`) into its run's artifacts.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_location: str | None,
        sweep: dict,
        subjects: list[str],
        trial_dir: Callable[[Trial], Path | None],
        retry_interval_s: float = 30.0,
        storage: str | None = None,
        data: str | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_location = None if artifact_location is None else str(artifact_location)
        self.sweep = sweep
        self.subjects = list(subjects)
        self.trial_dir = trial_dir
        self.retry_interval_s = retry_interval_s
        self.storage = None if storage is None else str(storage)
        self.data = None if data is None else str(data)
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}  # subject -> run id
        self._children: dict[str, str] = {}  # trial id -> run id
        self._pending: deque = deque()  # (step, args) not sent yet, oldest first
        self._outage = False
        self._next_try = 0.0

    def __getstate__(self):
        # Tuner pickles its RunConfig, callbacks included, for Tuner.restore: keep only the
        # settings (the public attributes); the client, caches and queue start afresh.
        return {name: value for name, value in self.__dict__.items() if not name.startswith("_")}

    def __setstate__(self, state):
        self.__init__(**state)

    # Tune callbacks: each only queues steps (the work happens in _track), so none raises.

    def setup(self, **info):
        for subject in self.subjects:
            self._track(self._start_parent, subject)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._track(self._start_trial, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._track(self._log_result, trial, dict(result), int(time.time() * 1000))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._track(self._finish_trial, trial, DONE_KEY not in (trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._track(self._fail_trial, trial)

    def on_experiment_end(self, trials, **info):
        subjects = dict.fromkeys([*self.subjects, *(trial.config.get("subject") for trial in trials)])
        subjects.pop(None, None)  # a trial without a subject has no run (its steps were skipped)
        for subject in subjects:
            self._track(self._end_subject, subject, [trial for trial in trials if trial.config.get("subject") == subject])
        self._flush(force=True)
        if self._pending:
            logger.warning(
                "MLflow at %s still unreachable at the end of the sweep: %d tracking steps were not "
                "recorded. The results are kept in the sweep folder; once MLflow is back, record them "
                "with: python -m sweeper.sync --storage %s",
                self.tracking_uri, len(self._pending), self.storage or "<sweep folder>",
            )

    # The one way MLflow is called: a step runs after every step queued before it.

    def _track(self, step: Callable, *args) -> None:
        """Run ``step(*args)`` (a few MLflow calls) after the queued steps, or queue it."""
        self._pending.append((step, args))
        self._flush()

    def _flush(self, force: bool = False) -> None:
        """Send queued steps in order; stop at the first that finds MLflow unreachable."""
        if self._outage and not force and time.monotonic() < self._next_try:
            return
        while self._pending:
            step, args = self._pending[0]
            try:
                step(*args)
            except Exception as error:
                if not _is_outage(error):
                    # A refused call (or a bug) would fail again: retrying it would block the queue.
                    logger.warning("MLflow tracking step %s skipped: %s", step.__name__, _first_line(error))
                    self._pending.popleft()
                    continue
                if not self._outage:
                    logger.warning(
                        "MLflow at %s unreachable (%s); queueing tracking calls and retrying every %.0f s.",
                        self.tracking_uri, _first_line(error), self.retry_interval_s,
                    )
                self._outage = True
                self._next_try = time.monotonic() + self.retry_interval_s
                return
            self._pending.popleft()
        if self._outage:
            logger.warning("MLflow at %s reachable again; queued tracking calls sent.", self.tracking_uri)
            self._outage = False

    # Steps. Each may be run again after a partial failure, so each is idempotent.

    def _start_parent(self, subject: str) -> None:
        run_id = self._parent(subject)
        self._log_params(run_id, {"subject": subject, "sweep": self._sweep_name()}, what=f"subject {subject}")
        self.client.log_text(run_id, yaml.safe_dump(self.sweep, sort_keys=False), "search_space.yaml")
        self._set_running(run_id)

    def _start_trial(self, trial: Trial, running: bool = True) -> None:
        run_id = self._child(trial)
        self._log_params(run_id, trial.config.get("params", {}), what=f"trial {trial.trial_id}")
        if running:
            self._set_running(run_id)

    def _log_result(self, trial: Trial, result: dict, timestamp: int,
                    recorded: dict[str, set[int]] | None = None) -> int:
        """Log one result's metrics at its epoch; returns how many.

        ``recorded`` (key -> epochs already in MLflow) names points to leave out, and gains
        the points logged.
        """
        step = int(result["epoch"] if "epoch" in result else result.get("training_iteration", 0))
        metrics = [Metric(key, value, timestamp, step) for key, value in _numbers(result, METRIC_PREFIXES).items()
                   if recorded is None or step not in recorded.get(key, ())]
        tags = [RunTag(key, result[key]) for key in ("node_id", "failed_studies") if isinstance(result.get(key), str)]
        if metrics or tags:
            self.client.log_batch(self._child(trial), metrics=metrics, tags=tags)
        if recorded is not None:
            for metric in metrics:
                recorded.setdefault(metric.key, set()).add(step)
        return len(metrics)

    def _log_trial_files(self, run_id: str, trial: Trial) -> None:
        folder = self.trial_dir(trial)
        if folder is not None and Path(folder).is_dir():
            files = [Path(folder, name) for name in TRIAL_ARTIFACTS] + sorted(Path(folder).glob("*.png"))
            for path in files:
                if path.is_file():
                    self.client.log_artifact(run_id, str(path))

    def _finish_trial(self, trial: Trial, stopped_early: bool) -> None:
        run_id = self._child(trial)
        self._log_trial_files(run_id, trial)
        self.client.set_tag(run_id, "stopped_early", str(stopped_early).lower())
        self.client.set_terminated(run_id, "FINISHED")

    def _fail_trial(self, trial: Trial) -> None:
        run_id = self._child(trial)
        self._log_trial_files(run_id, trial)  # a study that failed after training left the trained model's results
        if trial.error_file:
            self.client.set_tag(run_id, "error_file", trial.error_file)
            if os.path.isfile(trial.error_file):
                self.client.log_artifact(run_id, trial.error_file)
        self.client.set_terminated(run_id, "FAILED")

    # Replay: a sweep recorded afterwards from its Tune experiment (python -m sweeper.sync).

    def replay(self, trials: list[Trial], results: Callable[[Trial], list[dict]]) -> dict[str, int]:
        """Record ``trials`` as live tracking would have, adding only what MLflow lacks.

        Unlike the callbacks, MLflow errors are raised (a replay is run when MLflow is up).
        Runs are found by their tags, metric points already recorded (same key and epoch)
        are skipped, so a replay can follow live tracking, a partial replay or itself.

        Parameters
        ----------
        trials : the sweep's Tune trials (their status, config and last result).
        results : every result a trial reported, oldest first.

        Returns counts: ``trials`` replayed, ``points`` (metric values) added.
        """
        for subject in self.subjects:
            self._start_parent(subject)
        points = 0
        replayed = [trial for trial in trials if trial.config.get("subject")]
        for trial in replayed:
            terminal = trial.status in (Trial.TERMINATED, Trial.ERROR)
            self._start_trial(trial, running=not terminal)
            run_id = self._child(trial)
            recorded = self._recorded_steps(run_id)
            timestamp = int(time.time() * 1000)
            points += sum(self._log_result(trial, result, timestamp, recorded) for result in results(trial))
            if trial.status == Trial.TERMINATED:
                self._finish_trial(trial, DONE_KEY not in (trial.last_result or {}))
            elif trial.status == Trial.ERROR:
                self._fail_trial(trial)
        subjects = dict.fromkeys([*self.subjects, *(trial.config["subject"] for trial in replayed)])
        for subject in subjects:
            self._end_subject(subject, [trial for trial in replayed if trial.config["subject"] == subject])
        return {"trials": len(replayed), "points": points}

    def _recorded_steps(self, run_id: str) -> dict[str, set[int]]:
        keys = self.client.get_run(run_id).data.metrics
        return {key: {point.step for point in self.client.get_metric_history(run_id, key)} for key in keys}

    def _end_subject(self, subject: str, trials: list[Trial]) -> None:
        """Close the subject's runs: unfinished trials KILLED, best trial tagged, parent ended."""
        unfinished = [trial for trial in trials if trial.status not in (Trial.TERMINATED, Trial.ERROR)]
        for trial in unfinished:
            if trial.trial_id in self._children:  # started in this session (steps run in order)
                self.client.set_terminated(self._children[trial.trial_id], "KILLED")
        # A trial the driver started just before it died, before Tune saved its state, is
        # not resumed (Tune does not know it): its run is closed, not left RUNNING.
        known = {trial.trial_id for trial in trials}
        for run in self._search(_tags_filter({"mlflow.parentRunId": self._parent(subject)})):
            if run.info.status == "RUNNING" and run.data.tags.get("trial_id") not in known:
                self.client.set_tag(run.info.run_id, "lost", "true")
                self.client.set_terminated(run.info.run_id, "KILLED")
        metric = self.sweep["objective"]["metric"]
        finished = [
            trial for trial in trials
            if trial.status == Trial.TERMINATED and DONE_KEY in (trial.last_result or {})
            and _is_number(trial.last_result.get(metric))
        ]
        if finished:
            self._save_view(sorted({key for trial in finished for key in _numbers(trial.last_result, ("test_",))}))
            choose = {"max": max, "min": min}[self.sweep["objective"]["mode"]]
            best = choose(finished, key=lambda trial: trial.last_result[metric])
            self._record_best(subject, best, {f"best_{metric}": best.last_result[metric],
                                              **_numbers(best.last_result, BEST_PREFIXES)})
        self.client.set_terminated(self._parent(subject), "KILLED" if unfinished else "FINISHED")

    def _record_best(self, subject: str, best: Trial, metrics: dict[str, float]) -> None:
        parent, best_run = self._parent(subject), self._child(best)
        # A resumed sweep may have found another best trial: keep one best_trial tag.
        for run in self._search(f"tags.`mlflow.parentRunId` = '{parent}' and tags.best_trial = 'true'"):
            if run.info.run_id != best_run:
                self.client.delete_tag(run.info.run_id, "best_trial")
        self.client.set_tag(best_run, "best_trial", "true")
        if self.data is not None:
            self._log_export(best_run, self.trial_dir(best))
        timestamp = int(time.time() * 1000)
        self.client.log_batch(
            parent,
            metrics=[Metric(key, float(value), timestamp, 0) for key, value in metrics.items()],
            tags=[RunTag("best_trial_id", best.trial_id)],
        )

    def _log_export(self, run_id: str, folder: Path | None) -> None:
        """A finished trial's tuned model (:func:`core.export.export` without ``merged/``) as its run's ``export/``."""
        from core.errors import BrainsweepError
        from core.export import export

        if folder is None or not Path(folder, "summary.json").is_file():
            return
        with tempfile.TemporaryDirectory() as tmp:
            try:
                export(folder, self.data, Path(tmp) / "export", merged=False)
            except (BrainsweepError, OSError) as err:  # the sweep's results stand without it
                logger.warning("trial folder %s not exported to MLflow: %s", folder, err)
                return
            self.client.log_artifacts(run_id, str(Path(tmp) / "export"), "export")

    # Finding or creating runs; ids are cached once known.

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # This tracker queues and retries failed calls itself; MLflow's own HTTP retries
            # (7, with back-off: minutes per call) would stall the Tune driver in an outage.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location
                )
            else:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                self._experiment_id = found.experiment_id
            self.client.set_experiment_tag(self._experiment_id, "mlflow.experimentKind", "custom_model_development")
            self._save_view([])
        return self._experiment_id

    def _save_view(self, metrics: list[str]) -> None:
        """Save the landing view: trial runs, best objective first, with the searched params,
        the objective and ``metrics`` as columns (saved again when the test metrics are known)."""
        objective = self.sweep.get("objective", {})
        columns = [f"params.`{name}`" for name in self.sweep.get("search", {})]
        columns += [f"metrics.`{name}`" for name in dict.fromkeys([objective.get("metric"), *metrics]) if name]
        state = {"searchFilter": "tags.`sweep.role` = 'trial'", "selectedColumns": columns}
        if objective.get("metric"):
            state.update(orderByKey=f"metrics.`{objective['metric']}`", orderByAsc=objective.get("mode") == "min")
        now = int(time.time() * 1000)
        view = {"name": f"{self._sweep_name()} trials", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
        self.client.set_experiment_tag(self._experiment(), VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(view))

    def _parent(self, subject: str) -> str:
        if subject not in self._parents:
            tags = {"sweep.subject": subject, "sweep.role": "parent"}
            found = self._search(_tags_filter(tags))
            if found:
                self._parents[subject] = found[0].info.run_id
            else:
                tags.update({"sweep.name": self._sweep_name(), **_objective_tags(self.sweep)})
                run = self.client.create_run(self._experiment(), tags=tags, run_name=subject)
                self._parents[subject] = run.info.run_id
        return self._parents[subject]

    def _child(self, trial: Trial) -> str:
        if trial.trial_id not in self._children:
            found = self._search(_tags_filter({"trial_id": trial.trial_id}))
            if found:
                self._children[trial.trial_id] = found[0].info.run_id
            else:
                subject = trial.config["subject"]
                tags = {
                    "mlflow.parentRunId": self._parent(subject),
                    "trial_id": trial.trial_id,
                    "sweep.subject": subject,
                    "sweep.role": "trial",
                }
                run = self.client.create_run(self._experiment(), tags=tags, run_name=trial.trial_id)
                self._children[trial.trial_id] = run.info.run_id
        return self._children[trial.trial_id]

    def _search(self, filter_string: str) -> list:
        return list(self.client.search_runs([self._experiment()], filter_string, order_by=["attributes.start_time ASC"]))

    def _log_params(self, run_id: str, params: dict, what: str) -> None:
        """Log the params not yet on the run; params are immutable, so a resumed run keeps its own."""
        recorded = self.client.get_run(run_id).data.params
        differing = {key: (recorded[key], str(value)) for key, value in params.items()
                     if key in recorded and recorded[key] != str(value)}
        if differing:
            logger.warning("MLflow params of %s already recorded with other values, kept: %s", what, differing)
        new = [Param(key, str(value)) for key, value in params.items() if key not in recorded]
        if new:
            self.client.log_batch(run_id, params=new)

    def _set_running(self, run_id: str) -> None:
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def _sweep_name(self) -> str:
        return str(self.sweep.get("name", self.experiment))


def landing_url(ui_url: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI at ``ui_url``: model-training mode, on the saved trials view.

    MLflow 3.17 takes the GenAI/model-training switch from the page's ``workflowType``
    (default GenAI, whatever the experiment's kind tag says), so the link names it.
    """
    return (f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def _is_number(value) -> bool:
    """A finite real number (bools are not metrics; NaN and inf are not recordable values)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(result: dict, prefixes: tuple[str, ...]) -> dict[str, float]:
    return {key: float(value) for key, value in result.items() if key.startswith(prefixes) and _is_number(value)}


def _tags_filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


def _objective_tags(sweep: dict) -> dict[str, str]:
    objective = sweep.get("objective", {})
    return {f"sweep.objective.{key}": str(value) for key, value in objective.items()}


def _is_outage(error: Exception) -> bool:
    """Whether ``error`` says MLflow cannot be reached now (retry later), not that it refused the call."""
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(error, OSError)  # connection errors of requests and urllib3 included


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"
