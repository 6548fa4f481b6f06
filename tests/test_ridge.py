"""Ridge with per-voxel alphas: checked against scikit-learn, himalaya and simulations with known truth."""

import warnings

import numpy as np
import pytest
from himalaya.backend import set_backend
from himalaya.ridge import solve_ridge_cv_svd
from himalaya.scoring import r2_score
from sklearn.linear_model import Ridge

from core.encoding.metrics import pearson_r
from core.encoding.ridge import ALPHA_CONVENTION, ALPHAS, chunk_splits, fit_ridge, story_splits


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


BACKENDS = [
    "numpy",
    "torch",
    pytest.param("torch_cuda", marks=pytest.mark.skipif(not _cuda_available(), reason="no CUDA GPU")),
]


def _linear_data(n_trs=600, n_features=30, n_voxels=8, noise_sd=0.5, seed=0):
    """Features on an arbitrary scale and offset, voxels = linear readout + noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_trs, n_features)) * rng.uniform(0.5, 3, n_features) + 2.0
    weights = rng.standard_normal((n_features, n_voxels))
    noise_sd = np.broadcast_to(noise_sd, (n_voxels,))
    Y = X @ weights + 5.0 + rng.standard_normal((n_trs, n_voxels)) * noise_sd
    return X, Y


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_alpha_matches_sklearn_on_standardised_data(backend):
    X, Y = _linear_data(noise_sd=2.0)
    alpha = 300.0
    fit = fit_ridge(X, Y, alphas=[alpha], backend=backend)

    Xz = (X - X.mean(0)) / X.std(0)
    reference = Ridge(alpha=alpha, fit_intercept=False).fit(Xz, Y - Y.mean(0)).coef_.T
    assert fit.weights.dtype == np.float32
    # himalaya computes in float32: elementwise rtol 1e-4, atol for near-zero weights.
    np.testing.assert_allclose(fit.weights, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
    np.testing.assert_array_equal(fit.alphas, alpha)
    np.testing.assert_allclose(fit.y_mean, Y.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fit.predict(X), Xz @ reference + Y.mean(0), rtol=1e-4, atol=1e-3)


def test_backends_agree_and_unknown_backend_is_named():
    X, Y = _linear_data(n_trs=300, n_voxels=5)
    fits = [fit_ridge(X, Y, backend=backend) for backend in ("numpy", "torch")]
    np.testing.assert_array_equal(fits[0].alphas, fits[1].alphas)
    np.testing.assert_allclose(fits[0].weights, fits[1].weights, rtol=1e-6)
    assert isinstance(fits[0].weights, np.ndarray) and isinstance(fits[0].alphas, np.ndarray)
    with pytest.raises(ValueError, match="'cupy'"):
        fit_ridge(X, Y, backend="cupy")


def _voxels_with_varied_noise(n_trs=600, n_features=40, n_voxels=60, seed=5):
    """Every voxel carries signal (so its CV curve has a clear peak), at noise levels 0.3..30."""
    noise_sd = np.geomspace(0.3, 30, n_voxels)
    X, Y = _linear_data(n_trs=n_trs, n_features=n_features, n_voxels=n_voxels, noise_sd=noise_sd, seed=seed)
    X[:, 2] = -1.5  # a constant feature
    Y[:, 3] = np.nan  # a NaN voxel
    Y[40, 11] = np.inf  # one bad TR makes a NaN voxel too
    return X, Y


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_himalaya_cross_validation(backend):
    X, Y = _voxels_with_varied_noise()
    splits = chunk_splits(X.shape[0], seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = fit_ridge(X, Y, splits=splits, backend=backend)

    # himalaya on the same standardised X and finite voxels, centring on each training fold.
    good = np.isfinite(Y).all(axis=0)
    Xz = np.zeros_like(X)
    varying = X.std(0) > 0
    Xz[:, varying] = (X[:, varying] - X[:, varying].mean(0)) / X[:, varying].std(0)
    set_backend("numpy")
    best, coefs, scores, intercept = solve_ridge_cv_svd(
        Xz.astype(np.float32), Y[:, good].astype(np.float32), alphas=ALPHAS.astype(np.float32),
        fit_intercept=True, score_func=r2_score, cv=splits, warn=False)
    reference_alphas = ALPHAS[np.abs(np.log(best)[:, None] - np.log(ALPHAS)).argmin(axis=1)]
    coefs[~varying] = 0.0

    np.testing.assert_array_equal(fit.alphas[good], reference_alphas)
    assert len(np.unique(reference_alphas)) >= 4  # the grid search has something to choose
    np.testing.assert_allclose(fit.cv_scores[good], scores[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.weights[:, good], coefs, rtol=1e-4, atol=1e-4 * np.abs(coefs).max())
    np.testing.assert_allclose(fit.y_mean[good], intercept, rtol=1e-4)
    assert np.isnan(fit.alphas[~good]).all() and (fit.weights[:, ~good] == 0).all()
    assert (fit.weights[2] == 0).all()


class _BlockReader:
    """The block protocol fit_ridge reads Y through, recording which blocks were asked for."""

    def __init__(self, Y):
        self._Y = Y
        self.shape = Y.shape
        self.requests = []

    def block(self, start, stop):
        self.requests.append((start, stop))
        return self._Y[:, start:stop].astype(np.float32)


def test_voxel_blocks_give_the_same_fit():
    X, Y = _voxels_with_varied_noise(n_voxels=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        whole = fit_ridge(X, Y)
        for voxel_block in (1, 7, 32):
            reader = _BlockReader(Y)
            fit = fit_ridge(X, reader, voxel_block=voxel_block)
            assert max(stop - start for start, stop in reader.requests) == voxel_block
            assert sorted(reader.requests)[0][0] == 0 and reader.requests[-1][1] == Y.shape[1]
            np.testing.assert_array_equal(fit.alphas, whole.alphas)
            # Equal up to float32 rounding (BLAS sums in a block-dependent order).
            np.testing.assert_allclose(fit.weights, whole.weights, rtol=1e-5,
                                       atol=1e-6 * np.abs(whole.weights).max())
            np.testing.assert_allclose(fit.cv_scores, whole.cv_scores, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(fit.y_mean, whole.y_mean, rtol=1e-6)
        # A memory budget chooses the block: 50 voxels in blocks that fit in 128 KiB.
        reader = _BlockReader(Y)
        fit_ridge(X, reader, block_bytes=2**17)
        assert 1 < len(reader.requests) < Y.shape[1]


def test_predict_a_block_of_voxels():
    X, Y = _linear_data(n_voxels=6)
    fit = fit_ridge(X, Y)
    whole = fit.predict(X)
    atol = 1e-6 * np.abs(whole).max()  # float32 rounding of a matrix product
    np.testing.assert_allclose(fit.predict(X, voxels=slice(2, 5)), whole[:, 2:5], rtol=1e-6, atol=atol)
    np.testing.assert_allclose(fit.predict(X, voxels=4), whole[:, 4], rtol=1e-6, atol=atol)


def test_default_grid_covers_the_fields_grids_and_edges_are_reported():
    # Huth's encoding.py grid is 1e2..1e6 in these units, the scaling-laws tutorial's 1e2..1e8.
    assert ALPHAS.min() <= 1e1 and ALPHAS.max() >= 1e7
    X, Y = _linear_data(n_trs=400, n_features=20, n_voxels=10, noise_sd=np.repeat([10.0, 1e4], 5), seed=7)
    # The noise-only voxels choose the largest alpha: recorded, but no warning (they have no signal).
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = fit_ridge(X, Y, alphas=np.logspace(0, 3, 7))
    assert fit.edge_fraction == pytest.approx(0.5)
    assert np.all(fit.alphas[5:] == 1e3) and np.all(fit.cv_scores[5:] <= 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert fit_ridge(X, Y[:, :5], alphas=np.logspace(-1, 4, 11)).edge_fraction == 0.0
    # Predictive voxels pushed to an edge: a grid far too high for them warns, naming the side.
    with pytest.warns(RuntimeWarning, match=r"100% of the predictive voxels .*100% at the smallest"):
        fit = fit_ridge(X, Y[:, :5], alphas=np.logspace(5, 8, 7))
    assert fit.edge_fraction == 1.0


def test_noisy_voxels_get_larger_alphas():
    noise_sd = np.repeat([0.1, 30.0], 6)
    X, Y = _linear_data(n_features=50, n_voxels=12, noise_sd=noise_sd, seed=1)
    fit = fit_ridge(X, Y, alphas=ALPHAS)
    clean, noisy = fit.alphas[:6], fit.alphas[6:]
    assert np.all(np.isin(fit.alphas, ALPHAS))
    assert noisy.min() > clean.max()
    assert np.median(noisy) >= 10 * np.median(clean)
    assert fit.cv_scores[:6].min() > 0.99 and fit.cv_scores[6:].max() < 0.5


def test_heldout_predictions_of_clean_linear_model():
    X, Y = _linear_data(n_trs=1000, noise_sd=1.0, seed=2)
    fit = fit_ridge(X[:700], Y[:700])
    r = pearson_r(fit.predict(X[700:]), Y[700:])
    assert r.min() > 0.9


def test_nan_voxels_are_left_out():
    X, Y = _linear_data(n_voxels=6, seed=3)
    Y_nan = Y.copy()
    Y_nan[:, 1] = np.nan
    Y_nan[17, 4] = np.nan  # one missing TR makes the whole voxel a NaN voxel
    fit = fit_ridge(X, Y_nan)
    good = [0, 2, 3, 5]
    reference = fit_ridge(X, Y[:, good])

    assert np.all(fit.weights[:, [1, 4]] == 0)
    assert np.isnan(fit.alphas[[1, 4]]).all() and np.isnan(fit.cv_scores[[1, 4]]).all()
    np.testing.assert_allclose(fit.weights[:, good], reference.weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fit.alphas[good], reference.alphas)
    prediction = fit.predict(X)
    assert np.isnan(prediction[:, [1, 4]]).all() and np.isfinite(prediction[:, good]).all()


def test_constant_feature_is_ignored():
    X, Y = _linear_data(seed=4)
    X[:, 3] = 7.0
    fit = fit_ridge(X, Y)
    assert fit.x_std[3] == 0 and np.all(fit.weights[3] == 0)
    X_test = X.copy()
    X_test[:, 3] = 100.0  # a constant feature carries no information, whatever its value
    np.testing.assert_allclose(fit.predict(X_test), fit.predict(X))


def test_alpha_convention_is_recorded():
    X, Y = _linear_data(n_trs=200, n_voxels=2)
    assert fit_ridge(X, Y).alpha_convention == ALPHA_CONVENTION
    assert "alpha**2" in ALPHA_CONVENTION


def test_input_errors_name_the_problem():
    X, Y = _linear_data(n_trs=200, n_voxels=2)
    with pytest.raises(ValueError, match="same n_trs"):
        fit_ridge(X[:-1], Y)
    X[3, 3] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        fit_ridge(X, Y)
    with pytest.raises(ValueError, match="at least 5 chunks"):
        chunk_splits(150, chunk_len=40, n_folds=5)


@pytest.mark.parametrize("n_samples, chunk_len, n_folds", [(1000, 40, 5), (437, 40, 5), (95, 10, 3)])
def test_chunk_splits_are_contiguous_disjoint_and_cover(n_samples, chunk_len, n_folds):
    splits = chunk_splits(n_samples, chunk_len=chunk_len, n_folds=n_folds, seed=3)
    assert len(splits) == n_folds
    all_val = np.concatenate([val for _, val in splits])
    np.testing.assert_array_equal(np.sort(all_val), np.arange(n_samples))  # each TR once
    n_chunks = -(-n_samples // chunk_len)
    for train, val in splits:
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n_samples))
        assert np.intersect1d(train, val).size == 0
        # Validation = whole chunks: every chunk is entirely in or entirely out.
        chunk_ids = np.unique(val // chunk_len)
        expected = np.concatenate([np.arange(c * chunk_len, min((c + 1) * chunk_len, n_samples))
                                   for c in chunk_ids])
        np.testing.assert_array_equal(val, expected)
        assert len(chunk_ids) in (n_chunks // n_folds, -(-n_chunks // n_folds))


def test_chunk_splits_are_seeded():
    def as_lists(splits):
        return [val.tolist() for _, val in splits]

    assert as_lists(chunk_splits(800, seed=1)) == as_lists(chunk_splits(800, seed=1))
    assert as_lists(chunk_splits(800, seed=1)) != as_lists(chunk_splits(800, seed=2))


def test_story_splits_keep_stories_whole():
    lengths = [120, 90, 200, 150, 80, 60]
    splits = story_splits(lengths, n_folds=3, seed=0)
    story_of_tr = np.repeat(np.arange(len(lengths)), lengths)
    all_val = np.sort(np.concatenate([val for _, val in splits]))
    np.testing.assert_array_equal(all_val, np.arange(sum(lengths)))
    for train, val in splits:
        assert set(story_of_tr[val]).isdisjoint(story_of_tr[train])
    X, Y = _linear_data(n_trs=sum(lengths), n_voxels=3)
    assert np.isfinite(fit_ridge(X, Y, splits=splits).cv_scores).all()
