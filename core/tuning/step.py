"""One optimiser step: every trained subject's weighted loss on a worker's blocks, one backbone pass per block."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from core.config import TrainConfig
from core.tuning.loss import loss_fn
from core.tuning.members import Member


def autocast(device: torch.device, config: TrainConfig):
    """bf16 autocast on ``device`` where ``precision: bf16``, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def optimiser_step(blocks: list[tuple], *, model, network, optimizer: torch.optim.Optimizer, members: list[Member],
                   loss_weights: list[torch.Tensor], config: TrainConfig, world: int) -> float:
    """One optimiser step on this worker's blocks (story input, first TR, stop TR[, subject]); returns their mean loss.

    With several subjects a block's loss is ``sum_s w_s loss_s / sum_s w_s`` over the
    subjects with responses to its story (``w``: ``subject_weights``; the sum below over
    every trained subject), from one backbone pass; a block that names a subject
    (``subject_steps: interleaved``) has that subject's loss only, times ``w_s / mean(w)``.

    Parameters
    ----------
    model : the :class:`core.tuning.model.BrainModel` (its normalisation statistics are committed after the step).
    network : ``model``, or its ``DistributedDataParallel`` wrapper with several workers.
    loss_weights : per member, tensor of shape (n_outputs,), the loss weight of each predicted voxel.
    """
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    several = len(members) > 1
    weight_sum = sum(m.weight for m in members)
    for i, (inp, start, stop, *subject) in enumerate(blocks):
        # DDP averages gradients over workers on the last block's backward only.
        last = i == len(blocks) - 1
        with (nullcontext() if last or world == 1 else network.no_sync()):
            with autocast(model.device, config):
                preds = network(inp, start, stop, every_subject=True) if several else [network(inp, start, stop)]
            terms = [(m.weight, loss_fn(config.loss, pred, inp.responses[m.name][start:stop], w))
                     for m, pred, w in zip(members, preds, loss_weights)
                     if m.name in inp.responses and (not subject or m.name == subject[0])]
            scale = weight_sum / len(members) if subject else weight_sum
            loss = sum(weight * term for weight, term in terms) / (scale * len(blocks))
            loss.backward()
        total += loss.item()
    optimizer.step()
    model.norm.commit()
    return total
