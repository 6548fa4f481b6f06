"""The response model: teacher features to voxel responses (``fir`` or ``hrf``) through per-subject readouts."""

from __future__ import annotations

import math

import numpy as np

from core.data import dataset as ds
from core.encoding.extract import to_trs
from core.encoding.features import zscore
from core.synthetic.sound import tr_times
from core.synthetic.spec import GROUPS, HRF_FIR, SynthSpec


def subject_readout(spec: SynthSpec, d: int, subject_index: int):
    """Per-subject truth: voxel groups, hemispheres, mixing weights, readout and noise.

    Returns a dict of arrays; ``w_low`` and ``w_high`` have shape (d, n_voxels) (the
    readout of one TR's features, before the response model spreads it over time), the
    rest (n_voxels,).
    """
    rng = np.random.default_rng([spec.seed, 100 + subject_index])
    n = spec.n_voxels
    left = np.arange(n) < n // 2
    group = np.full(n, GROUPS.index("high"))
    order = rng.permutation(n)
    n_ac, n_silent = int(spec.fraction_ac * n), int(spec.fraction_silent * n)
    group[order[:n_ac]] = GROUPS.index("AC")
    group[order[n_ac : n_ac + n_silent]] = GROUPS.index("silent")
    nan = np.zeros(n, bool)
    nan[order[n_ac + n_silent : n_ac + n_silent + max(1, int(spec.fraction_nan * n))]] = True
    # Hemispheres mix differently: left high voxels are mostly high-layer, right ones mix.
    mix_low = np.select([group == 0, group == 2, left], [1.0, 0.0, 0.15], default=0.6)
    mix_high = np.select([group == 0, group == 2, left], [0.0, 0.0, 1.0], default=0.7)

    def readout():
        proj = rng.standard_normal((d, spec.readout_rank)) / np.sqrt(d)
        mixing = rng.standard_normal((spec.readout_rank, n))
        return proj @ mixing

    return {
        "group": group, "left": left, "nan": nan,
        "w_low": readout() * mix_low, "w_high": readout() * mix_high,
        "noise_sd": rng.uniform(*spec.noise_sd, n),
    }


def canonical_hrf(tr: float = ds.TR, length: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``tr`` seconds from 0 to ``length``.

    ``h(t) = g(t; 6) - g(t; 16) / 6`` with ``g(t; a) = t^(a-1) e^(-t) / Gamma(a)`` (peak
    near 5 s, undershoot near 15 s), scaled to sum to 1.

    Returns
    -------
    float64 array of shape (ceil(length / tr),); entry ``k`` weighs the TR ``k`` TRs back.
    """
    t = np.arange(0.0, length, tr)
    h = t**5 * np.exp(-t) / math.gamma(6) - t**15 * np.exp(-t) / math.gamma(16) / 6
    return h / h.sum()


def tr_features(spec: SynthSpec, window_features: np.ndarray, window_times: np.ndarray, n_trs: int) -> np.ndarray:
    """Window features -> the TR features that the readout of ``spec.response_model`` reads.

    Parameters
    ----------
    window_features : array of shape (n_windows, d)
    window_times : array of shape (n_windows,), window end times on the audio clock
    n_trs : number of (trimmed) response rows

    Returns
    -------
    float64 array of shape (n_trs, len(DELAYS) * d) for ``fir``, (n_trs, d) for ``hrf``
    """
    if spec.response_model == "fir":
        return to_trs(window_features, window_times, tr_times(n_trs)).astype(np.float64)
    # Row times of the whole run, untrimmed: from the scanner's first TR, before the sound starts.
    grid = np.arange(ds.TRIM_START + n_trs) * ds.TR + ds.TR / 2 - ds.SOUND_START
    rows = np.searchsorted(grid, window_times, side="left")  # the row whose TR the window ends in
    inside = rows < len(grid)
    sums = np.zeros((len(grid), window_features.shape[1]))
    np.add.at(sums, rows[inside], zscore(np.asarray(window_features, dtype=np.float64))[inside])
    counts = np.bincount(rows[inside], minlength=len(grid))[:, None]
    averaged = sums / np.maximum(counts, 1)  # a TR without windows (before the sound) reads the story mean, 0
    convolved = np.zeros_like(averaged)
    for k, h in enumerate(canonical_hrf()):
        convolved[k:] += h * averaged[: len(averaged) - k]
    return convolved[ds.TRIM_START :]


def response_weights(spec: SynthSpec, w: np.ndarray) -> np.ndarray:
    """A readout ``w`` of shape (d, n_voxels) as weights on :func:`tr_features`' columns.

    ``fir``: the delays' blocks weighted by ``HRF_FIR``, shape (len(DELAYS) * d, n_voxels);
    ``hrf``: ``w`` itself (the HRF is already in the features).
    """
    return np.concatenate([h * w for h in HRF_FIR]) if spec.response_model == "fir" else w
