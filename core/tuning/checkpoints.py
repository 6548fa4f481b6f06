"""Checkpoints of a run: its trainable state, history and evaluations, with its identity and RNG states.

``OUT/checkpoints/last.pt`` and ``best.pt`` hold only what changes: the trainable weights,
normalisation statistics, optimiser state, RNG states, the epoch, the history and the
baseline and best test evaluations. Loading refuses a checkpoint of a run with other
settings (:meth:`core.config.TrainConfig.identity`) or of another subject; with the RNG
states restored, a resumed run gives the same numbers as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import TrainConfig
from core.encoding.evaluation import Evaluation
from core.errors import ConfigError
from core.outputs import atomic_write
from core.tuning.model import BrainModel

CHECKPOINT_VERSION = 3


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
         optimizer: torch.optim.Optimizer) -> None:
    """Write a checkpoint (to a temporary name first, so none is ever half-written)."""
    state = {
        "version": CHECKPOINT_VERSION,
        "identity": config.identity(),
        "subject": subject,
        "epoch": progress.epoch,
        "model": {k: v.cpu() for k, v in model.trainable_state().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "history": progress.history,
        "best": progress.best,
        "evaluations": {name: vars(result) for name, result in progress.evaluations.items()},
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(path: Path, *, config: TrainConfig, subject: str, model: BrainModel, optimizer: torch.optim.Optimizer,
         restore_rng: bool) -> Progress:
    """Load a checkpoint into ``model`` and ``optimizer`` (and the RNGs if asked); returns the run's progress."""
    # On the CPU first: RNG states must be CPU tensors, and the run may have moved to another device.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("identity") != config.identity() or state["subject"] != subject:
        raise ConfigError(f"{path}: holds a run with other settings; use another --out, or remove it to start over")
    model.load_trainable_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Progress(state["epoch"], state["history"], state["best"],
                    {name: Evaluation(**values) for name, values in state["evaluations"].items()})
