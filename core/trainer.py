"""Training a BrainWavLM model for one subject, with exact resume.

The run, in order (``Trainer.fit``):

1. **Epoch 0** (the adapters are zero: the frozen model). Features of every training,
   validation and test story; the normalisation statistics from the training stories;
   ridge on the training stories -> the frozen **baseline** on the test stories; the
   readout starts from that ridge map (``readout_init: ridge``) or at random.
2. **Epochs 1..E.** Stories in a seeded shuffled order; within a story, blocks of
   ``block_trs`` consecutive TRs, one optimiser step each, forwarding only the windows
   that feed the block. After each epoch: validation r (whole cortex and per ROI) with
   the model's own readout, a checkpoint, and a report to ``on_epoch`` (Ray Tune plugs
   in here).
3. **Best epoch** by validation r (epoch 0 included). Test evaluation two ways: ridge
   refit on the best model's features (**tuned**, the paper's protocol) and the model's
   own readout (**tuned_readout**).

Checkpoints (``OUT/checkpoints/last.pt`` and ``best.pt``) hold only what changes: the
trainable weights, normalisation statistics, optimiser state, RNG states, the epoch and
the history. A run started again on the same ``OUT`` with the same configuration resumes
from ``last.pt`` and gives the same numbers as an uninterrupted run (on CPU).

Data parallelism: inside a ``torch.distributed`` process group (as Ray Train sets up),
each worker takes every world-th block of the epoch's plan, gradients are averaged
before each step, the normalisation statistics after each epoch; rank 0 writes the
checkpoints. Evaluation runs on every worker (it is cheap next to training).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import metrics, probes
from .config import TrainConfig
from .dataset import Dataset
from .errors import ConfigError
from .evaluation import Evaluation, held_out_responses, score
from .extract import FrozenFeatures, all_window_features, resolve_cnn_cache
from .features import WindowSpec
from .loss import loss_fn, voxel_weights
from .model import BrainModel, Readout, adapt
from .ridge import fit_ridge
from .wavlm import load_wavlm

CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_blocks(stories: dict[str, int], block_trs: int, seed: int, epoch: int) -> list[tuple[str, int, int]]:
    """The epoch's optimiser steps: (story, first TR, stop TR), stories in a seeded order.

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


def ridge_as_linear(fit, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge's map of voxels ``outputs`` with its standardisation folded in: ``x @ weight + bias``.

    Returns weight of shape (n_features, len(outputs)) and bias of shape (len(outputs),).
    """
    scale = np.divide(1.0, fit.x_std, out=np.zeros_like(fit.x_std), where=fit.x_std > 0)
    weight = fit.weights[:, outputs] * scale[:, None]
    return weight, fit.y_mean[outputs] - (fit.x_mean * scale) @ fit.weights[:, outputs]


def fit_bottleneck_readout(features: dict[str, np.ndarray], responses: dict[str, np.ndarray], fit, outputs: np.ndarray,
                           weights: np.ndarray, config: TrainConfig, device: torch.device) -> Readout:
    """A readout (rank ``config.bottleneck``) trained on fixed features, as the trainer trains its own.

    It starts from the ridge fit (its best rank-k approximation, like the trainer's epoch
    0) and is trained for ``config.epochs`` passes of ``config.block_trs``-TR blocks with
    ``config.loss`` and ``config.readout_lr``; only the features never change. Used to give
    another subject a bottleneck readout on a tuned backbone (:meth:`Trainer.transfer`).

    Parameters
    ----------
    features : story -> array of shape (n_trs, n_features), the training stories' features.
    responses : story -> array of shape (n_trs, n_outputs), finite targets of the predicted voxels.
    fit : the ridge fit on those features (all voxels).
    outputs : int array of shape (n_outputs,), the voxels predicted.
    weights : array of shape (n_outputs,), the loss weight of each predicted voxel.
    """
    torch.manual_seed(config.seed)
    readout = Readout(fit.weights.shape[0], len(outputs), config.bottleneck)
    readout.set_linear(*ridge_as_linear(fit, outputs))
    readout.to(device)
    optimizer = torch.optim.AdamW(readout.parameters(), lr=config.readout_lr, weight_decay=config.weight_decay)
    x = {s: torch.as_tensor(v, dtype=torch.float32, device=device) for s, v in features.items()}
    y = {s: torch.as_tensor(v, dtype=torch.float32, device=device) for s, v in responses.items()}
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    for epoch in range(1, config.epochs + 1):
        for story, start, stop in epoch_blocks({s: len(v) for s, v in x.items()}, config.block_trs, config.seed, epoch):
            loss = loss_fn(config.loss, readout(x[story][start:stop]), y[story][start:stop], w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return readout.eval()


def _distributed() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    """Wait for every worker, as an all-reduce of one number.

    Not ``dist.barrier()``: with gloo it let one worker run ahead into the next epoch's
    gradient all-reduce while another still waited in the barrier (seen in 2-worker Ray
    Train runs on CPU: a deadlock). An all-reduce completes on every worker or on none.
    """
    if world > 1:
        import torch.distributed as dist

        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        dist.all_reduce(torch.zeros(1, device=device))


class Trainer:
    """Fine-tune WavLM on one subject's responses.

    Parameters
    ----------
    config : TrainConfig
    dataset : Dataset
    subject : str
    out : folder for checkpoints and results
    progress : callable taking a message
    on_epoch : callable taking the epoch's metrics dict (after its checkpoint is written)
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, subject: str, out, *,
                 progress: Callable[[str], None] = lambda m: None,
                 on_epoch: Callable[[dict], None] | None = None):
        self.config = config
        self.dataset = dataset
        self.subject = subject
        self.out = Path(out)
        self.progress = progress
        self.on_epoch = on_epoch
        self.device = resolve_device(config.device)
        self.rank, self.world = _distributed()
        self.model_name = config.model or str(Path(dataset.root) / "pretrained")

        dataset.validate(subject)
        self.split = dataset.split(subject, test=config.test_stories, val=config.val_stories)
        self.story_trs = {s: dataset.n_trs(subject, s) for s in self.split.train + self.split.val + self.split.test}
        self.roi_masks = dataset.roi_masks(subject)
        for other in config.transfer_to:
            dataset.validate(other)
        probes.check(config.probes, dataset)
        nan = dataset.nan_voxels(subject)
        config.check_against(n_layers=self._n_layers(), roi_names=list(self.roi_masks),
                             story_trs={s: self.story_trs[s] for s in self.split.train})
        self.weights = voxel_weights(config.roi_weights, self.roi_masks, nan)
        self.outputs = np.flatnonzero(self.weights > 0)  # voxels the readout predicts

        seed_everything(config.seed)
        self.spec = WindowSpec(context=config.context, chunk=config.chunk, stride=config.stride)
        net = load_wavlm(self.model_name, layerdrop=config.layerdrop, dropout=config.dropout)
        self.cnn_cache = resolve_cnn_cache(net, {"on": True, "off": False}.get(config.cnn_cache, config.cnn_cache))
        trainable = adapt(net, config.lora_layer_list(), config.lora_targets, config.lora_rank,
                          config.lora_alpha, config.lora_dropout)
        layers = config.readout_layers or [config.readout_layer]
        self.model = BrainModel(net, layers, self.spec, config.delays, config.bottleneck, len(self.outputs),
                                self.cnn_cache, config.norm_momentum).to(self.device)
        head = list(self.model.readout.parameters()) + ([self.model.layer_logits] if self.model.layer_logits is not None else [])
        groups = [{"params": head, "lr": config.readout_lr, "name": "readout"}]
        if trainable:
            groups.insert(0, {"params": trainable, "lr": config.lr, "name": "backbone"})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.loss_weights = torch.as_tensor(self.weights[self.outputs], device=self.device)
        self.history: list[dict] = []
        self.baseline: dict | None = None
        self.best = {"epoch": 0, "val_r": -np.inf}
        self.epoch = 0
        self._inputs: dict[str, object] = {}

    def _n_layers(self) -> int:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.model_name).num_hidden_layers
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load WavLM checkpoint {self.model_name!r}: {str(err).splitlines()[0]}") from None

    # -- data ---------------------------------------------------------------------------

    def story_input(self, story: str):
        """The story's prepared input; the last two stories used are kept."""
        if story not in self._inputs:
            if len(self._inputs) >= 2:
                self._inputs.pop(next(iter(self._inputs)))
            responses = self.dataset.responses(self.subject, story)[:, self.outputs]
            self._inputs[story] = self.model.prepare(story, self.dataset.audio(story),
                                                     self.dataset.tr_times(self.subject, story), responses)
        return self._inputs[story]

    def features(self, story: str, vectors=None) -> torch.Tensor:
        """Normalised delayed features of a whole story with the current model."""
        return self.model.story_features(self.story_input(story), vectors, self.config.batch_windows)

    # -- epoch 0 ------------------------------------------------------------------------

    def _epoch_zero(self) -> None:
        """Baseline, normalisation statistics and readout initialisation from the frozen model."""
        started = time.time()
        frozen = FrozenFeatures(self.model_name, self.spec, device=str(self.device), cnn_cache=self.cnn_cache,
                                batch_windows=self.config.batch_windows)
        stories = self.split.train + self.split.val + self.split.test
        vectors = {}
        for i, story in enumerate(stories):
            self.progress(f"epoch 0 [{i + 1}/{len(stories)}] frozen features: {story}")
            _, feats = frozen.window_features(self.dataset, story, self.model.readout_layers)
            vectors[story] = self.model.mix_layers({k: torch.from_numpy(v) for k, v in feats.items()})
        del frozen
        raw = torch.cat([self._extended_trs(s, vectors[s]) for s in self.split.train])
        self.model.norm.set_stats(raw.to(self.device))
        feats = {s: self.features(s, vectors[s]).cpu().numpy() for s in stories}
        fit, baseline = self._ridge(feats)
        self.baseline = baseline.summary
        self._baseline_eval = baseline
        if self.config.readout_init == "ridge":
            self._init_readout(fit)
        val = self._validate(feats)
        self._end_epoch(0, train_loss=float("nan"), val=val, seconds=time.time() - started)

    def _extended_trs(self, story: str, vectors: torch.Tensor) -> torch.Tensor:
        """Un-normalised TR features including the delays' extra leading rows."""
        inp = self.story_input(story)
        return inp.lanczos(vectors.to(self.device))

    def _ridge(self, feats: dict[str, np.ndarray], subject: str | None = None, split=None):
        """Ridge on the training stories' features; scored on the test stories (of this run's subject by default)."""
        subject, split = subject or self.subject, split or self.split
        X = np.concatenate([feats[s] for s in split.train])
        Y = np.concatenate([self.dataset.responses(subject, s) for s in split.train])
        fit = fit_ridge(X, Y, backend=self.config.ridge_backend, seed=self.config.seed)
        responses, ceiling = held_out_responses(self.dataset, subject, split.test)
        prediction = np.concatenate([fit.predict(feats[s]) for s in split.test])
        result = score(prediction, responses, self.dataset.roi_masks(subject), ceiling)
        result.alphas = fit.alphas
        return fit, result

    def _init_readout(self, fit) -> None:
        self.model.readout.set_linear(*ridge_as_linear(fit, self.outputs))

    # -- evaluation ---------------------------------------------------------------------

    def _predict(self, feats: np.ndarray) -> np.ndarray:
        """Own-readout prediction for all voxels (NaN for voxels not predicted)."""
        with torch.no_grad():
            pred = self.model.readout(torch.as_tensor(feats, device=self.device)).float().cpu().numpy()
        full = np.full((len(feats), len(self.weights)), np.nan, np.float32)
        full[:, self.outputs] = pred
        return full

    def _validate(self, feats: dict[str, np.ndarray]) -> dict:
        """Validation temporal r of the model's own readout: weighted whole-cortex and per ROI."""
        stories = self.split.val
        if not stories:
            return {"val_r": float("nan"), "val_roi_r": {}}
        pred = np.concatenate([self._predict(feats[s]) for s in stories])
        actual = np.concatenate([self.dataset.responses(self.subject, s) for s in stories])
        r = metrics.pearson_r(pred, actual)
        ok = np.isfinite(r) & (self.weights > 0)
        val_r = float((self.weights[ok] * r[ok]).sum() / self.weights[ok].sum()) if ok.any() else float("nan")
        return {"val_r": val_r, "val_roi_r": metrics.roi_summary(r, self.roi_masks)}

    def _features_now(self, stories) -> dict[str, np.ndarray]:
        return {s: self.features(s).cpu().numpy() for s in stories}

    # -- training -----------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        train_stories = {s: self.story_trs[s] for s in self.split.train}
        blocks = epoch_blocks(train_stories, self.config.block_trs, self.config.seed, epoch)
        # With several workers, each takes every world-th block; all take the same number of steps.
        blocks = blocks[self.rank : len(blocks) - len(blocks) % self.world : self.world]
        losses = []
        for i, (story, start, stop) in enumerate(blocks):
            losses.append(self.train_step(self.story_input(story), start, stop))
            if (i + 1) % max(1, len(blocks) // 4) == 0:
                self.progress(f"epoch {epoch} step {i + 1}/{len(blocks)} loss {np.mean(losses[-10:]):.4f}")
        if self.world > 1:
            self._average_buffers()
        self.model.eval()
        return float(np.mean(losses)) if losses else float("nan")

    def train_step(self, inp, start: int, stop: int) -> float:
        """One optimiser step on TRs ``start:stop`` of a prepared story; returns the loss."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            pred = self.model(inp, start, stop)
        loss = loss_fn(self.config.loss, pred, inp.responses[start:stop], self.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            self._average_gradients()
        self.optimizer.step()
        return loss.item()

    def _average_gradients(self) -> None:
        """Data parallelism without wrapping the model: each worker ran its own block."""
        import torch.distributed as dist

        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def _average_buffers(self) -> None:
        """Every worker updated the normalisation statistics on its own blocks; average them."""
        import torch.distributed as dist

        for buffer in (self.model.norm.mean, self.model.norm.var):
            dist.all_reduce(buffer)
            buffer /= self.world

    def _end_epoch(self, epoch: int, *, train_loss: float, val: dict, seconds: float) -> None:
        record = {"epoch": epoch, "train_loss": train_loss, **val, "seconds": round(seconds, 2)}
        self.history.append(record)
        self.epoch = epoch
        if improves(epoch, val["val_r"], self.best["val_r"]):
            self.best = {"epoch": epoch, "val_r": val["val_r"]}
            self._save(self.out / "checkpoints" / "best.pt")
        self._save(self.out / "checkpoints" / "last.pt")
        _barrier(self.world)
        self.progress(f"epoch {epoch}: val r {val['val_r']:.4f}" + (" (best)" if self.best["epoch"] == epoch else ""))
        if self.on_epoch is not None:
            self.on_epoch(dict(record, best_epoch=self.best["epoch"], best_val_r=self.best["val_r"]))

    # -- checkpoints --------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        if self.rank != 0:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "subject": self.subject,
            "epoch": self.epoch,
            "model": self.model.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "history": self.history,
            "best": self.best,
            "baseline": self.baseline,
            "baseline_eval": vars(self._baseline_eval),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _load(self, path: Path, restore_rng: bool) -> dict:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["config"] != self.config.to_dict() or state["subject"] != self.subject:
            raise ConfigError(f"{path}: holds a run with other settings; use another --out, or remove it to start over")
        self.model.load_trainable_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history, self.best, self.baseline, self.epoch = state["history"], state["best"], state["baseline"], state["epoch"]
        self._baseline_eval = Evaluation(**state["baseline_eval"])
        if restore_rng:
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            if state["rng"]["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return state

    # -- the run ------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train (or resume), evaluate the best epoch and return the summary."""
        last = self.out / "checkpoints" / "last.pt"
        if last.exists():
            self._load(last, restore_rng=True)
            self.progress(f"resuming after epoch {self.epoch} from {last}")
        else:
            self._epoch_zero()
        for epoch in range(self.epoch + 1, self.config.epochs + 1):
            started = time.time()
            loss = self._train_epoch(epoch)
            val = self._validate(self._features_now(self.split.val))
            self._end_epoch(epoch, train_loss=loss, val=val, seconds=time.time() - started)
        return self.evaluate()

    def transfer(self, subject: str, vectors: dict | None = None) -> dict:
        """Another subject's readouts on the current model's features and on the pretrained model's.

        The cross-subject transfer of the paper: this run's backbone (as loaded: the best
        epoch in :meth:`evaluate`) is kept fixed and a new ridge readout is fitted on
        ``subject``'s training stories, then scored on its test stories; the same on the
        pretrained model's features is the reference. Both go through this model's
        windows, Lanczos resampling, delays and normalisation, so only the backbone differs.

        Each also gets a bottleneck readout trained on those fixed features
        (:func:`fit_bottleneck_readout`), the paper's readout.

        ``vectors`` (story -> (pretrained, tuned) window vectors), shared between calls,
        keeps a story's window vectors, which do not depend on the subject, from being
        computed again for the next subject.

        Returns ``{"baseline", "tuned", "baseline_readout", "tuned_readout"}`` -> Evaluation.
        """
        split = self.dataset.split(subject, test=self.config.test_stories, val=self.config.val_stories)
        stories = split.train + split.test
        vectors = {} if vectors is None else vectors
        frozen = FrozenFeatures(self.model_name, self.spec, device=str(self.device), cnn_cache=self.cnn_cache,
                                batch_windows=self.config.batch_windows)
        pretrained, tuned = {}, {}
        for i, story in enumerate(stories):
            self.progress(f"transfer to {subject} [{i + 1}/{len(stories)}]: {story}")
            inp = self.model.prepare(story, self.dataset.audio(story), self.dataset.tr_times(subject, story), None)
            if story not in vectors:
                _, layers = frozen.window_features(self.dataset, story, self.model.readout_layers)
                vectors[story] = (self.model.mix_layers({k: torch.from_numpy(v) for k, v in layers.items()}),
                                  self.model.all_window_features(inp, self.config.batch_windows))
            for features, window_vectors in zip((pretrained, tuned), vectors[story]):
                features[story] = self.model.story_features(inp, window_vectors, self.config.batch_windows).cpu().numpy()
        weights = voxel_weights(self.config.roi_weights, self.dataset.roi_masks(subject), self.dataset.nan_voxels(subject))
        outputs = np.flatnonzero(weights > 0)
        responses = {s: self.dataset.responses(subject, s)[:, outputs] for s in split.train}
        held_out, ceiling = held_out_responses(self.dataset, subject, split.test)
        results = {}
        for name, feats in (("baseline", pretrained), ("tuned", tuned)):
            fit, results[name] = self._ridge(feats, subject, split)
            readout = fit_bottleneck_readout({s: feats[s] for s in split.train}, responses, fit, outputs,
                                             weights[outputs], self.config, self.device)
            with torch.no_grad():
                predicted = readout(torch.as_tensor(np.concatenate([feats[s] for s in split.test]), device=self.device))
            full = np.full((len(predicted), len(weights)), np.nan, np.float32)
            full[:, outputs] = predicted.float().cpu().numpy()
            results[f"{name}_readout"] = score(full, held_out, self.dataset.roi_masks(subject), ceiling)
        return results

    def probe(self) -> dict:
        """Word-level probes (:mod:`core.probes`) of the pretrained model and of the current one.

        Probes are fitted on the training stories' words and scored on the test stories'.
        Returns ``{family: {layer (str): {"pretrained": r, "tuned": r}}}``.
        """
        layers = self.config.probe_layers or list(range(1, self.config.readout_layer + 1))
        targets = probes.families(self.config.probes, self.dataset, self.spec, str(self.device))
        frozen = FrozenFeatures(self.model_name, self.spec, device=str(self.device), cnn_cache=self.cnn_cache,
                                batch_windows=self.config.batch_windows)

        def tuned(story):
            return all_window_features(self.model.wavlm, self.dataset.audio(story), self.spec, layers,
                                       batch_windows=self.config.batch_windows, cnn_cache=self.cnn_cache,
                                       device=self.device)

        def pretrained(story):
            return frozen.window_features(self.dataset, story, layers)

        training = self.model.training
        self.model.eval()  # no adapter dropout in the features probed
        try:
            self.progress(f"probes: {', '.join(targets)} at layers {layers}")
            scores = {name: probes.run_probes(self.dataset, list(self.split.train), list(self.split.test), features,
                                              targets, layers, seed=self.config.seed, backend=self.config.ridge_backend)
                      for name, features in (("pretrained", pretrained), ("tuned", tuned))}
        finally:
            self.model.train(training)
        return {family: {str(layer): {name: scores[name][family][layer] for name in scores} for layer in layers}
                for family in targets}

    def evaluate(self) -> dict:
        """Test evaluation of the best epoch: ridge refit (tuned) and own readout (tuned_readout)."""
        self._load(self.out / "checkpoints" / "best.pt", restore_rng=False)
        self.progress(f"test evaluation of epoch {self.best['epoch']}")
        feats = self._features_now(self.split.train + self.split.test)
        _, tuned = self._ridge(feats)
        responses, ceiling = held_out_responses(self.dataset, self.subject, self.split.test)
        readout = score(np.concatenate([self._predict(feats[s]) for s in self.split.test]), responses,
                        self.roi_masks, ceiling)
        shared: dict = {}
        transfer = {other: self.transfer(other, shared) for other in self.config.transfer_to if other != self.subject}
        del shared  # every story's window vectors: freed before the probes
        probed = self.probe() if self.config.probes else {}
        self._load(self.out / "checkpoints" / "last.pt", restore_rng=False)
        baseline = self._baseline_eval
        self.results = {"baseline": baseline, "tuned": tuned, "tuned_readout": readout}
        return {
            "transfer": {other: {name: result.summary for name, result in pair.items()} for other, pair in transfer.items()},
            "probes": probed,
            "subject": self.subject,
            "best_epoch": self.best["epoch"],
            "best_val_r": self.best["val_r"],
            "baseline": baseline.summary,
            "tuned": tuned.summary,
            "tuned_readout": readout.summary,
            "history": self.history,
            "config": self.config.to_dict(),
            "model": self.model_name,
            "n_trainable": sum(p.numel() for g in self.optimizer.param_groups for p in g["params"]),
        }
