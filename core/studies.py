"""Study measures of a tuned model, outside the training loop: cross-subject transfer and probes.

Both take a :class:`core.trainer.Trainer` whose model holds the weights to study (the
best epoch, in :meth:`core.trainer.Trainer.evaluate`) and compare it with the pretrained
model through the same pipeline, so only the backbone differs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import probes
from .evaluation import Evaluation, ridge_evaluation, score_prediction
from .extract import all_window_features
from .loss import loss_fn, voxel_weights
from .model import Readout, readout_prediction, ridge_as_linear

__all__ = ["transfer", "probe", "ridge_readout", "fit_bottleneck_readouts"]


def ridge_readout(fit, outputs: np.ndarray, config, device: torch.device) -> Readout:
    """A readout of rank ``config.bottleneck`` initialised from a ridge fit (its best rank-k approximation)."""
    torch.manual_seed(config.seed)
    readout = Readout(fit.weights.shape[0], len(outputs), config.bottleneck).to(device)
    readout.set_linear(*ridge_as_linear(fit, outputs))  # on the device: see Readout.set_linear
    return readout


def fit_bottleneck_readouts(features: dict[str, dict[str, np.ndarray]], responses, readouts: dict[str, Readout],
                            weights: np.ndarray, config, device: torch.device) -> dict[str, Readout]:
    """Readouts trained on fixed features, as the trainer trains its own.

    One readout per feature set (e.g. the pretrained and the tuned model's), each started
    from its ridge fit (:func:`ridge_readout`, like the trainer's epoch 0), trained side by
    side for ``config.epochs`` passes of ``config.block_trs``-TR blocks with
    ``config.loss`` and ``config.readout_lr``; only the features never change. The blocks
    come story by story, so memory holds one story's targets at a time, read once per
    epoch whatever the number of feature sets.

    Parameters
    ----------
    features : name -> story -> array of shape (n_trs, n_features), the training stories' features.
    responses : callable, story -> array of shape (n_trs, n_outputs), finite targets of the predicted voxels.
    readouts : name -> the readout to train (trained in place and returned, in eval mode).
    weights : array of shape (n_outputs,), the loss weight of each predicted voxel.
    """
    from .trainer import epoch_blocks

    optimizers = {name: torch.optim.AdamW(readout.parameters(), lr=config.readout_lr, weight_decay=config.weight_decay)
                  for name, readout in readouts.items()}
    x = {name: {s: torch.as_tensor(v, dtype=torch.float32, device=device) for s, v in by_story.items()}
         for name, by_story in features.items()}
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    lengths = {s: len(v) for s, v in next(iter(features.values())).items()}
    for epoch in range(1, config.epochs + 1):
        current, y = None, None
        for story, start, stop in epoch_blocks(lengths, config.block_trs, config.seed, epoch):
            if story != current:
                current = story
                y = torch.as_tensor(responses(story), dtype=torch.float32, device=device)
            for name, readout in readouts.items():
                loss = loss_fn(config.loss, readout(x[name][story][start:stop]), y[start:stop], w)
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
    return {name: readout.eval() for name, readout in readouts.items()}


def story_subsets(stories, fractions, seed: int) -> dict[float, list[str]]:
    """Nested subsets of ``stories`` for each share below 1: the first ``ceil(f * n)`` (>= 2) in a seeded order."""
    order = [stories[i] for i in np.random.default_rng([seed, 13]).permutation(len(stories))]
    return {f: sorted(order[:max(2, math.ceil(f * len(order)))]) for f in fractions if f < 1}


def transfer(trainer, subjects: list[str]) -> dict[str, dict[str, Evaluation]]:
    """Other subjects' readouts on the trainer's current features and on the pretrained model's.

    The cross-subject transfer of the paper: the backbone is kept fixed and a new ridge
    readout is fitted on each subject's training stories, then scored on its test
    stories; the same on the pretrained model's features is the reference. Each also
    gets a bottleneck readout trained on those fixed features
    (:func:`fit_bottleneck_readouts`), the paper's readout. A story's window vectors do
    not depend on the subject: they are computed once for every subject.

    Data efficiency (``config.transfer_fractions``): for each share ``f`` below 1, the two
    ridge readouts are fitted again on the first ``ceil(f * n)`` (at least 2) of the
    subject's ``n`` training stories in a seeded order, so that the subsets are nested,
    and scored on the same test stories: ``baseline@f`` and ``tuned@f``. Share 1 is
    ``baseline`` and ``tuned``.

    Returns ``{subject: {"baseline", "tuned", "baseline_readout", "tuned_readout",
    "baseline@f", "tuned@f", ...}}`` -> Evaluation.
    """
    if not subjects:
        return {}
    config, dataset = trainer.config, trainer.dataset
    splits = {s: dataset.split(s, test=config.test_stories, val=config.val_stories) for s in subjects}
    stories = sorted({story for split in splits.values() for story in (*split.train, *split.test)})
    trainer.progress(f"transfer to {', '.join(subjects)}: window vectors of {len(stories)} stories")
    vectors = {"baseline": trainer.window_vectors(stories, trainer.frozen_features()),
               "tuned": trainer.window_vectors(stories)}
    results = {}
    for subject, split in splits.items():
        weights = voxel_weights(config.roi_weights, dataset.roi_masks(subject), dataset.nan_voxels(subject))
        outputs = np.flatnonzero(weights > 0)
        results[subject] = {}
        by_model = {name: {} for name in vectors}
        for story in (*split.train, *split.test):  # each story's audio read once for both models
            inp = trainer.model.prepare(story, dataset.audio(story), dataset.tr_times(subject, story))
            for name, by_story in vectors.items():
                by_model[name][story] = trainer.model.ridge_features(inp, by_story[story])
        readouts = {}
        for name, features in by_model.items():
            fit, scored = ridge_evaluation(features, dataset, subject, split.train, {"test": split.test},
                                           seed=config.seed, backend=config.ridge_backend)
            results[subject][name] = scored["test"]
            readouts[name] = ridge_readout(fit, outputs, config, trainer.device)
            del fit
            for fraction, stories in story_subsets(split.train, config.transfer_fractions, config.seed).items():
                _, scored = ridge_evaluation(features, dataset, subject, stories, {"test": split.test},
                                             seed=config.seed, backend=config.ridge_backend)
                results[subject][f"{name}@{fraction:g}"] = scored["test"]
        fit_bottleneck_readouts({name: {s: f[s] for s in split.train} for name, f in by_model.items()},
                                lambda story: dataset.responses(subject, story, voxels=outputs),
                                readouts, weights[outputs], config, trainer.device)
        for name, readout in readouts.items():
            test_x = torch.as_tensor(np.concatenate([by_model[name][s] for s in split.test]), device=trainer.device)
            predict = readout_prediction(readout, test_x, outputs, len(weights))
            results[subject][f"{name}_readout"] = score_prediction(predict, dataset, subject, split.test)
    return results


def probe(trainer) -> dict:
    """Word-level probes (:mod:`core.probes`) of the pretrained model and of the trainer's current one.

    Probes are fitted on the training stories' words and scored on the test stories'.
    Returns ``{family: {layer (str): {"pretrained": r, "tuned": r}}}``.
    """
    config, dataset = trainer.config, trainer.dataset
    layers = config.probe_layers or list(range(1, config.readout_layer + 1))
    targets = probes.families(config.probes, dataset, trainer.spec, str(trainer.device))
    frozen = trainer.frozen_features()

    def tuned(story):
        return all_window_features(trainer.model.wavlm, dataset.audio(story), trainer.spec, layers,
                                   batch_windows=config.batch_windows, cnn_cache=trainer.cnn_cache,
                                   device=trainer.device)

    def pretrained(story):
        return frozen.window_features(dataset, story, layers)

    training = trainer.model.training
    trainer.model.eval()  # no adapter dropout in the features probed
    try:
        trainer.progress(f"probes: {', '.join(targets)} at layers {layers}")
        scores = {name: probes.run_probes(dataset, list(trainer.split.train), list(trainer.split.test), features,
                                          targets, layers, seed=config.seed, backend=config.ridge_backend)
                  for name, features in (("pretrained", pretrained), ("tuned", tuned))}
    finally:
        trainer.model.train(training)
    return {family: {str(layer): {name: scores[name][family][layer] for name in scores} for layer in layers}
            for family in targets}
