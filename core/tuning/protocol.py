"""Each epoch's evaluation: the ridge protocol for every trained subject, epoch 0's initialisation, the best epoch.

After every epoch (:func:`evaluate_epoch`): the current model's features of every story,
ridge fitted on each subject's training stories, scored on its validation stories
(``val_r``: weighted by the voxel weights, and per ROI) and its test stories
(:mod:`core.encoding.evaluation`). At epoch 0 the running normalisation takes the
training stories' statistics and (``readout_init: ridge``) each readout starts from its
subject's ridge map (again every epoch with ``readout_refit: epoch``; plain, or on
whitened features with ``readout_whiten``: :mod:`core.tuning.readout_init`). The epoch with the best ``val_r`` becomes the best one (:func:`improves`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.evaluation import Evaluation, prediction_r, ridge_evaluation
from core.tuning.batches import InputCache
from core.tuning.members import Cohort, Member
from core.tuning.model import BrainModel, readout_prediction, ridge_as_linear
from core.tuning.readout_init import whitened_ridge_map


def improves(epoch: int, val_r: float, best_val_r: float) -> bool:
    """Whether an epoch becomes the best one: epoch 0 always, a later one with a finite, higher validation r."""
    return epoch == 0 or bool(np.isfinite(val_r) and val_r > best_val_r)


def weighted_mean_r(r: np.ndarray, weights: np.ndarray) -> float:
    """Mean of per-voxel ``r`` (n_voxels,) weighted by ``weights`` (n_voxels,), over finite voxels of weight > 0."""
    ok = np.isfinite(r) & (weights > 0)
    return float((weights[ok] * r[ok]).sum() / weights[ok].sum()) if ok.any() else float("nan")


def joint_val_r(members: list[Member], by_subject: dict[str, float]) -> float:
    """The subjects' validation r, mean weighted by their ``subject_weights`` (those of weight 0 left out)."""
    pairs = [(m.weight, by_subject.get(m.name, np.nan)) for m in members if m.weight > 0]
    if len(pairs) == 1:
        return pairs[0][1]
    return float(sum(w * r for w, r in pairs) / sum(w for w, _ in pairs))


def own_readout_prediction(model: BrainModel, inputs: InputCache, stories, vectors: dict[str, torch.Tensor],
                           member: Member):
    """The run's own readout's prediction of ``stories`` for all voxels, made per voxel block (:func:`readout_prediction`)."""
    with torch.no_grad():
        x = torch.cat([model.story_features(inputs.story_input(s, targets=False), vectors[s]) for s in stories])
    return readout_prediction(model.readout, x, member.outputs, len(member.voxel_weights))


def set_readout(readout, fit, features: dict[str, np.ndarray], member: Member, dataset: Dataset, config: TrainConfig,
                optimizer: torch.optim.Optimizer) -> None:
    """Set a subject's readout from the epoch's ridge ``fit``, or (``readout_whiten``) a ridge on whitened features."""
    if config.readout_whiten > 0:
        weight, bias = whitened_ridge_map(features, dataset, member.name, member.split.train, member.outputs,
                                          config.readout_whiten, seed=config.seed, backend=config.ridge_backend)
    else:
        weight, bias = ridge_as_linear(fit, member.outputs)
    readout.set_linear(weight, bias)
    for p in readout.parameters():  # AdamW's moments belong to the map that was replaced
        optimizer.state.pop(p, None)


def refit_readouts(vectors: dict[str, torch.Tensor], *, model: BrainModel, optimizer: torch.optim.Optimizer,
                   inputs: InputCache, cohort: Cohort, dataset: Dataset, config: TrainConfig,
                   progress: Callable[[str], None]) -> None:
    """Rank 0, within an epoch (``readout_refit_steps``): set each readout from a ridge on the training stories'
    current window ``vectors`` (story -> (n_windows, hidden_size)), as :func:`evaluate_epoch` does after an epoch."""
    features = {s: model.ridge_features(inputs.story_input(s, targets=False), vectors[s]) for s in cohort.train_stories}
    for m, readout in zip(cohort.members, model.readouts()):
        fit, _ = ridge_evaluation(features, dataset, m.name, m.split.train, {}, seed=config.seed,
                                  backend=config.ridge_backend, progress=progress)
        set_readout(readout, fit, features, m, dataset, config, optimizer)


def evaluate_epoch(epoch: int, vectors: dict[str, torch.Tensor], *, model: BrainModel,
                   optimizer: torch.optim.Optimizer, inputs: InputCache, cohort: Cohort, dataset: Dataset,
                   config: TrainConfig, progress: Callable[[str], None]) -> tuple[dict, dict[str, Evaluation]]:
    """Rank 0: the ridge protocol on this epoch's window ``vectors`` (story -> (n_windows, hidden_size)) for each subject.

    At epoch 0 it first sets the normalisation statistics and (``readout_init: ridge``)
    each readout from its subject's ridge map (:func:`set_readout`; every epoch with
    ``readout_refit: epoch``). Returns the epoch's validation record
    (``val_r``: the subjects' validation r, mean weighted by ``subject_weights``;
    ``val_roi_r`` and ``val_readout_r``: the run's own subject's, the latter its own
    readout's) and each subject's test evaluation.
    """
    features = {s: model.ridge_features(inputs.story_input(s, targets=False), vectors[s]) for s in cohort.stories}
    if epoch == 0:
        own_rows = [inputs.story_input(s, targets=False).lanczos(vectors[s].to(model.device))[max(config.delays):]
                    for s in cohort.train_stories]
        model.norm.set_stats(torch.cat(own_rows))
    record = {"val_r": float("nan"), "val_roi_r": {}, "val_readout_r": float("nan"), "val_r_by_subject": {}}
    tests = {}
    own = cohort.members[0]
    for m, readout in zip(cohort.members, model.readouts()):
        fit, scored = ridge_evaluation(features, dataset, m.name, m.split.train,
                                       {"val": m.split.val, "test": m.split.test}, seed=config.seed,
                                       backend=config.ridge_backend, progress=progress)
        if config.readout_init == "ridge" and (epoch == 0 or config.readout_refit == "epoch"):
            set_readout(readout, fit, features, m, dataset, config, optimizer)
        del fit
        tests[m.name] = scored["test"]
        if "val" in scored:
            record["val_r_by_subject"][m.name] = weighted_mean_r(scored["val"].r, m.voxel_weights)
            if m is own:
                record["val_roi_r"] = scored["val"].summary["roi_mean_r"]
    if own.split.val:
        record["val_r"] = joint_val_r(cohort.members, record["val_r_by_subject"])
        prediction = own_readout_prediction(model, inputs, own.split.val, vectors, own)
        record["val_readout_r"] = weighted_mean_r(prediction_r(prediction, dataset, own.name, own.split.val),
                                                  own.voxel_weights)
    return record, tests
