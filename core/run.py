"""One run end to end: train (or resume), the study measures on the best epoch, the result files.

:func:`run` is what ``python -m core.train`` and a sweep's trial (``sweeper/trial.py``)
do: the :class:`core.tuning.trainer.Trainer`'s loop, then, on the best epoch's story
features, cross-subject transfer (``transfer_to``, :mod:`core.studies.transfer`) and
word-level probes (``probes``, :mod:`core.studies.probes`), then the result files in
``OUT`` (:func:`write_results`). It returns a :class:`RunResult` on rank 0.

A study that fails (e.g. a TextGrid removed since the start) does not take the trained
model's results with it: its message goes to ``failed_studies`` (study -> message), the
results are written as usual, and the caller then raises (:func:`raise_failed_studies`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.evaluation import Evaluation
from core.errors import BrainsweepError, StudyError
from core.outputs import atomic_write, write_json, write_voxel_results
from core.studies import probes
from core.studies.transfer import transfer
from core.tuning.trainer import Trainer

__all__ = ["RunResult", "run", "check_studies", "write_results", "raise_failed_studies"]


@dataclass
class RunResult:
    """What a run gives back.

    Attributes
    ----------
    summary : the content of ``summary.json`` (see :mod:`core.train`).
    evaluations : ``baseline``, ``tuned``, ``tuned_readout`` -> :class:`core.encoding.evaluation.Evaluation`
        of the run's subject on its test stories (per-voxel ``r`` of shape (n_voxels,)).
    loop_seconds : seconds inside the training loop and the studies.
    trainer : the run's trainer; its model holds the last epoch's weights.
    """

    summary: dict
    evaluations: dict[str, Evaluation]
    loop_seconds: float
    trainer: Trainer


def check_studies(config: TrainConfig, dataset: Dataset, subject: str) -> None:
    """Fail early, before training, on study settings the dataset cannot serve (a subject, a word-vector file,
    a transcript of one of ``subject``'s training and test stories)."""
    dataset.validate(subject)
    for other in config.transfer_to:
        dataset.validate(other)
    split = dataset.split(subject, test=config.test_stories, val=config.val_stories)
    probes.check(config.probes, dataset, [*split.train, *split.test])


def run(config: TrainConfig, dataset: Dataset, subject: str, out, *,
        progress: Callable[[str], None] = lambda m: None, on_epoch: Callable[[dict], None] | None = None,
        device: str | torch.device | None = None, write: bool = True) -> RunResult | None:
    """Train (or resume) ``subject``, study the best epoch and write the result files to ``out``.

    Returns the result on rank 0, None on the other data-parallel workers. Parameters as
    :class:`core.tuning.trainer.Trainer`'s; with ``write=False`` the caller writes the
    result files (:func:`write_results`) after files of its own, since ``summary.json``,
    written last, marks a complete run.
    """
    check_studies(config, dataset, subject)
    trainer = Trainer(config, dataset, subject, out, progress=progress, on_epoch=on_epoch, device=device)
    started = time.perf_counter()
    summary = trainer.fit()
    if summary is None:
        return None
    failed: dict[str, str] = {}

    def study(name, measure, *args):
        try:
            return measure(*args)
        except Exception as error:  # noqa: BLE001 - hours of training must not be lost to one study
            if isinstance(error, BrainsweepError):
                failed[name] = str(error)
            else:  # a bug: its traceback is shown, since the run goes on to write its results
                failed[name] = f"{type(error).__name__}: {error}"
                progress(traceback.format_exc())
            progress(f"{name} failed after training: {failed[name]}")
            return {}

    with trainer.best_epoch() as features:
        transferred = study("transfer", transfer, features, [s for s in config.transfer_to if s not in trainer.subjects])
        probed = study("probes", probes.probe, features, trainer.split) if config.probes else {}
    summary = {"transfer": {other: {name: result.summary for name, result in pair.items()}
                            for other, pair in transferred.items()},
               "probes": probed, "failed_studies": failed, **summary}
    evaluations = {name: trainer.evaluations[name] for name in ("baseline", "tuned", "tuned_readout")}
    result = RunResult(summary, evaluations, time.perf_counter() - started, trainer)
    if write:
        write_results(Path(out), result)
    return result


def write_results(out: Path, result: RunResult) -> None:
    """``voxel_r.hf5``, ``config.yaml`` and ``summary.json`` (last), each written to a temporary name first."""
    summary, evaluations = result.summary, result.evaluations
    arrays = {"baseline_r": evaluations["baseline"].r, "tuned_r": evaluations["tuned"].r,
              "tuned_readout_r": evaluations["tuned_readout"].r}
    if evaluations["tuned"].ceiling is not None:
        arrays["ceiling"] = evaluations["tuned"].ceiling
    for name, write in [
        ("voxel_r.hf5", lambda p: write_voxel_results(p, arrays, {"config": summary["config"], "subject": summary["subject"]})),
        ("config.yaml", lambda p: p.write_text(yaml.safe_dump(summary["config"], sort_keys=False))),
        ("summary.json", lambda p: write_json(p, summary)),
    ]:
        atomic_write(out / name, write)


def raise_failed_studies(summary: dict, out: Path) -> None:
    """After the results are written: a StudyError naming the studies that failed, if any."""
    failed = summary.get("failed_studies") or {}
    if failed:
        reasons = "; ".join(f"{name}: {message}" for name, message in failed.items())
        raise StudyError(f"{', '.join(failed)} failed after training ({reasons}). The trained model's results are in "
                         f"{out}/summary.json and voxel_r.hf5; fix the cause and run again (a sweep: --resume): "
                         "the run resumes from its checkpoints and repeats only the evaluation")
