"""From audio to TR-aligned features: causal windows, Lanczos interpolation, FIR delays.

The pipeline (BRIEF section 2) is

    audio -> causal windows (context + chunk, every ``stride`` s) -> one vector per window
          -> Lanczos interpolation from window end times to TR times
          -> per-feature normalisation -> FIR delays (1..4 TRs) -> readout

Window edges are snapped to the CNN's frame grid (``frame_samples`` = 320 samples at
16 kHz) so that the frozen CNN can run once per story and each window reads a slice of
its output (see :mod:`core.backbones`). Each window is stamped with its actual (snapped) end
time, so the interpolation stays exact.

Everything here is plain numpy / torch; the Lanczos operator is a banded gather, so it
is differentiable and costs O(n_trs * band) instead of a dense (n_trs, n_windows) matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.config import EXTRACTIONS
from core.errors import ConfigError

DELAYS = (1, 2, 3, 4)


@dataclass(frozen=True)
class WindowSpec:
    """Causal sliding windows over a story's audio.

    Parameters
    ----------
    context : float
        Seconds of audio before the chunk (3.75 s in BrainWavLM).
    chunk : float
        Seconds of new audio each window adds; its frames are pooled into the window's
        vector (0.25 s).
    stride : float
        Seconds between consecutive window ends (0.25 s).
    sample_rate : int
        Audio sample rate (WavLM expects 16 kHz).
    frame_samples : int
        The CNN's hop in samples (320 for every WavLM checkpoint); window edges are
        snapped to multiples of it.
    extraction : str
        How window vectors are computed: ``windows`` (the paper's: each window through the
        network on its own) or ``blocks`` (runs of consecutive windows in one pass, each
        chunk attending to its own window's frames only: :mod:`core.encoding.blocks`).
    block_seconds : float
        In ``blocks`` extraction, seconds of window ends per pass (1 s: 4 windows at the
        paper's 0.25-s stride); each pass also reads one window of audio before them.
    """

    context: float = 3.75
    chunk: float = 0.25
    stride: float = 0.25
    sample_rate: int = 16000
    frame_samples: int = 320
    extraction: str = "windows"
    block_seconds: float = 1.0

    def __post_init__(self):
        for name in ("context", "chunk", "stride", "block_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"window {name} must be > 0 seconds, got {getattr(self, name)}")
        if self.extraction not in EXTRACTIONS:
            raise ConfigError(f"extraction {self.extraction!r} is not known: use {' or '.join(EXTRACTIONS)}")

    @property
    def window_samples(self) -> int:
        """Window length in samples, a whole number of CNN frames."""
        return self.frame_samples * round((self.context + self.chunk) * self.sample_rate / self.frame_samples)

    @property
    def chunk_frames(self) -> int:
        """How many of a window's last frames are pooled into its vector."""
        return max(1, round(self.chunk * self.sample_rate / self.frame_samples))

    #: The fields a run's settings (:class:`core.config.TrainConfig`) choose.
    SETTINGS = ("context", "chunk", "stride", "extraction", "block_seconds")

    @classmethod
    def of(cls, settings) -> WindowSpec:
        """The spec of a run's settings: any object with the attributes :attr:`SETTINGS`."""
        return cls(**{name: getattr(settings, name) for name in cls.SETTINGS})

    @property
    def block_windows(self) -> int:
        """Windows per pass in ``blocks`` extraction (at least 1)."""
        return max(1, round(self.block_seconds / self.stride))

    def as_dict(self) -> dict:
        """The settings; the block ones only in ``blocks`` extraction, so a windows spec keeps its old cache keys."""
        out = asdict(self)
        if self.extraction == "windows":
            del out["extraction"], out["block_seconds"]
        return out


def window_end_samples(n_samples: int, spec: WindowSpec) -> np.ndarray:
    """End sample (exclusive) of every window over a story, snapped to the frame grid.

    Windows end every ``spec.stride`` seconds from ``stride`` up to the end of the audio.
    A window that starts before the audio reads silence there (the story is padded
    with zeros on the left).

    Returns
    -------
    ends : int64 array of shape (n_windows,), strictly increasing multiples of
        ``spec.frame_samples``.
    """
    stride = spec.stride * spec.sample_rate
    n_windows = int(math.floor(n_samples / stride + 1e-9))
    ends = np.round(np.arange(1, n_windows + 1) * stride / spec.frame_samples).astype(np.int64)
    ends = np.unique(ends[ends > 0]) * spec.frame_samples
    return ends[ends <= n_samples]


def cut_windows(sequence: torch.Tensor, starts: np.ndarray, length: int, hop: int) -> torch.Tensor:
    """Rows ``starts[i] : starts[i] + length`` of ``sequence``, for starts on a grid of ``hop``.

    The windows are picked from an ``unfold`` view of ``sequence`` on its own device, so the
    only index is one integer per window (an index per sample would be ~74 MB of int64 per
    step at base-plus' 10-TR blocks, built on the CPU and copied to the GPU).

    Parameters
    ----------
    sequence : tensor of shape (n, ...), e.g. padded audio (n_samples,) or CNN frames (n_frames, channels).
    starts : int array of shape (n_windows,), multiples of ``hop``.

    Returns
    -------
    tensor of shape (n_windows, length, ...)
    """
    view = sequence.unfold(0, length, hop)  # (n_positions, ..., length), a view
    return view[torch.from_numpy(starts // hop).to(sequence.device)].movedim(-1, 1)


def window_end_times(n_samples: int, spec: WindowSpec) -> np.ndarray:
    """Window end times in seconds, float64 of shape (n_windows,)."""
    return window_end_samples(n_samples, spec) / spec.sample_rate


def lanczos_kernel(t: np.ndarray, cutoff: float, lobes: int = 3) -> np.ndarray:
    """Lanczos kernel ``lobes * sin(pi x) sin(pi x / lobes) / (pi x)^2`` at ``x = t * cutoff``.

    Matches the Huth lab's ``lanczosfun``: 1 at 0, 0 beyond ``lobes`` cycles.
    """
    x = np.asarray(t, dtype=np.float64) * cutoff
    with np.errstate(divide="ignore", invalid="ignore"):
        val = lobes * np.sin(np.pi * x) * np.sin(np.pi * x / lobes) / (np.pi**2 * x**2)
    val[x == 0] = 1.0
    val[np.abs(x) > lobes] = 0.0
    return val


class LanczosOperator(torch.nn.Module):
    """Banded Lanczos interpolation from window times to TR times.

    ``op(x)`` equals ``L @ x`` for the Huth lab's dense matrix
    ``L[i, j] = lanczos_kernel(tr_times[i] - window_times[j], 1 / TR)``, computed as a
    gather over each row's non-zero band.

    Parameters
    ----------
    window_times : array of shape (n_windows,), seconds, increasing.
    tr_times : array of shape (n_trs,), seconds, evenly spaced.
    lobes : int
        Lanczos window (3 lobes in the reference).
    cutoff_mult : float
        Cutoff frequency as a multiple of ``1 / TR``, as in ``lanczosinterp2D``.

    Attributes
    ----------
    index : int64 tensor of shape (n_trs, band), window indices (padded with 0).
    weight : float32 tensor of shape (n_trs, band), kernel values (0 where padded).
    """

    def __init__(self, window_times, tr_times, lobes: int = 3, cutoff_mult: float = 1.0):
        super().__init__()
        window_times = np.asarray(window_times, dtype=np.float64)
        tr_times = np.asarray(tr_times, dtype=np.float64)
        if len(tr_times) < 2:
            raise ConfigError("Lanczos interpolation needs at least 2 TR times")
        cutoff = cutoff_mult / np.mean(np.diff(tr_times))
        half_width = lobes / cutoff
        lo = np.searchsorted(window_times, tr_times - half_width, side="left")
        hi = np.searchsorted(window_times, tr_times + half_width, side="right")
        band = max(int((hi - lo).max()), 1)
        index = lo[:, None] + np.arange(band)[None, :]
        valid = index < hi[:, None]
        index = np.where(valid, index, 0)
        weight = np.where(valid, lanczos_kernel(tr_times[:, None] - window_times[index], cutoff, lobes), 0.0)
        self.n_windows = len(window_times)
        self.register_buffer("index", torch.from_numpy(index.astype(np.int64)), persistent=False)
        self.register_buffer("weight", torch.from_numpy(weight.astype(np.float32)), persistent=False)

    def windows_for(self, rows: slice | np.ndarray) -> np.ndarray:
        """Sorted indices of the windows that TR rows ``rows`` read (non-zero weight)."""
        w = self.weight[rows]
        return np.unique(self.index[rows][w != 0].numpy())

    def forward(self, x: torch.Tensor, rows: slice | None = None, window_ids: np.ndarray | None = None) -> torch.Tensor:
        """Interpolate window features to TRs.

        Parameters
        ----------
        x : tensor of shape (n_windows, n_features), or (len(window_ids), n_features)
            when only the windows ``window_ids`` (sorted, from :meth:`windows_for`) were
            computed.
        rows : slice of TR rows to produce (default all).

        Returns
        -------
        tensor of shape (n_rows, n_features)
        """
        rows = slice(None) if rows is None else rows
        index, weight = self.index[rows], self.weight[rows]
        if window_ids is not None:
            # Map global window indices to positions in the computed subset; weights
            # of windows outside the subset are zero by construction.
            pos = np.searchsorted(window_ids, index.numpy()).clip(max=len(window_ids) - 1)
            index = torch.from_numpy(pos).to(x.device)
        else:
            index = index.to(x.device)
        gathered = x[index.reshape(-1)].reshape(*index.shape, x.shape[-1])
        return torch.einsum("tb,tbf->tf", weight.to(device=x.device, dtype=x.dtype), gathered)


def delay_features(x: torch.Tensor | np.ndarray, delays=DELAYS):
    """FIR delays: stack the features of ``d`` TRs earlier for each delay ``d``.

    The input carries ``max(delays)`` extra rows *before* the first output row (features
    at the TRs before the first response row), so the first rows read real history
    rather than the zeros that ``make_delayed`` fills in after trimming.

    Parameters
    ----------
    x : array or tensor of shape (n_trs + max(delays), n_features)
    delays : sequence of non-negative ints

    Returns
    -------
    same type, shape (n_trs, len(delays) * n_features); block ``k`` holds delay ``delays[k]``.
    """
    m = max(delays)
    n = x.shape[0] - m
    if n <= 0:
        raise ConfigError(f"delay_features needs more than {m} rows, got {x.shape[0]}")
    blocks = [x[m - d : m - d + n] for d in delays]
    return torch.cat(blocks, dim=1) if isinstance(x, torch.Tensor) else np.concatenate(blocks, axis=1)


def zscore(x: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """Z-score each column with the mean and standard deviation of ``x[rows]``.

    Parameters
    ----------
    x : array of shape (n_rows, n_features)
    rows : slice
        The rows whose statistics are used (all by default); every row is scaled.

    Returns
    -------
    float64 array of shape (n_rows, n_features); constant columns become 0 (not NaN).
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x[rows].mean(axis=0, keepdims=True)
    std = x[rows].std(axis=0, keepdims=True)
    return np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0)


def extended_tr_times(tr_times: np.ndarray, n_before: int) -> np.ndarray:
    """TR times with ``n_before`` earlier TRs prepended (same spacing), shape (n + n_before,)."""
    tr = float(np.mean(np.diff(tr_times)))
    return np.concatenate([tr_times[0] - tr * np.arange(n_before, 0, -1), tr_times])
