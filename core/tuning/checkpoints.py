"""Checkpoints of a run: its trainable state, history and evaluations, with its identity and RNG states.

``OUT/checkpoints/last.pt`` and ``best.pt`` hold only what changes: the trainable weights,
normalisation statistics, optimiser state, every worker's RNG states (its own GPU's), the
epoch, the history and the baseline and best test evaluations. Loading refuses a checkpoint of a run with other
settings (:meth:`core.config.TrainConfig.identity`) or of another subject; with the RNG
states restored, a resumed run gives the same numbers as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import TrainConfig
from core.encoding.evaluation import Evaluation
from core.errors import ConfigError
from core.outputs import atomic_write
from core.tuning.model import BrainModel

CHECKPOINT_VERSION = 4  # 4: one RNG entry per worker


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states(device: torch.device) -> dict:
    """This process's RNG states: Python's, numpy's, torch's CPU generator and ``device``'s own GPU generator."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_states(states: dict, device: torch.device) -> None:
    """Set the RNG states of :func:`rng_states`; a GPU state goes to ``device``, whichever GPU it was saved on."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


@dataclass
class Progress:
    """Where a run stands: the last epoch done, every epoch's record, the best epoch, and the test evaluations.

    ``evaluations``: "baseline" and the best epoch's "tuned" (rank 0); "baseline.<S>",
    "tuned.<S>" of co-trained subjects.
    """

    epoch: int
    history: list[dict]
    best: dict
    evaluations: dict[str, Evaluation]


def save(path: Path, progress: Progress, *, config: TrainConfig, subject: str, model: BrainModel,
         optimizer: torch.optim.Optimizer, rng: dict[int, dict]) -> None:
    """Write a checkpoint (to a temporary name first, so none is ever half-written).

    ``rng``: every worker's :func:`rng_states`, by rank.
    """
    state = {
        "version": CHECKPOINT_VERSION,
        "identity": config.identity(),
        "subject": subject,
        "epoch": progress.epoch,
        "model": {k: v.cpu() for k, v in model.trainable_state().items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "history": progress.history,
        "best": progress.best,
        "evaluations": {name: vars(result) for name, result in progress.evaluations.items()},
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(path: Path, *, config: TrainConfig, subject: str, model: BrainModel,
         optimizer: torch.optim.Optimizer) -> tuple[Progress, dict[int, dict]]:
    """Load a checkpoint into ``model`` and ``optimizer``; returns the run's progress and every worker's RNG states."""
    # On the CPU first: RNG states must be CPU tensors, and the run may have moved to another device.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: a checkpoint of version {state.get('version')}, this version reads "
                          f"{CHECKPOINT_VERSION}; use another --out, or remove it to start over")
    if state.get("identity") != config.identity() or state["subject"] != subject:
        raise ConfigError(f"{path}: holds a run with other settings; use another --out, or remove it to start over")
    model.load_trainable_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    progress = Progress(state["epoch"], state["history"], state["best"],
                        {name: Evaluation(**values) for name, values in state["evaluations"].items()})
    return progress, state["rng"]


def restore_worker_rng(rng: dict[int, dict], rank: int, world: int, device: torch.device, seed: int, epoch: int,
                       report: Callable[[str], None]) -> None:
    """Restore this worker's RNG states of a checkpoint saved by ``len(rng)`` workers.

    Saved by another number of workers, each worker's random numbers start again from the
    run's seed, the epoch and its rank (and ``report`` says so): each step's blocks are
    shared otherwise, so the run cannot be exact anyway.
    """
    if len(rng) == world:
        restore_rng_states(rng[rank], device)
        return
    report(f"saved by {len(rng)} workers, resumed by {world}: each worker's random numbers start again from the "
           "run's seed, the epoch and its rank, so the numbers differ from an uninterrupted run's")
    seed_everything(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))
