"""One Tune trial: a run of the core trainer, in-process or as a Ray Train ``TorchTrainer``.

Every report carries the objective metrics (``best_val_r``, ``best_val_r.<ROI>``: the
validation r of the best epoch so far), so Optuna and ASHA always find them. ``val_r`` is
the paper's measure, which also chooses the best epoch: ridge refitted on the epoch's
features of the training stories, scored on the validation stories
(:mod:`core.tuning.trainer`); ``val_readout_r`` is the model's own readout there, for reference:

- per epoch: ``epoch``, ``train_loss``, ``val_r``, ``val_r.<ROI>``, ``val_readout_r``, ``epoch_seconds``,
  ``best_epoch``, ``best_val_r``, ``best_val_r.<ROI>``, and ``node_id``: the Ray node that
  trains (the trial's process, or a Train trial's first worker), another one when a
  retried trial goes on elsewhere;
- at the end: ``test_r`` (ridge refit on the tuned features, the paper's protocol),
  ``test_readout_r`` (the model's own readout), ``baseline_r`` (epoch 0 ridge), each also
  per ROI (``test_r.AC``) with ``*_ceiling_fraction`` where known, ``gain_r``
  (test_r - baseline_r), ``loop_seconds`` (time inside the training loop) and
  ``done_training: 1``; with ``transfer_to``, for each other subject S
  ``transfer_r.S`` (a new ridge readout of S on this trial's tuned features) and
  ``transfer_baseline_r.S`` (the same on pretrained features), ``transfer_readout_r.S`` and
  ``transfer_baseline_readout_r.S`` (a bottleneck readout instead of ridge), each per ROI too;
  with ``transfer_fractions`` below 1, ``transfer_r_<P>pct.S`` and ``transfer_baseline_r_<P>pct.S``
  (ridge readouts fitted on P% of S's training stories); with
  ``probes``, ``probe_r.<family>.L<layer>`` (tuned) and ``probe_baseline_r.<family>.L<layer>``
  (pretrained): held-out r of word-level probes (:mod:`core.studies.probes`); with ``subjects``
  (several subjects trained on one backbone), for each other trained subject S
  ``cotrained_test_r.S`` and ``cotrained_baseline_r.S``, each per ROI too, and per epoch
  ``val_r_subject.S`` (every trained subject's validation r; ``val_r`` is their weighted mean);
  ``failed_studies`` (a string: the studies that failed after training, e.g. ``probes``) when any did.

A study that fails after training loses nothing: the trial's results are written and its
final metrics reported first, then the trial ends with a :class:`core.errors.StudyError`
(:func:`core.run.raise_failed_studies`). Such a trial counts as unfinished
(:func:`finished`), so a retry or ``--resume`` resumes its checkpoints and repeats only the
evaluation.

A one-worker trial runs the trainer in the trial's own process (no Train start-up); more
workers run it data-parallel under Ray Train (gloo on CPU, nccl on GPU). The trial's
folder (``<storage>/trials/<subject>/<trial_id>``) holds its checkpoints, so a retried or
resumed trial continues where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.run import RunResult, raise_failed_studies, run, write_results

from .folder import SweepFolder
from .space import train_config


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    data: str
    fixed: dict
    storage: str
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def trial_dir(self, subject: str, trial_id: str) -> Path:
        return SweepFolder(self.storage).trial(subject, trial_id)


def _flat(prefix: str, summary: dict) -> dict:
    """``{mean_r, roi_mean_r, ceiling_fraction, roi_ceiling_fraction}`` -> ``{prefix: .., prefix.ROI: ..,
    prefix_ceiling_fraction: .., prefix_ceiling_fraction.ROI: ..}``."""
    out = {prefix: summary["mean_r"]}
    out.update({f"{prefix}.{roi}": v for roi, v in summary["roi_mean_r"].items()})
    if "ceiling_fraction" in summary:
        out[f"{prefix}_ceiling_fraction"] = summary["ceiling_fraction"]
        out.update({f"{prefix}_ceiling_fraction.{roi}": v for roi, v in summary.get("roi_ceiling_fraction", {}).items()})
    return out


def _finite(metrics: dict) -> dict:
    """Tune and Optuna choke on None; NaN stays NaN (a float)."""
    return {k: (float("nan") if v is None else v) for k, v in metrics.items()}


class EpochReports:
    """Turns the trainer's per-epoch records into flat Tune results with best-so-far values."""

    def __init__(self):
        self.by_epoch: dict[int, dict] = {}

    def epoch(self, record: dict) -> dict:
        flat = {"epoch": record["epoch"], "train_loss": record["train_loss"], "val_r": record["val_r"],
                "val_readout_r": record.get("val_readout_r", float("nan")), "epoch_seconds": record["seconds"],
                "best_epoch": record["best_epoch"]}
        flat.update({f"val_r.{roi}": v for roi, v in record["val_roi_r"].items()})
        if len(record.get("val_r_by_subject", {})) > 1:
            flat.update({f"val_r_subject.{s}": v for s, v in record["val_r_by_subject"].items()})
        self.by_epoch[record["epoch"]] = flat
        return _finite({**flat, **self.best(record["best_epoch"], record["best_val_r"])})

    def best(self, best_epoch: int, best_val_r: float) -> dict:
        at_best = self.by_epoch.get(best_epoch, {})
        out = {"best_val_r": best_val_r}
        out.update({f"best_{k}": v for k, v in at_best.items() if k.startswith("val_r.")})
        return out


def final_metrics(summary: dict, loop_seconds: float) -> dict:
    """The end-of-trial result (see the module docstring)."""
    metrics = {"epoch": summary["history"][-1]["epoch"], "best_epoch": summary["best_epoch"],
               "best_val_r": summary["best_val_r"], "loop_seconds": loop_seconds, "done_training": 1}
    best = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    metrics.update({f"best_val_r.{roi}": v for roi, v in best["val_roi_r"].items()})
    metrics.update(_flat("test_r", summary["tuned"]))
    metrics.update(_flat("test_readout_r", summary["tuned_readout"]))
    metrics.update(_flat("baseline_r", summary["baseline"]))
    metrics["gain_r"] = summary["tuned"]["mean_r"] - summary["baseline"]["mean_r"]
    for other, pair in summary.get("transfer", {}).items():
        metrics.update(_flat(f"transfer_r.{other}", pair["tuned"]))
        metrics.update(_flat(f"transfer_baseline_r.{other}", pair["baseline"]))
        metrics.update(_flat(f"transfer_readout_r.{other}", pair["tuned_readout"]))
        metrics.update(_flat(f"transfer_baseline_readout_r.{other}", pair["baseline_readout"]))
        for name, result in pair.items():  # data efficiency: "tuned@0.25" -> transfer_r_25pct.<S>
            if "@" in name:
                model, fraction = name.split("@")
                which = "transfer_r" if model == "tuned" else "transfer_baseline_r"
                metrics.update(_flat(f"{which}_{float(fraction) * 100:g}pct.{other}", result))
    for other, pair in summary.get("cotrained", {}).items():
        metrics.update(_flat(f"cotrained_test_r.{other}", pair["tuned"]))
        metrics.update(_flat(f"cotrained_baseline_r.{other}", pair["baseline"]))
    for family, layers in summary.get("probes", {}).items():
        for layer, pair in layers.items():
            metrics[f"probe_r.{family}.L{layer}"] = pair["tuned"]
            metrics[f"probe_baseline_r.{family}.L{layer}"] = pair["pretrained"]
    if summary.get("failed_studies"):
        metrics["failed_studies"] = ", ".join(summary["failed_studies"])
    return _finite(metrics)


def train(config: TrainConfig, data: str, subject: str, out: Path, report, device=None) -> tuple[dict | None, float]:
    """Run (or resume) the run (:func:`core.run.run`); the first worker writes the loop time, figures and results.

    Returns (summary, loop seconds); the summary is None on the other workers.
    """
    reports = EpochReports()
    node = _node_id()
    result = run(config, Dataset(data), subject, out, device=device, write=False,
                 on_epoch=lambda record: report({**reports.epoch(record), "node_id": node}))
    if result is None:
        return None, 0.0
    (out / "loop_seconds.json").write_text(json.dumps({"loop_seconds": result.loop_seconds}))
    _figures(out, result)
    # summary.json last: its presence means the trial is complete (see finished()).
    write_results(out, result)
    return result.summary, result.loop_seconds


def reserved_device(setting: str):
    """Where this Ray worker (a trial's own process, or a Ray Train worker) trains: a torch device, or None.

    ``device: auto`` takes the GPU that Ray reserved for the worker (``resources.gpus_per_worker``),
    made the worker's current CUDA device, or the CPU when Ray reserved none: a GPU that Ray
    did not reserve may be another trial's. Any other setting is left to the trainer (None).
    """
    import ray
    import torch

    if setting != "auto":
        return None
    if not ray.get_gpu_ids():
        return torch.device("cpu")
    import ray.train.torch

    device = ray.train.torch.get_device()  # the reserved GPU's index among the visible ones
    torch.cuda.set_device(device)
    return device


def device_problem(device: str, workers: int, gpus_per_worker: float) -> str | None:
    """Why a trial with ``device`` cannot train on ``workers`` workers of ``gpus_per_worker`` GPUs each (or None)."""
    if workers > 1 and gpus_per_worker % 1:
        return (f"resources.gpus_per_worker: {gpus_per_worker:g} with {workers} workers puts two workers on one GPU, "
                "which NCCL refuses; give each worker whole GPUs (e.g. 1), or use 1 worker")
    if workers > 1 and device.startswith("cuda"):
        return (f"device: {device} with {workers} workers puts every worker on the same GPU; use device: auto "
                "(each worker takes the GPU Ray reserved for it)")
    if device.startswith("cuda") and not gpus_per_worker:
        return (f"device: {device} with resources.gpus_per_worker: 0 trains on a GPU that Ray did not reserve "
                "(concurrent trials share it); set gpus_per_worker (e.g. 1) and device: auto")
    return None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def finished(config: TrainConfig, out: Path) -> tuple[dict, float] | None:
    """The results of a trial that already completed with this configuration, if any.

    A sweep resumed after its driver died can start again a trial whose results were
    written but not yet recorded by Tune; it then reports them instead of recomputing. A
    trial whose studies failed is not complete: it is evaluated again.
    """
    try:
        summary = json.loads((out / "summary.json").read_text())
        seconds = json.loads((out / "loop_seconds.json").read_text())["loop_seconds"]
    except (OSError, ValueError, KeyError):
        return None
    same = isinstance(summary.get("config"), dict) and TrainConfig.from_dict(summary["config"]).identity() == config.identity()
    return (summary, seconds) if same and not summary.get("failed_studies") else None


def _figures(out: Path, result: RunResult) -> None:
    from . import plots

    summary = result.summary

    def rois(s):
        return {"all": s["mean_r"], **s["roi_mean_r"]}

    title = f"{summary['subject']}: best epoch {summary['best_epoch']}"
    plots.roi_bar_chart(out / "roi_r.png", rois(summary["baseline"]), rois(summary["tuned"]), title)
    plots.voxel_r_histogram(out / "voxel_r_hist.png", result.evaluations["baseline"].r, result.evaluations["tuned"].r,
                           title)


def run_trial(config: dict, plan: TrialPlan) -> None:
    """Tune function trainable; ``config`` is ``{"subject": ..., "settings": {...}}`` from the searcher."""
    import torch
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    subject = config["subject"]
    train_cfg = train_config(plan.fixed, config["settings"])
    out = plan.trial_dir(subject, trial_id)
    done = finished(train_cfg, out)
    if done is not None:
        summary, seconds = done
    elif plan.workers <= 1:
        torch.set_num_threads(max(1, math.floor(plan.cpus_per_worker)))
        summary, seconds = train(train_cfg, plan.data, subject, out, tune.report, reserved_device(train_cfg.device))
    else:
        summary, seconds = _run_distributed(train_cfg, plan, subject, out, trial_id)
    tune.report(final_metrics(summary, seconds))
    raise_failed_studies(summary, out)


def _worker_loop(loop_config: dict) -> None:
    """Ray Train worker: the same trainer, one shard of the blocks per worker."""
    import ray.train
    import torch

    torch.set_num_threads(max(1, math.floor(loop_config["cpus"])))
    config = TrainConfig.from_dict(loop_config["config"])
    # This worker's own GPU; where a run trains is not part of its identity (TrainConfig.identity).
    train(config, loop_config["data"], loop_config["subject"], Path(loop_config["out"]), ray.train.report,
          reserved_device(config.device))


def _run_distributed(config: TrainConfig, plan: TrialPlan, subject: str, out: Path, trial_id: str):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = plan.gpus_per_worker > 0
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.to_dict(), "data": plan.data, "subject": subject, "out": str(out),
                           "cpus": plan.cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": plan.cpus_per_worker,
                                                           **({"GPU": plan.gpus_per_worker} if use_gpu else {})}),
        # A fixed name per trial: a retried trial finds its own Train run again.
        run_config=RunConfig(name=f"train-{trial_id}", storage_path=str(SweepFolder(plan.storage).train),
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
    summary = json.loads((out / "summary.json").read_text())
    seconds = json.loads((out / "loop_seconds.json").read_text())["loop_seconds"]
    return summary, seconds
