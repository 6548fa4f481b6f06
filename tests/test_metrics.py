"""Metrics: correlations against scipy, NaN handling, ROI summaries, noise ceiling vs known truth."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from core.encoding.metrics import (
    ceiling_fraction,
    explainable_variance,
    mean_ceiling_fraction,
    mean_r,
    noise_ceiling,
    pearson_r,
    roi_summary,
    spatial_r,
)


def _pred_actual(n_trs=200, n_voxels=30, seed=0):
    rng = np.random.default_rng(seed)
    actual = rng.standard_normal((n_trs, n_voxels)) * rng.uniform(0.1, 10, n_voxels) + 3.0
    pred = 0.5 * actual + rng.standard_normal((n_trs, n_voxels)) * 2.0
    return pred, actual


def test_pearson_r_matches_scipy():
    pred, actual = _pred_actual()
    expected = [pearsonr(pred[:, v], actual[:, v])[0] for v in range(pred.shape[1])]
    np.testing.assert_allclose(pearson_r(pred, actual), expected, rtol=1e-10, atol=1e-12)


def test_pearson_r_is_nan_for_nan_or_constant_columns():
    pred, actual = _pred_actual(n_voxels=6)
    actual[:, 1] = np.nan
    actual[5, 2] = np.nan
    pred[9, 3] = np.inf
    actual[:, 4] = 0.1  # constant up to rounding after centring
    pred[:, 5] = -2.0
    r = pearson_r(pred, actual)
    assert np.isfinite(r[0])
    assert np.isnan(r[1:]).all()


def test_pearson_r_accepts_float32_and_rejects_mismatched_shapes():
    pred, actual = _pred_actual()
    np.testing.assert_allclose(pearson_r(pred.astype(np.float32), actual), pearson_r(pred, actual), atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        pearson_r(pred, actual[:, :-1])


def test_spatial_r_matches_scipy_and_skips_nan_voxels():
    pred, actual = _pred_actual(n_trs=12)
    actual[:, [2, 7]] = np.nan
    actual[4, 11] = np.nan  # a voxel with any NaN is left out at every TR
    keep = np.setdiff1d(np.arange(actual.shape[1]), [2, 7, 11])
    expected = [pearsonr(pred[t, keep], actual[t, keep])[0] for t in range(actual.shape[0])]
    np.testing.assert_allclose(spatial_r(pred, actual), expected, rtol=1e-10)


def test_spatial_r_is_nan_for_a_flat_tr():
    pred, actual = _pred_actual(n_trs=5)
    pred[2] = 1.0
    r = spatial_r(pred, actual)
    assert np.isnan(r[2]) and np.isfinite(np.delete(r, 2)).all()


def test_mean_r_and_roi_summary():
    r = np.array([0.1, 0.3, np.nan, 0.5, -0.1, np.nan])
    assert mean_r(r) == pytest.approx(0.2)
    assert np.isnan(mean_r([np.nan, np.nan]))
    masks = {
        "AC": np.array([True, True, True, False, False, False]),
        "left": np.array([False, False, False, True, True, False]),
        "empty": np.array([False, False, True, False, False, True]),
    }
    summary = roi_summary(r, masks)
    assert list(summary) == ["AC", "left", "empty"]
    assert summary["AC"] == pytest.approx(0.2)
    assert summary["left"] == pytest.approx(0.2)
    assert np.isnan(summary["empty"])
    with pytest.raises(ValueError, match="'bad'"):
        roi_summary(r, {"bad": np.array([1, 0, 0, 0, 0, 0])})


def _repeats_with_known_ceiling(seed):
    """Repeats = shared signal + noise of known variance; returns analytic ceilings too."""
    rng = np.random.default_rng(seed)
    n_repeats, n_trs = 10, 2000
    noise_sd = np.repeat([0.5, 1.0, 2.0], 5)
    signal = rng.standard_normal((n_trs, noise_sd.size))
    repeats = signal[None] + rng.standard_normal((n_repeats, n_trs, noise_sd.size)) * noise_sd
    signal_var = signal.var(axis=0, ddof=1)
    analytic = {
        "single": np.sqrt(signal_var / (signal_var + noise_sd**2)),
        "mean": np.sqrt(signal_var / (signal_var + noise_sd**2 / n_repeats)),
    }
    return signal, repeats, analytic


def test_noise_ceiling_matches_simulation_with_known_truth():
    signal, repeats, analytic = _repeats_with_known_ceiling(seed=0)
    for against in ("mean", "single"):
        np.testing.assert_allclose(noise_ceiling(repeats, against=against), analytic[against], atol=0.02)
    # ... and the correlation a perfect (noiseless) model actually reaches.
    r_mean = pearson_r(signal, repeats.mean(axis=0))
    r_single = np.mean([pearson_r(signal, repeat) for repeat in repeats], axis=0)
    np.testing.assert_allclose(noise_ceiling(repeats, against="mean"), r_mean, atol=0.02)
    np.testing.assert_allclose(noise_ceiling(repeats, against="single"), r_single, atol=0.02)
    np.testing.assert_allclose(explainable_variance(repeats), analytic["single"] ** 2, atol=0.03)


def test_noise_ceiling_pure_noise_nan_and_constant_voxels():
    rng = np.random.default_rng(1)
    repeats = rng.standard_normal((6, 500, 40))  # no shared signal at all
    repeats[2, 10, 0] = np.nan
    repeats[:, :, 1] = 4.0
    for against in ("mean", "single"):
        ceiling = noise_ceiling(repeats, against=against)
        assert np.isnan(ceiling[:2]).all()
        assert (ceiling[2:] >= 0).all() and (ceiling[2:] < 0.5).all()
    ev = explainable_variance(repeats)
    assert np.isnan(ev[:2]).all() and (ev[2:] <= 1).all()
    assert (ev[2:] < 0).any()  # negative estimates are reported, the ceiling clips them
    assert (noise_ceiling(repeats)[2:][ev[2:] < 0] == 0).all()
    with pytest.raises(ValueError, match="against"):
        noise_ceiling(repeats, against="median")
    with pytest.raises(ValueError, match="at least 2 repeats"):
        noise_ceiling(repeats[:1])


def test_ceiling_fraction_and_its_summary():
    r = np.array([0.2, 0.4, 0.3, np.nan, 0.1])
    ceiling = np.array([0.4, 0.8, 0.04, 0.5, np.nan])
    np.testing.assert_allclose(ceiling_fraction(r, ceiling), [0.5, 0.5, np.nan, np.nan, np.nan])
    # mean(r) / mean(ceiling) over voxels where both are finite: (0.2+0.4+0.3)/(0.4+0.8+0.04)
    assert mean_ceiling_fraction(r, ceiling) == pytest.approx(0.9 / 1.24)
    mask = np.array([True, False, False, True, True])
    assert mean_ceiling_fraction(r, ceiling, mask=mask) == pytest.approx(0.5)
    assert np.isnan(mean_ceiling_fraction(r, ceiling, mask=np.zeros(5, bool)))


def test_metrics_in_small_blocks_equal_one_block(monkeypatch):
    import core.encoding.metrics

    pred, actual = _pred_actual(n_trs=50, n_voxels=40, seed=3)
    actual[:, 7] = np.nan
    rng = np.random.default_rng(4)
    repeats = actual[None] + rng.standard_normal((3, 50, 40))
    whole = (pearson_r(pred, actual), spatial_r(pred, actual), noise_ceiling(repeats))
    monkeypatch.setattr(core.encoding.metrics, "BLOCK_ELEMENTS", 120)  # blocks of 2 voxels or 2 TRs
    blocked = (pearson_r(pred, actual), spatial_r(pred, actual), noise_ceiling(repeats))
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert np.isnan(blocked[0][7]) and np.isfinite(blocked[1]).all()
