"""core.encoding.features against a float64 numpy reference of the Huth lab's definitions.

The reference functions below are written from the definitions of ``lanczosinterp2D``
and ``make_delayed`` (HuthLab/deep-fMRI-dataset): a dense Lanczos matrix and
zero-filled row shifts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from core.encoding.features import (
    DELAYS,
    LanczosOperator,
    WindowSpec,
    delay_features,
    extended_tr_times,
    lanczos_kernel,
    window_end_samples,
    window_end_times,
    zscore,
)

TR = 2.0045
SAMPLE_RATE = 16000


# ---- reference (float64 numpy) --------------------------------------------------------


def ref_lanczosfun(cutoff: float, t: np.ndarray, window: int = 3) -> np.ndarray:
    x = np.asarray(t, dtype=np.float64) * cutoff
    out = np.empty_like(x)
    zero = x == 0
    xs = x[~zero]
    out[~zero] = window * np.sin(np.pi * xs) * np.sin(np.pi * xs / window) / (np.pi**2 * xs**2)
    out[zero] = 1.0
    out[np.abs(x) > window] = 0.0
    return out


def ref_lanczos_matrix(oldtime, newtime, window: int = 3, cutoff_mult: float = 1.0) -> np.ndarray:
    """Dense (len(newtime), len(oldtime)) interpolation matrix of ``lanczosinterp2D``."""
    cutoff = cutoff_mult / np.mean(np.diff(newtime))
    return ref_lanczosfun(cutoff, np.subtract.outer(newtime, oldtime), window)


def ref_lanczosinterp2D(data, oldtime, newtime, window: int = 3, cutoff_mult: float = 1.0) -> np.ndarray:
    return ref_lanczos_matrix(oldtime, newtime, window, cutoff_mult) @ np.asarray(data, dtype=np.float64)


def ref_make_delayed(stim: np.ndarray, delays) -> np.ndarray:
    n, _ = stim.shape
    blocks = []
    for d in delays:
        shifted = np.zeros_like(stim)
        shifted[d:] = stim[: n - d]
        blocks.append(shifted)
    return np.concatenate(blocks, axis=1)


def tr_times(n_trs: int) -> np.ndarray:
    """Response-row times on the audio clock, as ds003020 has them (trim 10, sound start 10 s)."""
    return (np.arange(n_trs) + 10) * TR + TR / 2 - 10


def rel_err(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def story():
    """Snapped window times of a ~10 min story, TR times, and random window features."""
    n_trs = 290
    n_samples = int((tr_times(n_trs)[-1] + 5.0) * SAMPLE_RATE)
    window_times = window_end_times(n_samples, WindowSpec())
    x = np.random.default_rng(0).standard_normal((len(window_times), 6)).astype(np.float32)
    return window_times, tr_times(n_trs), x


# ---- Lanczos --------------------------------------------------------------------------


def test_window_times_are_irregular(story):
    window_times, _, _ = story
    spacing = np.round(np.diff(window_times) * SAMPLE_RATE).astype(int)
    assert set(spacing) == {3840, 4160}  # 12 or 13 frames of 320 samples: the snap is real


def test_lanczos_kernel_matches_reference():
    t = np.linspace(-8, 8, 1601)
    t[800] = 0.0
    np.testing.assert_allclose(lanczos_kernel(t, 1 / TR), ref_lanczosfun(1 / TR, t), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("extend", [0, max(DELAYS)])
def test_lanczos_operator_matches_dense_reference(story, extend):
    window_times, trs, x = story
    trs = extended_tr_times(trs, extend)
    expected = ref_lanczosinterp2D(x, window_times, trs)
    actual = LanczosOperator(window_times, trs)(torch.from_numpy(x)).numpy()
    assert actual.shape == expected.shape
    assert rel_err(actual, expected) < 1e-5


@pytest.mark.parametrize("lobes, cutoff_mult", [(2, 1.0), (3, 0.8)])
def test_lanczos_operator_window_and_cutoff(story, lobes, cutoff_mult):
    window_times, trs, x = story
    expected = ref_lanczosinterp2D(x, window_times, trs, window=lobes, cutoff_mult=cutoff_mult)
    actual = LanczosOperator(window_times, trs, lobes=lobes, cutoff_mult=cutoff_mult)(torch.from_numpy(x))
    assert rel_err(actual.numpy(), expected) < 1e-5


def test_lanczos_rows_from_a_subset_of_windows(story):
    """A block of TRs computed from only the windows it reads equals the full result."""
    window_times, trs, x = story
    op = LanczosOperator(window_times, trs)
    full = op(torch.from_numpy(x)).numpy()
    n = len(trs)
    for start in (0, 10, 137, n - 10, n - 3):
        rows = slice(start, min(start + 10, n))
        ids = op.windows_for(rows)
        assert np.all(np.diff(ids) > 0)
        assert len(ids) < len(window_times) // 4  # the block reads a small part of the story
        block = op(torch.from_numpy(x[ids]), rows=rows, window_ids=ids).numpy()
        np.testing.assert_allclose(block, full[rows], rtol=0, atol=1e-6 * np.abs(full).max())


def test_windows_for_covers_every_nonzero_weight(story):
    window_times, trs, _ = story
    dense = ref_lanczos_matrix(window_times, trs)
    op = LanczosOperator(window_times, trs)
    rows = slice(40, 50)
    expected = np.flatnonzero(np.abs(dense[rows]).max(axis=0) > 0)
    np.testing.assert_array_equal(op.windows_for(rows), expected)


def test_lanczos_operator_is_differentiable(story):
    window_times, trs, x = story
    op = LanczosOperator(window_times, trs)
    x_t = torch.from_numpy(x).requires_grad_(True)
    grad_out = np.random.default_rng(1).standard_normal((len(trs), x.shape[1]))
    op(x_t).backward(torch.from_numpy(grad_out.astype(np.float32)))
    expected = ref_lanczos_matrix(window_times, trs).T @ grad_out
    assert rel_err(x_t.grad.numpy(), expected) < 1e-5


def test_lanczos_operator_memory_is_banded(story):
    window_times, trs, _ = story
    op = LanczosOperator(window_times, trs)
    band = op.index.shape[1]
    assert op.index.shape == op.weight.shape == (len(trs), band)
    # 2 * 3 lobes * TR seconds of windows at least 0.24 s apart, plus the edges.
    assert band <= int(2 * 3 * TR / 0.24) + 2
    assert band * 20 < len(window_times)


def test_lanczos_operator_needs_two_trs():
    with pytest.raises(ConfigError):
        LanczosOperator(np.arange(10.0), np.array([3.0]))


# ---- delays ---------------------------------------------------------------------------


@pytest.mark.parametrize("delays", [DELAYS, (0, 2, 5)])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_delay_features_match_make_delayed(delays, backend):
    m = max(delays)
    full = np.random.default_rng(2).standard_normal((30 + m, 5))
    expected = ref_make_delayed(full, delays)[m:]
    x = torch.from_numpy(full) if backend == "torch" else full
    actual = delay_features(x, delays)
    assert isinstance(actual, type(x))
    assert actual.shape == (30, len(delays) * 5)
    np.testing.assert_array_equal(np.asarray(actual), expected)


def test_delay_features_needs_history_rows():
    with pytest.raises(ConfigError):
        delay_features(np.zeros((4, 3)), DELAYS)


def test_extended_tr_times_prepends_earlier_trs():
    trs = tr_times(20)
    ext = extended_tr_times(trs, 4)
    assert ext.shape == (24,)
    np.testing.assert_allclose(ext[4:], trs)
    np.testing.assert_allclose(np.diff(ext), TR, rtol=1e-12)


# ---- windows --------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [0.25, 0.1, 0.5, 1 / 3])
@pytest.mark.parametrize("n_samples", [319, 4000, 160_000, 16000 * 61 + 123])
def test_window_end_samples(stride, n_samples):
    spec = WindowSpec(stride=stride)
    ends = window_end_samples(n_samples, spec)
    assert ends.dtype == np.int64
    assert np.all(ends % 320 == 0)
    assert np.all(np.diff(ends) > 0)
    if len(ends):
        assert ends[0] >= 1 and ends[-1] <= n_samples
        assert n_samples - ends[-1] <= stride * SAMPLE_RATE + 320  # the story's end is covered
    assert np.all(np.abs(np.diff(ends) - stride * SAMPLE_RATE) <= 320)
    np.testing.assert_array_equal(window_end_times(n_samples, spec), ends / SAMPLE_RATE)


def test_window_spec_defaults():
    spec = WindowSpec()
    assert spec.window_samples == 64000
    assert spec.chunk_frames == 12


@pytest.mark.parametrize("field", ["context", "chunk", "stride"])
def test_window_spec_rejects_non_positive(field):
    with pytest.raises(ConfigError, match=field):
        WindowSpec(**{field: 0})


# ---- normalisation --------------------------------------------------------------------


def test_zscore_constant_column_is_zero():
    x = np.random.default_rng(3).standard_normal((50, 3))
    x[:, 1] = 7.0
    z = zscore(x)
    assert np.all(np.isfinite(z))
    np.testing.assert_array_equal(z[:, 1], 0.0)
    np.testing.assert_allclose(z[:, [0, 2]].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 2]].std(axis=0), 1.0, rtol=1e-12)


def test_zscore_uses_the_statistics_of_the_given_rows():
    x = np.random.default_rng(4).standard_normal((40, 3)) * [1.0, 2.0, 3.0] + [0.0, 5.0, -1.0]
    z = zscore(x, rows=slice(4, None))
    own = x[4:]
    np.testing.assert_allclose(z, (x - own.mean(axis=0)) / own.std(axis=0), rtol=1e-12)


# ---- the ridge protocol's features ----------------------------------------------------


@pytest.mark.parametrize("n_trs", [30, 150])
def test_to_trs_matches_the_reference_pipeline(story, n_trs):
    """Dense Lanczos onto the response TRs and max(delays) earlier ones, z-scored with the
    statistics of the story's own rows (as ``apply_zscore_and_hrf`` z-scores the trimmed
    story), then delayed: the history rows only feed the delays."""
    from core.encoding.extract import to_trs

    window_times, trs, x = story
    trs = trs[:n_trs]
    delays = (0, *DELAYS)
    m = max(delays)
    interpolated = ref_lanczosinterp2D(x, window_times, extended_tr_times(trs, m))
    own = interpolated[m:]
    expected = ref_make_delayed((interpolated - own.mean(axis=0)) / own.std(axis=0), delays)[m:]
    actual = to_trs(x, window_times, trs, delays)
    assert actual.dtype == np.float32 and actual.shape == (n_trs, len(delays) * x.shape[1])
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5)
    # The delay-0 block is the story's own rows: exactly mean 0 and unit variance.
    np.testing.assert_allclose(actual[:, : x.shape[1]].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(actual[:, : x.shape[1]].std(axis=0), 1.0, rtol=1e-5)
