"""Training a BrainWavLM model for one subject: the loop, its evaluation and exact resume.

The run, in order (:meth:`Trainer.fit`):

1. **Epoch 0** (the adapters are zero: the frozen model, its window features read from
   the disk cache). The running normalisation takes the statistics of the training
   stories; the readout starts from the epoch's ridge map (``readout_init: ridge``).
2. **Epochs 1..E.** Stories in a seeded shuffled order; within a story, blocks of
   ``block_trs`` consecutive TRs; ``blocks_per_step`` blocks (spread over the
   data-parallel workers) make one optimiser step, forwarding only the windows that feed
   each block.
3. **After every epoch, the paper's protocol** (:mod:`core.evaluation`): the current
   model's features of every story, ridge fitted on the training stories, scored on the
   validation stories (``val_r``: weighted by the run's voxel weights, and per ROI) and
   on the test stories. The epoch with the best ``val_r`` is the best epoch (epoch 0
   included); its test score is ``tuned``, epoch 0's is ``baseline``. The model's own
   readout on the validation stories is recorded too (``val_readout_r``) but chooses
   nothing: the readout can drift while the features improve.
4. **The end** (:meth:`Trainer.evaluate`): the best epoch's own readout on the test
   stories (``tuned_readout``) and the study measures of :mod:`core.studies`.

Checkpoints (``OUT/checkpoints/last.pt`` and ``best.pt``) hold only what changes: the
trainable weights, normalisation statistics, optimiser state, every worker's RNG states (its
own GPU's), the epoch, the history and the baseline and best test evaluations. A run started again on the same
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

Data parallelism (:mod:`core.distributed`): inside a ``torch.distributed`` process group
(as Ray Train sets up) the model is wrapped in ``DistributedDataParallel``; each worker
takes its share of every step's blocks, and the step's normalisation statistics are
averaged over workers, so every worker holds the same parameters and 1 worker with
``blocks_per_step: 2`` computes what 2 workers do. Each epoch's features are computed by
the workers for their share of the stories; rank 0 fits the ridge, writes checkpoints and
evaluates the end, and hands each epoch's record to every worker.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import probes
from .config import TrainConfig
from .dataset import Dataset, Split
from .distributed import all_reduce_mean, barrier, broadcast, broadcast_, gather_to_first, rank_and_world
from .errors import BrainsweepError, ConfigError
from .evaluation import Evaluation, prediction_r, ridge_evaluation, score_prediction
from .extract import FrozenFeatures, resolve_cnn_cache
from .features import WindowSpec
from .loss import loss_fn, voxel_weights
from .model import BrainModel, StoryInput, adapt, readout_prediction, ridge_as_linear
from .outputs import atomic_write
from .readout_init import whitened_ridge_map
from .wavlm import load_wavlm

__all__ = ["Trainer", "epoch_blocks", "improves", "resolve_device", "seed_everything"]

CHECKPOINT_VERSION = 4  # 4: one RNG entry per worker

#: Prepared story inputs (audio, frozen CNN output, targets) kept between uses, in bytes.
INPUT_CACHE_BYTES = 2**30


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
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


def epoch_blocks(stories: dict[str, int], block_trs: int, seed: int, epoch: int) -> list[tuple[str, int, int]]:
    """The epoch's blocks: (story, first TR, stop TR), stories in a seeded order.

    A story's last block may be shorter; one of fewer than 2 TRs is dropped (a temporal
    correlation needs two).
    """
    order = np.random.default_rng([seed, epoch]).permutation(sorted(stories))
    blocks = []
    for story in order:
        n = stories[story]
        blocks += [(story, a, min(a + block_trs, n)) for a in range(0, n, block_trs) if min(a + block_trs, n) - a >= 2]
    return blocks


def improves(epoch: int, val_r: float, best_val_r: float) -> bool:
    """Whether an epoch becomes the best one: epoch 0 always, a later one with a finite, higher validation r."""
    return epoch == 0 or bool(np.isfinite(val_r) and val_r > best_val_r)


def weighted_mean_r(r: np.ndarray, weights: np.ndarray) -> float:
    """Mean of per-voxel ``r`` (n_voxels,) weighted by ``weights`` (n_voxels,), over finite voxels of weight > 0."""
    ok = np.isfinite(r) & (weights > 0)
    return float((weights[ok] * r[ok]).sum() / weights[ok].sum()) if ok.any() else float("nan")


@dataclass
class Member:
    """One subject trained by a run: its split, voxels and weights.

    Attributes
    ----------
    name : the subject.
    weight : its loss weight in a step (``subject_weights``), and its weight in the best-epoch choice.
    split : its train / validation / test stories.
    roi_masks : ROI name -> bool array of shape (n_voxels,).
    voxel_weights : array of shape (n_voxels,), the ROI weighting (0 = not predicted).
    outputs : int array, the voxels its readout predicts.
    """

    name: str
    weight: float
    split: Split
    roi_masks: dict[str, np.ndarray]
    voxel_weights: np.ndarray
    outputs: np.ndarray


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
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, subject: str, out, *,
                 progress: Callable[[str], None] = lambda m: None,
                 on_epoch: Callable[[dict], None] | None = None, device: str | torch.device | None = None):
        self.config = config
        self.dataset = dataset
        self.subject = subject
        self.out = Path(out)
        self.rank, self.world = rank_and_world()
        self.progress = progress if self.rank == 0 else (lambda m: None)
        self.on_epoch = on_epoch
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.model_name = config.model or str(Path(dataset.root) / "pretrained")
        self.blocks_per_step = config.blocks_per_step or self.world
        if self.blocks_per_step % self.world:
            raise ConfigError(f"blocks_per_step: {self.blocks_per_step} blocks cannot be shared by "
                              f"{self.world} workers (expected a multiple of {self.world})")

        self.members = self._members(config, dataset, subject)
        me = self.members[0]
        self.split, self.roi_masks, self.weights, self.outputs = me.split, me.roi_masks, me.voxel_weights, me.outputs
        # Training stories: every trained subject's; each held-out story once.
        self.train_stories = sorted({s for m in self.members for s in m.split.train})
        held_out = [s for m in self.members for s in (*m.split.val, *m.split.test)]
        self.stories = [*self.train_stories, *dict.fromkeys(held_out)]
        self.story_trs, self._story_subject = self._story_trs()
        for other in config.transfer_to:
            dataset.validate(other)
        probes.check(config.probes, dataset, [*self.split.train, *self.split.test])
        config.check_against(n_layers=self._n_layers(), roi_names=list(self.roi_masks),
                             story_trs={s: self.story_trs[s] for s in self.train_stories})

        seed_everything(config.seed)
        self.spec = WindowSpec(context=config.context, chunk=config.chunk, stride=config.stride)
        net = load_wavlm(self.model_name, layerdrop=config.layerdrop, dropout=config.dropout)
        self.cnn_cache = resolve_cnn_cache(net, {"on": True, "off": False}.get(config.cnn_cache, config.cnn_cache))
        trainable = adapt(net, config.lora_layer_list(), config.lora_targets, config.lora_rank,
                          config.lora_alpha, config.lora_dropout)
        layers = config.readout_layers or [config.readout_layer]
        self.model = BrainModel(net, layers, self.spec, config.delays, config.bottleneck, len(self.outputs),
                                self.cnn_cache, config.norm_momentum,
                                cotrained={m.name: len(m.outputs) for m in self.members[1:]}).to(self.device)
        head = [p for readout in self.model.readouts() for p in readout.parameters()]
        head += [self.model.layer_logits] if self.model.layer_logits is not None else []
        groups = [{"params": head, "lr": config.readout_lr, "name": "readout"}]
        if trainable:
            groups.insert(0, {"params": trainable, "lr": config.lr, "name": "backbone"})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.member_loss_weights = [torch.as_tensor(m.voxel_weights[m.outputs], device=self.device) for m in self.members]
        self.loss_weights = self.member_loss_weights[0]
        self.history: list[dict] = []
        self.best = {"epoch": 0, "val_r": -np.inf}
        self.epoch = 0
        # "baseline" and the best epoch's "tuned" (rank 0); "baseline.<S>", "tuned.<S>" of co-trained subjects.
        self.evaluations: dict[str, Evaluation] = {}
        self._inputs: dict[str, StoryInput] = {}  # least recently used first
        self._parallel = None

    @property
    def subjects(self) -> list[str]:
        """The trained subjects, the run's own first."""
        return [m.name for m in self.members]

    @staticmethod
    def _members(config: TrainConfig, dataset: Dataset, subject: str) -> list[Member]:
        members = []
        for name, weight in zip(config.training_subjects(subject), config.subject_weight_list(subject)):
            dataset.validate(name)
            masks = dataset.roi_masks(name)
            try:
                weights = voxel_weights(config.roi_weights, masks, dataset.nan_voxels(name))
            except ConfigError as error:
                raise ConfigError(f"{name}: {error}") from None
            members.append(Member(name, weight, dataset.split(name, test=config.test_stories, val=config.val_stories),
                                  masks, weights, np.flatnonzero(weights > 0)))
        return members

    def _story_trs(self) -> tuple[dict[str, int], dict[str, str]]:
        """TRs of every story, and the first subject that has it (whose TR times its input uses).

        Co-trained subjects must agree on each story they share: one backbone pass serves all.
        """
        trs, first = {}, {}
        for m in self.members:
            for story in (*m.split.train, *m.split.val, *m.split.test):
                n = self.dataset.n_trs(m.name, story)
                if story in trs and trs[story] != n:
                    raise ConfigError(f"subjects: story {story!r} has {trs[story]} TRs for {first[story]} and {n} for "
                                      f"{m.name}; subjects trained together need the same TRs of each shared story")
                trs.setdefault(story, n)
                first.setdefault(story, m.name)
        return trs, first

    @property
    def _interleaved(self) -> bool:
        """Whether each subject takes its own steps (``subject_steps: interleaved`` with several subjects)."""
        return len(self.members) > 1 and self.config.subject_steps == "interleaved"

    def _n_layers(self) -> int:
        from .wavlm import checkpoint_config

        return checkpoint_config(self.model_name).num_hidden_layers

    # -- data ---------------------------------------------------------------------------

    def story_input(self, story: str, targets: bool = True) -> StoryInput:
        """The story's prepared input, with the trained subjects' targets (for training) if asked.

        Prepared inputs (audio, frozen CNN output, targets) are kept, the most recently used
        first, up to ``INPUT_CACHE_BYTES``: a small dataset is prepared once per run, and
        on a large one a story's CNN runs once per visit.
        """
        inp = self._inputs.pop(story, None)
        if inp is None:
            inp = self.model.prepare(story, self.dataset.audio(story),
                                     self.dataset.tr_times(self._story_subject[story], story))
        if targets and not inp.responses:
            for m in self.members:
                if story in m.split.train:
                    responses = self.dataset.responses(m.name, story, voxels=m.outputs)
                    inp.responses[m.name] = torch.as_tensor(responses, dtype=torch.float32, device=self.device)
        self._inputs[story] = inp
        held = sum(kept.nbytes for kept in self._inputs.values())
        while len(self._inputs) > 1 and held > INPUT_CACHE_BYTES:
            held -= self._inputs.pop(next(iter(self._inputs))).nbytes
        return inp

    def frozen_features(self) -> FrozenFeatures:
        """The pretrained model's window features, cached on disk (shared by every trial of a sweep)."""
        return FrozenFeatures(self.model_name, self.spec, device=str(self.device), cnn_cache=self.cnn_cache,
                              batch_windows=self.config.batch_windows)

    def window_vectors(self, stories, frozen: FrozenFeatures | None = None) -> dict[str, torch.Tensor]:
        """Window vectors (n_windows, hidden_size) of ``stories``: the current model's, or ``frozen``'s (on the CPU).

        Always in float32, whatever ``precision`` trains with: ``frozen``'s (epoch 0's, and
        the pretrained side of the studies) come from the fp32 disk cache that every trial
        and :mod:`core.baseline` share, so the current model's are computed in fp32 too;
        ``best_epoch`` and the gain then compare models, not precisions. Evaluation is
        forward-only, so fp32 costs little next to training.
        """
        out = {}
        training = self.model.training
        self.model.eval()  # no adapter dropout, no layer drop
        try:
            for story in stories:
                if frozen is not None:
                    _, layers = frozen.window_features(self.dataset, story, self.model.readout_layers)
                    # Mixed by the learned layer weights, on the model's device.
                    layers = {k: torch.from_numpy(v).to(self.model.device) for k, v in layers.items()}
                    with torch.no_grad():
                        out[story] = self.model.mix_layers(layers).cpu()
                else:
                    out[story] = self.model.all_window_features(self.story_input(story, targets=False),
                                                                self.config.batch_windows).cpu()
        finally:
            self.model.train(training)
        return out

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    # -- evaluation of an epoch ---------------------------------------------------------

    def _epoch_vectors(self, epoch: int) -> dict[str, torch.Tensor] | None:
        """Every story's window vectors on rank 0 (None elsewhere); each worker computes its share.

        Epoch 0's are the pretrained model's, from the disk cache.
        """
        extractor = self.frozen_features() if epoch == 0 else None
        mine = self.stories[self.rank::self.world]
        self.progress(f"epoch {epoch}: features of {len(self.stories)} stories")
        return gather_to_first(self.window_vectors(mine, extractor))

    def _evaluate_epoch(self, epoch: int, vectors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, Evaluation]]:
        """Rank 0: the ridge protocol on this epoch's features for each trained subject, and the own readout's validation r.

        At epoch 0 it first sets the normalisation statistics and (``readout_init: ridge``)
        each readout from its subject's ridge map. Returns the epoch's validation record
        (``val_r``: the subjects' validation r, mean weighted by ``subject_weights``;
        ``val_roi_r`` and ``val_readout_r``: the run's own subject's) and each subject's
        test evaluation.
        """
        features = {s: self.model.ridge_features(self.story_input(s, targets=False), vectors[s]) for s in self.stories}
        if epoch == 0:
            own_rows = [self.story_input(s, targets=False).lanczos(vectors[s].to(self.device))[max(self.config.delays):]
                        for s in self.train_stories]
            self.model.norm.set_stats(torch.cat(own_rows))
        record = {"val_r": float("nan"), "val_roi_r": {}, "val_readout_r": float("nan"), "val_r_by_subject": {}}
        tests = {}
        for m, readout in zip(self.members, self.model.readouts()):
            fit, scored = ridge_evaluation(features, self.dataset, m.name, m.split.train,
                                           {"val": m.split.val, "test": m.split.test}, seed=self.config.seed,
                                           backend=self.config.ridge_backend, progress=self.progress)
            if self.config.readout_init == "ridge" and (epoch == 0 or self.config.readout_refit == "epoch"):
                self._set_readout(readout, fit, features, m)
            del fit
            tests[m.name] = scored["test"]
            if "val" in scored:
                record["val_r_by_subject"][m.name] = weighted_mean_r(scored["val"].r, m.voxel_weights)
                if m is self.members[0]:
                    record["val_roi_r"] = scored["val"].summary["roi_mean_r"]
        if self.split.val:
            record["val_r"] = self._joint_val_r(record["val_r_by_subject"])
            r = prediction_r(self._readout_prediction(self.split.val, vectors), self.dataset, self.subject, self.split.val)
            record["val_readout_r"] = weighted_mean_r(r, self.weights)
        return record, tests

    def _set_readout(self, readout, fit, features: dict[str, np.ndarray], m: Member) -> None:
        """Set a subject's readout from the epoch's ridge ``fit``, or (``readout_whiten``) a ridge on whitened features."""
        if self.config.readout_whiten > 0:
            weight, bias = whitened_ridge_map(features, self.dataset, m.name, m.split.train, m.outputs,
                                              self.config.readout_whiten, seed=self.config.seed,
                                              backend=self.config.ridge_backend)
        else:
            weight, bias = ridge_as_linear(fit, m.outputs)
        readout.set_linear(weight, bias)
        for p in readout.parameters():  # AdamW's moments belong to the map that was replaced
            self.optimizer.state.pop(p, None)

    def _joint_val_r(self, by_subject: dict[str, float]) -> float:
        """The subjects' validation r, mean weighted by their ``subject_weights`` (those of weight 0 left out)."""
        pairs = [(m.weight, by_subject.get(m.name, np.nan)) for m in self.members if m.weight > 0]
        if len(pairs) == 1:
            return pairs[0][1]
        return float(sum(w * r for w, r in pairs) / sum(w for w, _ in pairs))

    def _run_epoch(self, epoch: int, train_loss: float, started: float) -> None:
        """Evaluate the epoch (rank 0), share its record, checkpoint it and report it."""
        vectors = self._epoch_vectors(epoch)
        record = tests = None
        if self.rank == 0:
            val, tests = self._evaluate_epoch(epoch, vectors)
            record = {"epoch": epoch, "train_loss": train_loss, **val, "seconds": round(time.time() - started, 2)}
        del vectors
        record = broadcast(record)
        if epoch > 0 and self.config.readout_refit == "epoch":
            broadcast_([p.data for readout in self.model.readouts() for p in readout.parameters()])
        self.history.append(record)
        self.epoch = epoch
        if epoch == 0 and tests is not None:
            self.evaluations.update(self._named("baseline", tests))
        # Without validation stories the last epoch is the best one.
        if improves(epoch, record["val_r"], self.best["val_r"]) or not self.split.val:
            self.best = {"epoch": epoch, "val_r": record["val_r"]}
            if tests is not None:
                self.evaluations.update(self._named("tuned", tests))
            self._save(self.out / "checkpoints" / "best.pt")
        self._save(self.out / "checkpoints" / "last.pt")
        barrier()
        self.progress(f"epoch {epoch}: val r {record['val_r']:.4f} (ridge), {record['val_readout_r']:.4f} (readout)"
                      + (" (best)" if self.best["epoch"] == epoch else ""))
        if self.on_epoch is not None:
            self.on_epoch(dict(record, best_epoch=self.best["epoch"], best_val_r=self.best["val_r"]))

    def _named(self, what: str, by_subject: dict[str, Evaluation]) -> dict[str, Evaluation]:
        """``what`` for the run's subject, ``what.<S>`` for a co-trained one."""
        return {what if subject == self.subject else f"{what}.{subject}": result for subject, result in by_subject.items()}

    # -- training -----------------------------------------------------------------------

    def _network(self):
        """The model to train: wrapped in DDP (made on first use, from rank 0's weights) with several workers."""
        if self.world == 1:
            return self.model
        if self._parallel is None:
            from torch.nn.parallel import DistributedDataParallel

            # DDP starts every worker from rank 0's parameters (epoch 0 set the readout there);
            # the normalisation statistics too, once: after that each step averages them.
            broadcast_([self.model.norm.mean, self.model.norm.var])
            # A co-trained subject's readout gets no gradient from a story it has no responses to.
            partial = self._interleaved or any(len(m.split.train) < len(self.train_stories) for m in self.members)
            self._parallel = DistributedDataParallel(self.model, broadcast_buffers=False,
                                                     find_unused_parameters=self.config.layerdrop > 0 or partial)
        return self._parallel

    def _train_epoch(self, epoch: int) -> float:
        network = self._network()
        self.model.train()
        blocks = epoch_blocks({s: self.story_trs[s] for s in self.train_stories}, self.config.block_trs,
                              self.config.seed, epoch)
        if self._interleaved:
            # One step per subject on the same block, in turn (subjects of weight 0 take none).
            blocks = [(story, start, stop, m.name) for story, start, stop in blocks for m in self.members
                      if m.weight > 0 and story in m.split.train]
        per_step, share = self.blocks_per_step, self.blocks_per_step // self.world
        n_steps = len(blocks) // per_step  # every worker takes the same number of steps
        losses = []
        for step in range(n_steps):
            first = step * per_step + self.rank * share
            mine = [(self.story_input(story), *rest) for story, *rest in blocks[first:first + share]]
            losses.append(self.train_blocks(mine, network))
            if (step + 1) % max(1, n_steps // 4) == 0:
                self.progress(f"epoch {epoch} step {step + 1}/{n_steps} loss {np.mean(losses[-10:]):.4f}")
        self.model.eval()
        self.optimizer.zero_grad(set_to_none=True)  # gradients are not needed until the next step
        mean = torch.tensor([float(np.mean(losses)) if losses else float("nan")])
        all_reduce_mean([mean])
        return float(mean)

    def train_blocks(self, blocks: list[tuple], network=None) -> float:
        """One optimiser step on this worker's blocks (story input, first TR, stop TR[, subject]); returns their mean loss.

        With several subjects a block's loss is ``sum_s w_s loss_s / sum_s w_s`` over the
        subjects with responses to its story (``w``: ``subject_weights``; the sum below
        over every trained subject), from one backbone pass; a block that names a subject
        (``subject_steps: interleaved``) has that subject's loss only, times ``w_s / mean(w)``.
        """
        network = network if network is not None else self.model
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        several = len(self.members) > 1
        weight_sum = sum(m.weight for m in self.members)
        for i, (inp, start, stop, *subject) in enumerate(blocks):
            # DDP averages gradients over workers on the last block's backward only.
            last = i == len(blocks) - 1
            with (nullcontext() if last or self.world == 1 else network.no_sync()):
                with self._autocast():
                    preds = network(inp, start, stop, every_subject=True) if several else [network(inp, start, stop)]
                terms = [(m.weight, loss_fn(self.config.loss, pred, inp.responses[m.name][start:stop], w))
                         for m, pred, w in zip(self.members, preds, self.member_loss_weights)
                         if m.name in inp.responses and (not subject or m.name == subject[0])]
                scale = weight_sum / len(self.members) if subject else weight_sum
                loss = sum(weight * term for weight, term in terms) / (scale * len(blocks))
                loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.model.norm.commit()
        return total

    def train_step(self, inp: StoryInput, start: int, stop: int) -> float:
        """One optimiser step on TRs ``start:stop`` of a prepared story (one worker); returns the loss."""
        return self.train_blocks([(inp, start, stop)])

    # -- checkpoints --------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        # Every worker's own RNG states (rank -> states), so that each resumes exactly; every worker calls _save.
        rng = gather_to_first({self.rank: rng_states(self.device)})
        if self.rank != 0:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "identity": self.config.identity(),
            "subject": self.subject,
            "epoch": self.epoch,
            "model": {k: v.cpu() for k, v in self.model.trainable_state().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "history": self.history,
            "best": self.best,
            "evaluations": {name: vars(result) for name, result in self.evaluations.items()},
        }
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def _load(self, path: Path, restore_rng: bool) -> dict:
        # On the CPU first: RNG states must be CPU tensors, and the run may have moved to another device.
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{path}: a checkpoint of version {state.get('version')}, this version reads "
                              f"{CHECKPOINT_VERSION}; use another --out, or remove it to start over")
        if state.get("identity") != self.config.identity() or state["subject"] != self.subject:
            raise ConfigError(f"{path}: holds a run with other settings; use another --out, or remove it to start over")
        self.model.load_trainable_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history, self.best, self.epoch = state["history"], state["best"], state["epoch"]
        self.evaluations = {name: Evaluation(**values) for name, values in state["evaluations"].items()}
        if restore_rng and len(state["rng"]) == self.world:
            restore_rng_states(state["rng"][self.rank], self.device)
        elif restore_rng:
            # Another number of workers shares each step's blocks otherwise: the run cannot be exact anyway.
            self.progress(f"{path}: saved by {len(state['rng'])} workers, resumed by {self.world}: each worker's "
                          "random numbers start again from the run's seed, the epoch and its rank, so the "
                          "numbers differ from an uninterrupted run's")
            seed_everything(int(np.random.SeedSequence([self.config.seed, self.epoch, self.rank]).generate_state(1)[0]))
        return state

    # -- the run ------------------------------------------------------------------------

    def fit(self) -> dict | None:
        """Train (or resume) and evaluate; returns the summary on rank 0 (None on the other workers)."""
        last = self.out / "checkpoints" / "last.pt"
        if last.exists():
            self._load(last, restore_rng=True)
            self.progress(f"resuming after epoch {self.epoch} from {last}")
        else:
            self._run_epoch(0, train_loss=float("nan"), started=time.time())
        for epoch in range(self.epoch + 1, self.config.epochs + 1):
            started = time.time()
            loss = self._train_epoch(epoch)
            self._run_epoch(epoch, train_loss=loss, started=started)
        return self.evaluate() if self.rank == 0 else None

    def evaluate(self) -> dict:
        """The summary: baseline and tuned (ridge) from the checkpoints, the best epoch's own readout and study measures.

        A study that fails (e.g. a TextGrid removed since the start) does not take the
        trained model's results with it: its message goes to ``failed_studies`` (study ->
        message) and the summary is returned as usual; the caller writes the results and
        then raises (:func:`core.train.raise_failed_studies`).
        """
        from . import studies

        self._load(self.out / "checkpoints" / "best.pt", restore_rng=False)
        self.progress(f"test evaluation of epoch {self.best['epoch']}")
        vectors = self.window_vectors(self.split.test)
        readout = score_prediction(self._readout_prediction(self.split.test, vectors), self.dataset, self.subject,
                                   self.split.test, self.roi_masks)
        failed: dict[str, str] = {}

        def study(name, measure, *args):
            try:
                return measure(*args)
            except Exception as error:  # noqa: BLE001 - hours of training must not be lost to one study
                if isinstance(error, BrainsweepError):
                    failed[name] = str(error)
                else:  # a bug: its traceback is shown, since the run goes on to write its results
                    failed[name] = f"{type(error).__name__}: {error}"
                    self.progress(traceback.format_exc())
                self.progress(f"{name} failed after training: {failed[name]}")
                return {}

        transfer = study("transfer", studies.transfer, self, [s for s in self.config.transfer_to if s not in self.subjects])
        probed = study("probes", studies.probe, self) if self.config.probes else {}
        self._load(self.out / "checkpoints" / "last.pt", restore_rng=False)
        self.results = {"baseline": self.evaluations["baseline"], "tuned": self.evaluations["tuned"],
                        "tuned_readout": readout}
        return {
            "transfer": {other: {name: result.summary for name, result in pair.items()} for other, pair in transfer.items()},
            "probes": probed,
            "failed_studies": failed,
            "subject": self.subject,
            "subjects": self.subjects,
            "cotrained": {m.name: {what: self.evaluations[f"{what}.{m.name}"].summary for what in ("baseline", "tuned")}
                          for m in self.members[1:]},
            "best_epoch": self.best["epoch"],
            "best_val_r": self.best["val_r"],
            "baseline": self.results["baseline"].summary,
            "tuned": self.results["tuned"].summary,
            "tuned_readout": readout.summary,
            "history": self.history,
            "config": self.config.to_dict(),
            "model": self.model_name,
            "n_trainable": sum(p.numel() for g in self.optimizer.param_groups for p in g["params"]),
        }

    def _readout_prediction(self, stories, vectors: dict[str, torch.Tensor]):
        """The own readout's prediction of ``stories`` for all voxels, made per voxel block (:func:`readout_prediction`)."""
        with torch.no_grad():
            x = torch.cat([self.model.story_features(self.story_input(s, targets=False), vectors[s]) for s in stories])
        return readout_prediction(self.model.readout, x, self.outputs, len(self.weights))
