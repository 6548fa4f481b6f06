"""Window features of a WavLM checkpoint over a story, and frozen features cached on disk.

A story's windows (see :class:`core.encoding.features.WindowSpec`) are read from the audio padded
on the left with one window of silence, so window ``i`` covers padded samples
``[end_i, end_i + window_samples)``. Because every edge is on the CNN's frame grid, its CNN
frames are rows ``end_i / hop ... end_i / hop + frames_per_window - 1`` of the whole padded
story's CNN output: :func:`story_cnn` runs the CNN once per story and
:func:`window_vectors` slices it (exact for ``feat_extract_norm == "layer"``; see
:func:`core.backbones.cnn_slicing_is_exact`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import backbones
from core.cache import cache_root
from core.encoding.blocks import block_vectors
from core.encoding.features import (DELAYS, LanczosOperator, WindowSpec, cut_windows, delay_features, extended_tr_times,
                                   window_end_samples, zscore)
from core.errors import ConfigError
from core.outputs import atomic_write

CACHE_VERSION = 1


@dataclass(frozen=True)
class StoryWindows:
    """The windows over one story.

    Attributes
    ----------
    spec : WindowSpec
    n_samples : int, story length in samples (unpadded)
    ends : int64 array of shape (n_windows,), window end samples in story coordinates,
        which are also the window start samples in the padded audio.
    """

    spec: WindowSpec
    n_samples: int
    ends: np.ndarray

    @classmethod
    def for_audio(cls, n_samples: int, spec: WindowSpec) -> StoryWindows:
        return cls(spec, n_samples, window_end_samples(n_samples, spec))

    @property
    def times(self) -> np.ndarray:
        """Window end times in seconds, float64 of shape (n_windows,)."""
        return self.ends / self.spec.sample_rate

    def __len__(self) -> int:
        return len(self.ends)

    def pad(self, audio: np.ndarray) -> np.ndarray:
        """Audio of shape (n_samples,) with one window of silence prepended."""
        return np.concatenate([np.zeros(self.spec.window_samples, dtype=np.float32), audio.astype(np.float32)])


def story_cnn(model, padded: torch.Tensor, segment_frames: int = 1000) -> torch.Tensor:
    """The frozen CNN over a whole padded story, in segments to bound memory.

    Segments are cut on the frame grid and overlap by the receptive field's excess over
    the hop, so each output frame sees exactly the samples it would see in one pass.

    Parameters
    ----------
    padded : tensor of shape (n_padded_samples,)

    Returns
    -------
    tensor of shape (n_frames, conv_dim[-1])
    """
    config = model.config
    hop = backbones.frame_hop(config)
    total = backbones.conv_output_length(padded.shape[0], config)
    field = backbones.receptive_field(config)
    out = []
    with torch.no_grad():
        for first in range(0, total, segment_frames):
            n = min(segment_frames, total - first)
            seg = padded[first * hop : (first + n - 1) * hop + field]
            out.append(backbones.cnn_features(model, seg[None])[0])
    return torch.cat(out)


def window_vectors(
    model,
    padded: torch.Tensor,
    windows: StoryWindows,
    ids: np.ndarray,
    layers: list[int],
    cnn: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """One vector per window: the mean of the chunk's frames at each requested layer.

    Each window through the network on its own (``extraction: windows``), or runs of
    windows in one pass (``blocks``: :func:`core.encoding.blocks.block_vectors`).

    Parameters
    ----------
    padded : tensor of shape (n_padded_samples,), the story from :meth:`StoryWindows.pad`.
    ids : int array of shape (n,), which windows to compute.
    layers : transformer layers to return (1-based; 0 = the encoder's input).
    cnn : tensor of shape (n_frames, conv_dim[-1]) from :func:`story_cnn`, or None to run
        the CNN on each window's audio.

    Returns
    -------
    dict layer -> tensor of shape (n, hidden_size)
    """
    config = model.config
    spec = windows.spec
    if spec.extraction == "blocks":
        return block_vectors(model, padded, windows, ids, layers, cnn)
    starts = windows.ends[ids]
    if cnn is not None:
        frames = backbones.conv_output_length(spec.window_samples, config)
        feats = cut_windows(cnn, starts // backbones.frame_hop(config), frames, 1)
    else:
        audio = cut_windows(padded, starts, spec.window_samples, spec.frame_samples)
        with torch.no_grad():
            feats = backbones.cnn_features(model, audio)
    states = backbones.encode(model, feats, max(layers))
    return {k: states[k][:, -spec.chunk_frames :].mean(dim=1) for k in layers}


def resolve_cnn_cache(model, cnn_cache: bool | str) -> bool:
    """``"auto"`` -> use the story-level CNN when slicing it is exact (never for Whisper, which refuses it)."""
    if cnn_cache == "auto":
        return backbones.cnn_slicing_is_exact(model.config)
    if cnn_cache and backbones.is_whisper(model.config):
        raise ConfigError("cnn_cache: Whisper's front end cannot be cut from the story's (its log-mel is normalised "
                          "by each input's maximum); use cnn_cache: auto or off")
    return bool(cnn_cache)


def all_window_features(
    model,
    audio: np.ndarray,
    spec: WindowSpec,
    layers: list[int],
    *,
    batch_windows: int = 32,
    cnn_cache: bool | str = "auto",
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Frozen window features of a whole story.

    Returns
    -------
    times : float64 array of shape (n_windows,)
    features : dict layer -> float32 array of shape (n_windows, hidden_size)
    """
    windows = StoryWindows.for_audio(len(audio), spec)
    padded = torch.from_numpy(windows.pad(audio)).to(device)
    cnn = story_cnn(model, padded) if resolve_cnn_cache(model, cnn_cache) else None
    out = {k: [] for k in layers}
    with torch.no_grad():
        for first in range(0, len(windows), batch_windows):
            ids = np.arange(first, min(first + batch_windows, len(windows)))
            for k, v in window_vectors(model, padded, windows, ids, layers, cnn).items():
                out[k].append(v.float().cpu().numpy())
    return windows.times, {k: np.concatenate(v) for k, v in out.items()}


def to_trs(window_features: np.ndarray, window_times: np.ndarray, tr_times: np.ndarray, delays=DELAYS) -> np.ndarray:
    """Window features -> delayed, z-scored features at the response TRs.

    Lanczos-interpolates to ``tr_times`` extended by ``max(delays)`` earlier TRs,
    z-scores each feature with the mean and standard deviation of the story's own rows
    (the ``n_trs`` response TRs, as the reference tooling does, not the history rows
    before them), applies that to every row, then stacks the delays.

    Parameters
    ----------
    window_features : array of shape (n_windows, n_features)
    window_times : array of shape (n_windows,)
    tr_times : array of shape (n_trs,)

    Returns
    -------
    float32 array of shape (n_trs, len(delays) * n_features)
    """
    history = max(delays)
    op = LanczosOperator(window_times, extended_tr_times(tr_times, history))
    trs = op(torch.from_numpy(np.asarray(window_features, dtype=np.float32))).double().numpy()
    return delay_features(zscore(trs, rows=slice(history, None)), delays).astype(np.float32)


def model_fingerprint(model) -> str:
    """SHA-256 of a model's config and every weight: what makes its features what they are."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "features"


class FrozenFeatures:
    """Frozen WavLM window features for a dataset's stories, cached on disk.

    The cache key holds everything that changes the result: the model's config and
    weights (hashed), the window settings, the story's audio file (hashed) and the layer.
    Files are written atomically, so an interrupted run never leaves a bad entry.

    Parameters
    ----------
    model : str
        WavLM checkpoint (folder or hub id).
    spec : WindowSpec
    cache_dir : folder for cached features (default ``$BRAINSWEEP_CACHE/features`` or
        ``~/.cache/brainsweep/features``).
    cache : False computes everything afresh and writes nothing.
    """

    def __init__(self, model: str, spec: WindowSpec = WindowSpec(), *, cache_dir=None, cache: bool = True,
                 device: str = "cpu", batch_windows: int = 32, cnn_cache: bool | str = "auto"):
        self.model_name = model
        self.spec = spec
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache = cache
        self.device = device
        self.batch_windows = batch_windows
        self.cnn_cache = cnn_cache
        self._model = None
        self._fingerprint = None
        self._audio_fp: dict[Path, str] = {}

    @property
    def model(self):
        if self._model is None:
            self._model = backbones.load_backbone(self.model_name).to(self.device)
        return self._model

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def _path(self, audio_path: Path, layer: int) -> Path:
        if audio_path not in self._audio_fp:
            self._audio_fp[audio_path] = file_fingerprint(audio_path)
        key = json.dumps(
            {"v": CACHE_VERSION, "model": self.fingerprint, "spec": self.spec.as_dict(),
             "audio": self._audio_fp[audio_path], "cnn_cache": resolve_cnn_cache(self.model, self.cnn_cache)},
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.cache_dir / digest / f"layer{layer:02d}.npz"

    def window_features(self, dataset, story: str, layers: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Window times (n_windows,) and features {layer: (n_windows, hidden_size)} of a story."""
        audio_path = Path(dataset.root) / "stimuli" / f"{story}.wav"
        paths = {k: self._path(audio_path, k) for k in layers}
        found = {k: np.load(p) for k, p in paths.items() if self.cache and p.exists()}
        missing = [k for k in layers if k not in found]
        if missing:
            times, feats = all_window_features(
                self.model, dataset.audio(story), self.spec, missing,
                batch_windows=self.batch_windows, cnn_cache=self.cnn_cache, device=self.device,
            )
            for k in missing:
                found[k] = {"times": times, "features": feats[k]}
                if self.cache:
                    _save_atomic(paths[k], times=times, features=feats[k])
        times = found[layers[0]]["times"]
        return np.asarray(times), {k: np.asarray(found[k]["features"]) for k in layers}

    def tr_features(self, dataset, subject: str, story: str, layer: int, delays=DELAYS) -> np.ndarray:
        """Delayed z-scored features at the subject's response TRs, (n_trs, len(delays) * hidden_size)."""
        times, feats = self.window_features(dataset, story, [layer])
        return to_trs(feats[layer], times, dataset.tr_times(subject, story), delays)


def _save_atomic(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
