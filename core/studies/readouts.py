"""Bottleneck readouts on fixed features: started from a ridge fit and trained as the trainer trains its own."""

from __future__ import annotations

import numpy as np
import torch

from core.tuning.batches import epoch_blocks
from core.tuning.loss import loss_fn
from core.tuning.model import Readout, ridge_as_linear

__all__ = ["ridge_readout", "fit_bottleneck_readouts"]


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
