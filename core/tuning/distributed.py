"""Data parallelism for the trainer: which worker am I, and the few collectives it needs.

Inside a ``torch.distributed`` process group (Ray Train sets one up: gloo on CPU, NCCL on
GPU) every worker runs the same :class:`core.tuning.trainer.Trainer`. Gradients are averaged by
``DistributedDataParallel``; what DDP does not cover lives here: the normalisation
statistics of a step (:func:`all_reduce_mean`), the per-epoch features, which each worker
computes for its share of the stories and rank 0 collects (:func:`gather_to_first`), and
rank 0's ridge results handed to every worker (:func:`broadcast`). Without a process group
every function is the identity, so the single-process path runs the same code.
"""

from __future__ import annotations

import torch

__all__ = ["rank_and_world", "barrier", "all_reduce_mean", "broadcast_", "gather_to_first", "broadcast"]


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, or (0, 1) without one."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def _device():
    dist = _dist()
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every worker, as an all-reduce of one number.

    Not ``dist.barrier()``: with gloo it let one worker run ahead into the next epoch's
    gradient all-reduce while another still waited in the barrier (seen in 2-worker Ray
    Train runs on CPU: a deadlock). An all-reduce completes on every worker or on none.
    """
    dist = _dist()
    if dist and dist.get_world_size() > 1:
        dist.all_reduce(torch.zeros(1, device=_device()))


def _in_place(tensors: list[torch.Tensor], collective) -> None:
    """Run ``collective`` on each tensor (moved to the process group's device) and copy the result back."""
    for tensor in tensors:
        moved = tensor.to(_device())
        collective(moved)
        tensor.copy_(moved)


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its mean over the workers."""
    dist = _dist()
    if dist and dist.get_world_size() > 1:
        _in_place(tensors, lambda t: (dist.all_reduce(t), t.div_(dist.get_world_size())))


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor, in place, with rank 0's."""
    dist = _dist()
    if dist and dist.get_world_size() > 1:
        _in_place(tensors, lambda t: dist.broadcast(t, src=0))


def gather_to_first(part: dict) -> dict | None:
    """Merge every worker's dict on rank 0 (None elsewhere); the dict itself without workers."""
    dist = _dist()
    if not dist or dist.get_world_size() == 1:
        return part
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, parts, dst=0)
    if dist.get_rank() != 0:
        return None
    return {key: value for piece in parts for key, value in piece.items()}


def broadcast(value):
    """Rank 0's ``value`` on every worker (any picklable object)."""
    dist = _dist()
    if not dist or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def data_parallel(model: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel``, every worker starting from rank 0's parameters and statistics."""
    from torch.nn.parallel import DistributedDataParallel

    # DDP starts every worker from rank 0's parameters (epoch 0 set the readout there);
    # the normalisation statistics too, once: after that each step averages them.
    broadcast_([model.norm.mean, model.norm.var])
    return DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
