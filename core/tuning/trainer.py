"""The training loop of a BrainWavLM model for one subject (or several on one backbone), read top to bottom.

The run, in order (:meth:`Trainer.fit`):

1. **Epoch 0** (the adapters are zero: the frozen model, its window features read from
   the disk cache). The running normalisation takes the statistics of the training
   stories; the readout starts from the epoch's ridge map (``readout_init: ridge``).
   With ``readout_refit: epoch`` it is set again from every epoch's ridge map, and with
   ``readout_refit_steps: N`` also every N optimiser steps, from a ridge on the training
   stories' current features.
2. **Epochs 1..E.** Stories in a seeded shuffled order; within a story, blocks of
   ``block_trs`` consecutive TRs; ``blocks_per_step`` blocks (spread over the
   data-parallel workers) make one optimiser step, forwarding only the windows that feed
   each block.
3. **After every epoch, the paper's protocol** (:mod:`core.encoding.evaluation`): the current
   model's features of every story, ridge fitted on the training stories, scored on the
   validation stories (``val_r``: weighted by the run's voxel weights, and per ROI) and
   on the test stories. The epoch with the best ``val_r`` is the best epoch (epoch 0
   included); its test score is ``tuned``, epoch 0's is ``baseline``. The model's own
   readout on the validation stories is recorded too (``val_readout_r``) but chooses
   nothing: the readout can drift while the features improve.
4. **The end** (:meth:`Trainer.evaluate`): the best epoch's own readout on the test
   stories (``tuned_readout``). The study measures (:mod:`core.studies`) run on the best
   epoch's features afterwards (:func:`core.run.run`).

Each step is a module of its own: which subjects train on which stories
(:mod:`core.tuning.members`); the epoch's blocks, each worker's share and the input cache
(:mod:`core.tuning.batches`); one optimiser step (:mod:`core.tuning.step`); story
features, current or frozen (:mod:`core.tuning.story_features`); the per-epoch ridge
protocol and the best epoch (:mod:`core.tuning.protocol`); checkpoints with the run's
identity and RNG states (:mod:`core.tuning.checkpoints`). A run started again on the same
``OUT`` with the same settings resumes from ``last.pt`` and gives the same numbers as an
uninterrupted run (on CPU); where it runs (``device``) is not part of a run's identity.

Several subjects, one backbone (``subjects``): every trained subject gets its own readout
(and its own voxels and ROI weighting) on the shared adapters. A training step's blocks
come from the union of the subjects' training stories; each block runs the backbone once
and every subject with responses to that story adds its loss, weighted by
``subject_weights`` (the same audio, different responses); or, with ``subject_steps:
interleaved``, each subject takes its own step on the block in turn. Each epoch fits each
subject's ridge on the same features; the best epoch is the one with the best
``subject_weights``-weighted mean of the subjects' validation r. ``baseline`` and
``tuned`` are the run's own subject's; the others' are under ``cotrained`` in the summary.

Data parallelism (:mod:`core.tuning.distributed`): inside a ``torch.distributed`` process group
(as Ray Train sets up) the model is wrapped in ``DistributedDataParallel``; each worker
takes its share of every step's blocks, and the step's normalisation statistics are
averaged over workers, so every worker holds the same parameters and 1 worker with
``blocks_per_step: 2`` computes what 2 workers do. Each epoch's features are computed by
the workers for their share of the stories; rank 0 fits the ridge, writes checkpoints and
evaluates the end, and hands each epoch's record to every worker.
"""


from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from core.backbones import checkpoint_config
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.evaluation import score_prediction
from core.encoding.features import WindowSpec
from core.errors import ConfigError
from core.tuning import checkpoints
from core.tuning.batches import InputCache, cohort_blocks, worker_steps
from core.tuning.checkpoints import Progress, restore_worker_rng, rng_states, seed_everything
from core.tuning.distributed import (all_reduce_mean, barrier, broadcast, broadcast_, data_parallel, gather_to_first,
                                     rank_and_world)
from core.tuning.members import Cohort
from core.tuning.model import StoryInput, build_model, make_optimizer
from core.tuning.protocol import evaluate_epoch, improves, own_readout_prediction, refit_readouts
from core.tuning.step import optimiser_step
from core.tuning.story_features import StoryFeatures

__all__ = ["Trainer", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Fine-tune WavLM on one subject's responses (or several subjects', on one backbone).

    Parameters
    ----------
    config : TrainConfig
    dataset : Dataset
    subject : str
    out : folder for checkpoints and results
    progress : callable taking a message (rank 0's are shown)
    on_epoch : callable taking the epoch's record (after its checkpoint is written; on every worker)
    device : overrides ``config.device`` (a data-parallel worker's own GPU); not part of the run's identity

    After :meth:`fit`, ``evaluations`` holds rank 0's test evaluations: ``baseline`` (epoch
    0), ``tuned`` (the best epoch, ridge), ``tuned_readout`` (its own readout), and
    ``baseline.<S>`` and ``tuned.<S>`` of each co-trained subject S.
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, subject: str, out, *,
                 progress: Callable[[str], None] = lambda m: None,
                 on_epoch: Callable[[dict], None] | None = None, device: str | torch.device | None = None):
        self.config, self.dataset, self.subject, self.out = config, dataset, subject, Path(out)
        self.rank, self.world = rank_and_world()
        self.progress = progress if self.rank == 0 else (lambda m: None)
        self.on_epoch = on_epoch
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.model_name = config.model or str(Path(dataset.root) / "pretrained")
        self.blocks_per_step = config.blocks_per_step or self.world
        if self.blocks_per_step % self.world:
            raise ConfigError(f"blocks_per_step: {self.blocks_per_step} blocks cannot be shared by "
                              f"{self.world} workers (expected a multiple of {self.world})")

        self.cohort = Cohort.load(config, dataset, subject)
        self.members, self.train_stories = self.cohort.members, self.cohort.train_stories
        self.split, self.roi_masks = self.members[0].split, self.members[0].roi_masks
        config.check_against(n_layers=checkpoint_config(self.model_name).num_hidden_layers,
                             roi_names=list(self.roi_masks),
                             story_trs={s: self.cohort.story_trs[s] for s in self.train_stories})

        seed_everything(config.seed)
        self.spec = WindowSpec.of(config)
        self.model, trainable, cnn_cache = build_model(config, self.model_name, self.spec, len(self.members[0].outputs),
                                                       {m.name: len(m.outputs) for m in self.members[1:]}, self.device)
        self.optimizer = make_optimizer(self.model, trainable, config)
        self.member_loss_weights = [torch.as_tensor(m.voxel_weights[m.outputs], device=self.device) for m in self.members]
        self.loss_weights = self.member_loss_weights[0]
        self.inputs = InputCache(self.model, dataset, self.cohort, self.device)
        self.story_input = self.inputs.story_input
        self.features = StoryFeatures(self.model, dataset, config, self.spec, cnn_cache, self.model_name,
                                      self.inputs, self.device, self.progress)
        self.state = Progress(epoch=0, history=[], best={"epoch": 0, "val_r": -np.inf}, evaluations={})
        self._parallel = None

    @property
    def subjects(self) -> list[str]:
        """The trained subjects, the run's own first."""
        return self.cohort.subjects

    @property
    def evaluations(self) -> dict:
        """The test evaluations so far (see the class docstring)."""
        return self.state.evaluations

    # -- the run ------------------------------------------------------------------------

    def fit(self) -> dict | None:
        """Train (or resume) and evaluate; returns the summary on rank 0 (None on the other workers)."""
        last = self.out / "checkpoints" / "last.pt"
        if last.exists():
            self.state = self._load(last, restore_rng=True)
            self.progress(f"resuming after epoch {self.state.epoch} from {last}")
        else:
            self._run_epoch(0, train_loss=float("nan"), started=time.time())
        for epoch in range(self.state.epoch + 1, self.config.epochs + 1):
            started = time.time()
            loss = self._train_epoch(epoch)
            self._run_epoch(epoch, train_loss=loss, started=started)
        return self.evaluate() if self.rank == 0 else None

    def _train_epoch(self, epoch: int) -> float:
        network = self._network()
        self.model.train()
        blocks = cohort_blocks(self.cohort, self.config.block_trs, self.config.seed, epoch,
                               self.cohort.interleaved(self.config))
        steps = worker_steps(blocks, self.blocks_per_step, self.rank, self.world)
        losses = []
        for step, mine in enumerate(steps):
            losses.append(self.train_blocks([(self.story_input(story), *rest) for story, *rest in mine], network))
            every = self.config.readout_refit_steps
            if every and (step + 1) % every == 0 and step + 1 < len(steps):  # the epoch's end refits anyway
                self._refit_readouts()
            if (step + 1) % max(1, len(steps) // 4) == 0:
                self.progress(f"epoch {epoch} step {step + 1}/{len(steps)} loss {np.mean(losses[-10:]):.4f}")
        self.model.eval()
        self.optimizer.zero_grad(set_to_none=True)  # gradients are not needed until the next step
        mean = torch.tensor([float(np.mean(losses)) if losses else float("nan")])
        all_reduce_mean([mean])
        return float(mean)

    def _refit_readouts(self) -> None:
        """Set the readouts again from a ridge on the training stories' current features (``readout_refit_steps``)."""
        stories = self.cohort.train_stories
        vectors = gather_to_first(self.features.window_vectors(stories[self.rank::self.world]))
        if self.rank == 0:
            refit_readouts(vectors, model=self.model, optimizer=self.optimizer, inputs=self.inputs, cohort=self.cohort,
                           dataset=self.dataset, config=self.config, progress=lambda m: None)
        del vectors
        self._share_readouts()

    def _share_readouts(self) -> None:
        """Rank 0's readouts, just set again, to every worker, each dropping AdamW's moments of the old map."""
        params = [p for readout in self.model.readouts() for p in readout.parameters()]
        broadcast_([p.data for p in params])
        for p in params:
            self.optimizer.state.pop(p, None)

    def train_blocks(self, blocks: list[tuple], network=None) -> float:
        """One optimiser step on this worker's blocks (:func:`core.tuning.step.optimiser_step`); returns their loss."""
        return optimiser_step(blocks, model=self.model, network=network if network is not None else self.model,
                              optimizer=self.optimizer, members=self.members, loss_weights=self.member_loss_weights,
                              config=self.config, world=self.world)

    def train_step(self, inp: StoryInput, start: int, stop: int) -> float:
        """One optimiser step on TRs ``start:stop`` of a prepared story (one worker); returns the loss."""
        return self.train_blocks([(inp, start, stop)])

    def _run_epoch(self, epoch: int, train_loss: float, started: float) -> None:
        """Evaluate the epoch (rank 0), share its record, checkpoint it and report it."""
        # Each worker computes its share of the stories' features; epoch 0's are the pretrained model's.
        self.progress(f"epoch {epoch}: features of {len(self.cohort.stories)} stories")
        frozen = self.features.frozen() if epoch == 0 else None
        vectors = gather_to_first(self.features.window_vectors(self.cohort.stories[self.rank::self.world], frozen))
        record = tests = None
        if self.rank == 0:
            val, tests = evaluate_epoch(epoch, vectors, model=self.model, optimizer=self.optimizer, inputs=self.inputs,
                                        cohort=self.cohort, dataset=self.dataset, config=self.config,
                                        progress=self.progress)
            record = {"epoch": epoch, "train_loss": train_loss, **val, "seconds": round(time.time() - started, 2)}
        del vectors
        record = broadcast(record)
        if epoch > 0 and self.config.readout_refit == "epoch":  # rank 0 set the readouts again
            self._share_readouts()
        state = self.state
        state.history.append(record)
        state.epoch = epoch
        if epoch == 0 and tests is not None:
            state.evaluations.update(self._named("baseline", tests))
        # Without validation stories the last epoch is the best one.
        if improves(epoch, record["val_r"], state.best["val_r"]) or not self.split.val:
            state.best = {"epoch": epoch, "val_r": record["val_r"]}
            if tests is not None:
                state.evaluations.update(self._named("tuned", tests))
            self._save(self.out / "checkpoints" / "best.pt")
        self._save(self.out / "checkpoints" / "last.pt")
        barrier()
        self.progress(f"epoch {epoch}: val r {record['val_r']:.4f} (ridge), {record['val_readout_r']:.4f} (readout)"
                      + (" (best)" if state.best["epoch"] == epoch else ""))
        if self.on_epoch is not None:
            self.on_epoch(dict(record, best_epoch=state.best["epoch"], best_val_r=state.best["val_r"]))

    def _named(self, what: str, by_subject: dict) -> dict:
        """``what`` for the run's subject, ``what.<S>`` for a co-trained one."""
        return {what if subject == self.subject else f"{what}.{subject}": result for subject, result in by_subject.items()}

    def _network(self):
        """The model to train: wrapped in DDP (made on first use, from rank 0's weights) with several workers."""
        if self.world > 1 and self._parallel is None:
            # A co-trained subject's readout gets no gradient from a story it has no responses to.
            partial = (self.cohort.interleaved(self.config)
                       or any(len(m.split.train) < len(self.train_stories) for m in self.members))
            self._parallel = data_parallel(self.model, find_unused_parameters=self.config.layerdrop > 0 or partial)
        return self._parallel if self._parallel is not None else self.model

    # -- checkpoints and the end --------------------------------------------------------

    def _save(self, path: Path) -> None:
        # Every worker's own RNG states (rank -> states), so that each resumes exactly; every worker calls _save.
        rng = gather_to_first({self.rank: rng_states(self.device)})
        if self.rank == 0:
            checkpoints.save(path, self.state, config=self.config, subject=self.subject, model=self.model,
                             optimizer=self.optimizer, rng=rng)

    def _load(self, path: Path, restore_rng: bool) -> Progress:
        state, rng = checkpoints.load(path, config=self.config, subject=self.subject, model=self.model,
                                      optimizer=self.optimizer)
        if restore_rng:
            restore_worker_rng(rng, self.rank, self.world, self.device, self.config.seed, state.epoch,
                               lambda message: self.progress(f"{path}: {message}"))
        return state

    @contextmanager
    def best_epoch(self):
        """Inside the block the model holds the best epoch's weights (``best.pt``); the last epoch's after it."""
        self._load(self.out / "checkpoints" / "best.pt", restore_rng=False)
        try:
            yield self.features
        finally:
            self._load(self.out / "checkpoints" / "last.pt", restore_rng=False)

    def evaluate(self) -> dict:
        """The summary: baseline and tuned (ridge) from the checkpoints, and the best epoch's own readout."""
        state = self.state
        self.progress(f"test evaluation of epoch {state.best['epoch']}")
        own = self.members[0]
        with self.best_epoch():
            vectors = self.features.window_vectors(self.split.test)
            prediction = own_readout_prediction(self.model, self.inputs, self.split.test, vectors, own)
            state.evaluations["tuned_readout"] = score_prediction(prediction, self.dataset, self.subject,
                                                                  self.split.test, self.roi_masks)
        return {
            "subject": self.subject,
            "subjects": self.subjects,
            "cotrained": {m.name: {what: state.evaluations[f"{what}.{m.name}"].summary for what in ("baseline", "tuned")}
                          for m in self.members[1:]},
            "best_epoch": state.best["epoch"],
            "best_val_r": state.best["val_r"],
            **{what: state.evaluations[what].summary for what in ("baseline", "tuned", "tuned_readout")},
            "history": state.history,
            "config": self.config.to_dict(),
            "model": self.model_name,
            "n_trainable": sum(p.numel() for g in self.optimizer.param_groups for p in g["params"]),
        }
