"""The brain model: backbone (+ LoRA) -> windows -> TRs -> delays -> readout; how it is built, and its optimiser groups.

    audio windows --WavLM up to the read-out layer--> one vector per window (chunk mean)
      --Lanczos (banded, differentiable)--> TR features --running normalisation-->
      --FIR delays--> bottleneck readout --> voxels

A training step runs only the windows that feed its block of TRs (plus the TRs its
delays reach back to). Layers above the read-out layer are never computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.backbones import adapt, load_backbone
from core.encoding.extract import StoryWindows, resolve_cnn_cache, story_cnn, to_trs, window_vectors
from core.encoding.features import LanczosOperator, WindowSpec, delay_features, extended_tr_times
from core.tuning.distributed import all_reduce_mean


class RunningNorm(nn.Module):
    """Per-feature normalisation with running statistics (no affine part).

    The statistics are set from the epoch-0 features of the training stories and then
    follow training with an exponential moving average, updated once per optimiser step
    (:meth:`commit`) with the mean of the step's block statistics over every block of the
    step and every data-parallel worker: so the run's numbers do not depend on how the
    step's blocks were spread over workers. A block is normalised with the statistics
    from before its step, so its prediction does not depend on which TRs share its
    block, and training and evaluation normalise the same way.
    """

    def __init__(self, n_features: int, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("var", torch.ones(n_features))
        self._pending: list[torch.Tensor] = []

    def set_stats(self, x: torch.Tensor) -> None:
        """Statistics of ``x`` of shape (n_trs, n_features)."""
        self.mean.copy_(x.mean(0))
        self.var.copy_(x.var(0, unbiased=False))

    def observe(self, x: torch.Tensor) -> None:
        """Remember the statistics of one block, ``x`` of shape (n_trs, n_features), until :meth:`commit`."""
        self._pending.append(torch.stack([x.mean(0), x.var(0, unbiased=False)]))

    def commit(self) -> None:
        """Fold the step's observed block statistics (averaged over blocks and workers) into the running ones."""
        if not self._pending:
            return
        stats = torch.stack(self._pending).mean(0)
        self._pending.clear()
        all_reduce_mean([stats])
        m = self.momentum
        self.mean.mul_(1 - m).add_(m * stats[0])
        self.var.mul_(1 - m).add_(m * stats[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * torch.rsqrt(self.var + 1e-6)


class Readout(nn.Module):
    """Delayed features -> voxels: ``Linear(in, k) -> Linear(k, voxels)``, or one ``Linear`` when ``k == 0``."""

    def __init__(self, n_in: int, n_out: int, bottleneck: int):
        super().__init__()
        self.bottleneck = bottleneck
        if bottleneck:
            self.down = nn.Linear(n_in, bottleneck, bias=False)
            self.up = nn.Linear(bottleneck, n_out)
        else:
            self.up = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) if self.bottleneck else self.up(x)

    @torch.no_grad()
    def set_linear(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Set the readout to the linear map ``x @ weight + bias`` (best rank-k approximation with a bottleneck).

        The rank-k factors come from the eigendecomposition of ``weight @ weight.T``
        (n_in x n_in) on the readout's device, not from an SVD of the whole map: with
        n_out ~ 95,000 voxels that SVD takes ~1,000 s on two CPU threads.

        Parameters
        ----------
        weight : float32 array of shape (n_in, n_out)
        bias : array of shape (n_out,)
        """
        device = self.up.weight.device
        w = torch.as_tensor(weight).to(device, torch.float32)  # no copy for a float32 array on the CPU
        if self.bottleneck:
            # eigh in float64: the Gram matrix is small, and its eigenvalues are the squared singular values
            eigvals, eigvecs = torch.linalg.eigh((w @ w.T).double())
            k = min(self.bottleneck, *w.shape)
            top = eigvals.flip(0)[:k].clamp(min=0).sqrt().float()  # singular values s, descending
            u = eigvecs.flip(1)[:, :k].float()  # left singular vectors, (n_in, k)
            root = top.sqrt()
            # up = v * sqrt(s) with v = w.T @ u / s; a zero singular value gets a zero column
            inverse_root = torch.where(root > 0, 1 / root, torch.zeros_like(root))
            self.down.weight.zero_()
            self.up.weight.zero_()
            self.down.weight[:k] = (u * root).T
            self.up.weight[:, :k] = (w.T @ u) * inverse_root
        else:
            self.up.weight.copy_(w.T)
        self.up.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def ridge_as_linear(fit, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ridge fit's map to voxels ``outputs`` with its standardisation folded in: ``x @ weight + bias``.

    Parameters
    ----------
    fit : core.encoding.ridge.RidgeFit
    outputs : int array of shape (n_outputs,)

    Returns
    -------
    weight : array of shape (n_features, n_outputs), in ``fit.weights``' dtype: float32, one copy
        of the map (the float64 standardisation is cast down first, so it never promotes the
        map to a float64 copy).
    bias : array of shape (n_outputs,)
    """
    scale = np.divide(1.0, fit.x_std, out=np.zeros_like(fit.x_std), where=fit.x_std > 0)
    weight = fit.weights[:, outputs]
    bias = fit.y_mean[outputs] - ((fit.x_mean * scale).astype(weight.dtype) @ weight)
    weight *= scale[:, None].astype(weight.dtype)
    return weight, bias


def readout_prediction(readout: Readout, x: torch.Tensor, outputs: np.ndarray, n_voxels: int):
    """A readout's prediction of all ``n_voxels``, made one voxel block at a time.

    Parameters
    ----------
    readout : Readout, predicting the voxels ``outputs`` (its output ``i`` is voxel ``outputs[i]``).
    x : tensor of shape (n_trs, n_in), the readout's input (delayed, normalised features).
    outputs : int array of shape (n_outputs,)
    n_voxels : int, the subject's voxel count.

    Returns
    -------
    predict : callable ``voxels (slice) -> float32 array (n_trs, width)``, NaN for voxels
        not in ``outputs``; for :func:`core.encoding.evaluation.prediction_r`. Only the bottleneck
        (n_trs x k) is kept: the (n_trs, n_voxels) prediction is never made whole.
    """
    with torch.no_grad():
        hidden = readout.down(x) if readout.bottleneck else x
    column = np.full(n_voxels, -1)
    column[outputs] = np.arange(len(outputs))

    def predict(voxels: slice) -> np.ndarray:
        columns = column[voxels]
        have = columns >= 0
        out = np.full((len(hidden), len(columns)), np.nan, np.float32)
        if have.any():
            index = torch.as_tensor(columns[have], device=hidden.device)
            with torch.no_grad():
                block = nn.functional.linear(hidden, readout.up.weight[index], readout.up.bias[index])
            out[:, have] = block.float().cpu().numpy()
        return out

    return predict


@dataclass
class StoryInput:
    """What the model needs of one story, prepared once per visit (cheap until windows run).

    Attributes
    ----------
    windows : the story's windows.
    padded : tensor of shape (n_padded_samples,), the audio with a window of silence before.
    lanczos : operator from window times to the response TRs extended by ``max(delays)``
        earlier TRs (kept on the CPU: it only holds indices and weights).
    cnn : tensor of shape (n_frames, conv_dim) or None, the story's frozen CNN output,
        computed on first use when the model caches it.
    responses : subject -> tensor of shape (n_trs, n_outputs), that subject's targets of its
        trained voxels (filled by the trainer for training).
    tr_times : array of shape (n_trs,), the response rows' times on the audio clock.
    """

    name: str
    windows: StoryWindows
    padded: torch.Tensor
    lanczos: LanczosOperator
    cnn: torch.Tensor | None
    responses: dict[str, torch.Tensor]
    tr_times: np.ndarray

    @property
    def n_trs(self) -> int:
        return len(self.tr_times)

    @property
    def nbytes(self) -> int:
        """Bytes held by its tensors (audio, CNN output, targets)."""
        return sum(t.numel() * t.element_size() for t in (self.padded, self.cnn, *self.responses.values()) if t is not None)


class BrainModel(nn.Module):
    """WavLM with a differentiable readout to voxel responses.

    Parameters
    ----------
    wavlm : a ``WavLMModel`` (adapters already added, see :func:`core.backbones.adapt`).
    readout_layers : layers read out (1-based); several are mixed by learned softmax weights.
    spec : window settings.
    delays : FIR delays in TRs.
    bottleneck : readout rank (0 = full linear map).
    n_outputs : number of predicted voxels.
    cnn_cache : run the frozen CNN once per story and slice it (exact for layer-norm CNNs).
    norm_momentum : of the running normalisation.
    cotrained : other subjects trained on the same backbone -> their number of predicted
        voxels; each gets its own readout in ``cotrained`` (the run's subject has ``readout``).
    """

    def __init__(self, wavlm, readout_layers: list[int], spec: WindowSpec, delays, bottleneck: int,
                 n_outputs: int, cnn_cache: bool, norm_momentum: float = 0.01, cotrained: dict[str, int] | None = None):
        super().__init__()
        self.wavlm = wavlm
        self.readout_layers = list(readout_layers)
        self.spec = spec
        self.delays = list(delays)
        self.cnn_cache = cnn_cache
        hidden = wavlm.config.hidden_size
        self.layer_logits = nn.Parameter(torch.zeros(len(readout_layers))) if len(readout_layers) > 1 else None
        self.norm = RunningNorm(hidden, norm_momentum)
        self.readout = Readout(len(self.delays) * hidden, n_outputs, bottleneck)
        self.cotrained = nn.ModuleDict({subject: Readout(len(self.delays) * hidden, n, bottleneck)
                                        for subject, n in (cotrained or {}).items()})

    def readouts(self) -> list[Readout]:
        """Every subject's readout: the run's subject's first, then the co-trained ones in order."""
        return [self.readout, *self.cotrained.values()]

    @property
    def device(self) -> torch.device:
        return self.norm.mean.device

    def prepare(self, name: str, audio: np.ndarray, tr_times: np.ndarray) -> StoryInput:
        """Windows, padded audio and Lanczos operator of one story (no targets yet)."""
        windows = StoryWindows.for_audio(len(audio), self.spec)
        padded = torch.from_numpy(windows.pad(audio)).to(self.device)
        lanczos = LanczosOperator(windows.times, extended_tr_times(tr_times, max(self.delays)))
        return StoryInput(name, windows, padded, lanczos, None, {}, np.asarray(tr_times, dtype=np.float64))

    def mix_layers(self, vectors: dict[int, torch.Tensor]) -> torch.Tensor:
        """One vector per window from the read-out layer(s): (n_windows, hidden_size)."""
        if self.layer_logits is None:
            return vectors[self.readout_layers[0]]
        weights = torch.softmax(self.layer_logits, 0)
        return sum(w * vectors[k] for w, k in zip(weights, self.readout_layers))

    def window_features(self, story: StoryInput, ids: np.ndarray) -> torch.Tensor:
        """Window vectors of windows ``ids``: (len(ids), hidden_size)."""
        if self.cnn_cache and story.cnn is None:
            story.cnn = story_cnn(self.wavlm, story.padded)
        return self.mix_layers(window_vectors(self.wavlm, story.padded, story.windows, ids, self.readout_layers, story.cnn))

    def head(self, window_vectors_: torch.Tensor, story: StoryInput, rows: slice, ids=None) -> torch.Tensor:
        """Window vectors -> normalised delayed features of response rows ``rows``.

        Returns (rows.stop - rows.start, len(delays) * hidden_size).
        """
        extended = slice(rows.start, rows.stop + max(self.delays))
        x = story.lanczos(window_vectors_, rows=extended, window_ids=ids)
        if self.training:
            self.norm.observe(x.detach().float())
        return delay_features(self.norm(x), self.delays)

    def forward(self, story: StoryInput, start: int, stop: int, every_subject: bool = False):
        """Predicted responses of TRs ``start:stop`` of a story, (stop - start, n_outputs).

        Only the windows whose Lanczos weights reach those TRs (or the TRs their delays
        read) are run through WavLM. With ``every_subject``, a list of every subject's
        prediction from the one backbone pass, in the order of :meth:`readouts`.
        """
        rows = slice(start, stop)
        ids = story.lanczos.windows_for(slice(start, stop + max(self.delays)))
        vectors = self.window_features(story, ids)
        x = self.head(vectors, story, rows, ids)
        return [readout(x) for readout in self.readouts()] if every_subject else self.readout(x)

    @torch.no_grad()
    def all_window_features(self, story: StoryInput, batch_windows: int = 64) -> torch.Tensor:
        """Vectors of every window of a story, batched, without gradients: (n_windows, hidden_size)."""
        out = [self.window_features(story, np.arange(i, min(i + batch_windows, len(story.windows))))
               for i in range(0, len(story.windows), batch_windows)]
        return torch.cat(out)

    @torch.no_grad()
    def story_features(self, story: StoryInput, vectors: torch.Tensor | None = None, batch_windows: int = 64) -> torch.Tensor:
        """Normalised delayed features of every response TR: (n_trs, len(delays) * hidden_size)."""
        if vectors is None:
            vectors = self.all_window_features(story, batch_windows)
        training = self.training
        self.eval()
        try:
            return self.head(vectors.to(self.device), story, slice(0, story.n_trs))
        finally:
            self.train(training)

    def ridge_features(self, story: StoryInput, vectors: torch.Tensor) -> np.ndarray:
        """Window vectors -> the ridge protocol's features of every response TR (:func:`core.encoding.extract.to_trs`).

        Each story z-scored on its own, as :mod:`core.encoding.baseline` does, so a ridge on the
        epoch-0 vectors is the frozen baseline exactly; the running normalisation is the
        model's own readout's, not the ridge's.

        Returns float32 array of shape (n_trs, len(delays) * hidden_size).
        """
        return to_trs(vectors.float().cpu().numpy(), story.windows.times, story.tr_times, self.delays)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What training changes: trainable parameters and the normalisation statistics."""
        state = {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}
        state.update({name: b.detach().clone() for name, b in self.named_buffers() if name.startswith("norm.")})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        missing = sorted(set(self.trainable_state()) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks {', '.join(missing[:5])}")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)


def build_model(config, model_name: str, spec: WindowSpec, n_outputs: int, cotrained: dict[str, int],
                device: torch.device) -> tuple[BrainModel, list[nn.Parameter], bool]:
    """The backbone with its adapters (:func:`core.backbones.adapt`) inside a :class:`BrainModel` on ``device``.

    Parameters
    ----------
    config : TrainConfig
    n_outputs : voxels the run's own readout predicts; ``cotrained``: subject -> voxels of its readout.

    Returns
    -------
    the model, the backbone's trainable parameters, and whether the story-level CNN cache is used.
    """
    net = load_backbone(model_name, layerdrop=config.layerdrop, dropout=config.dropout)
    cnn_cache = resolve_cnn_cache(net, {"on": True, "off": False}.get(config.cnn_cache, config.cnn_cache))
    trainable = adapt(net, config.lora_layer_list(), config.lora_targets, config.lora_rank,
                      config.lora_alpha, config.lora_dropout)
    layers = config.readout_layers or [config.readout_layer]
    model = BrainModel(net, layers, spec, config.delays, config.bottleneck, n_outputs, cnn_cache,
                       config.norm_momentum, cotrained=cotrained).to(device)
    return model, trainable, cnn_cache


def make_optimizer(model: BrainModel, trainable: list[nn.Parameter], config) -> torch.optim.Optimizer:
    """AdamW over the model's groups: ``backbone`` (the adapters, at ``lr``) and ``readout`` (every readout and
    the layer weights, at ``readout_lr``)."""
    head = [p for readout in model.readouts() for p in readout.parameters()]
    head += [model.layer_logits] if model.layer_logits is not None else []
    groups = [{"params": head, "lr": config.readout_lr, "name": "readout"}]
    if trainable:
        groups.insert(0, {"params": trainable, "lr": config.lr, "name": "backbone"})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
