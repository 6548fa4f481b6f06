"""Ridge regression from features to voxels, with a per-voxel alpha chosen by CV on TR chunks.

The solver is himalaya's ``solve_ridge_cv_svd`` (CPU or GPU through a himalaya backend);
this module adds what encoding models need around it: feature standardisation, NaN
voxels, cross-validation folds made of contiguous TR chunks (neighbouring TRs are
correlated, so single random TRs would leak), and a result that records its alpha
convention.

Alpha convention
----------------
Alphas here are himalaya's: the loss is ``||Y - X W||^2 + alpha * ||W||^2`` on z-scored
``X``. The Huth-lab ``ridge_utils`` (``bootstrap_ridge``) penalises ``alpha**2``: their
alpha ``a`` corresponds to ``a**2`` here. :data:`ALPHA_CONVENTION` is stored with every fit.

Cross-validation score
----------------------
Alphas are chosen per voxel by the mean over folds of the validation R^2
(``himalaya.scoring.r2_score``), which, unlike correlation, also penalises predictions
of the wrong scale.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((400, 20))
>>> Y = X @ rng.standard_normal((20, 3)) + rng.standard_normal((400, 3))
>>> fit = fit_ridge(X, Y)
>>> fit.predict(X).shape
(400, 3)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from himalaya.backend import get_backend, set_backend
from himalaya.ridge import solve_ridge_cv_svd
from himalaya.scoring import r2_score

#: Default alpha grid of the reference evaluation (BRIEF section 2).
ALPHAS = np.logspace(1, 4, 10)

ALPHA_CONVENTION = (
    "himalaya: loss = ||Y - XW||^2 + alpha * ||W||^2 on z-scored X "
    "(the Huth-lab ridge_utils penalises alpha**2: their alpha a corresponds to a**2 here)"
)


@dataclass
class RidgeFit:
    """A fitted ridge model from (un-standardised) features to voxel responses.

    Attributes
    ----------
    weights : array of shape (n_features, n_voxels), float32
        Weights on the z-scored features; zero for NaN voxels and constant features.
    alphas : array of shape (n_voxels,)
        Chosen alpha per voxel (a value of the grid); NaN for NaN voxels.
    cv_scores : array of shape (n_voxels,)
        Mean validation R^2 over folds at the chosen alpha; NaN for NaN voxels.
    x_mean, x_std : arrays of shape (n_features,)
        Standardisation of X learned on the training data; ``x_std`` is 0 for a
        constant feature, which the model then ignores.
    y_mean : array of shape (n_voxels,)
        Training mean of each voxel (the intercept); NaN for NaN voxels, so their
        predictions are NaN, as their responses are.
    alpha_convention : str
        How ``alphas`` penalise the weights; see :data:`ALPHA_CONVENTION`.
    """

    weights: np.ndarray
    alphas: np.ndarray
    cv_scores: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    alpha_convention: str = ALPHA_CONVENTION

    def predict(self, X) -> np.ndarray:
        """Predict voxel responses.

        Parameters
        ----------
        X : array of shape (n_trs, n_features)
            Features, on the same scale as the training features (not z-scored).

        Returns
        -------
        Y_pred : array of shape (n_trs, n_voxels), float32
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"X must have shape (n_trs, {self.weights.shape[0]}); got shape {X.shape}"
            )
        Xz = _standardise(X, self.x_mean, self.x_std)
        return (Xz @ self.weights + self.y_mean).astype(np.float32)


def _standardise(X: np.ndarray, x_mean: np.ndarray, x_std: np.ndarray) -> np.ndarray:
    """Z-score the columns of X, mapping constant columns (``x_std == 0``) to 0, float32."""
    scale = np.divide(1.0, x_std, out=np.zeros_like(x_std, dtype=np.float64), where=x_std > 0)
    return ((np.asarray(X, dtype=np.float64) - x_mean) * scale).astype(np.float32)


def chunk_splits(n_samples: int, chunk_len: int = 40, n_folds: int = 5, seed: int = 0):
    """Cross-validation folds made of contiguous chunks of TRs.

    The TRs are cut into consecutive chunks of ``chunk_len`` (the last may be shorter);
    a seeded permutation of the chunks deals them round-robin into ``n_folds`` folds,
    so folds differ in size by at most one chunk. Every TR is in exactly one
    validation set.

    Parameters
    ----------
    n_samples : int
        Number of TRs.
    chunk_len : int
        TRs per chunk. 40 TRs (~80 s) is the reference choice: long compared with the
        haemodynamic response and the FIR delays, so little leaks across chunk edges.
    n_folds : int
        Number of folds, at least 2.
    seed : int
        Seed of the chunk permutation.

    Returns
    -------
    splits : list of n_folds tuples (train_idx, val_idx)
        Sorted int arrays of TR indices; ``train_idx`` is the complement of ``val_idx``.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1; got {chunk_len}")
    starts = np.arange(0, n_samples, chunk_len)
    return _group_splits(np.repeat(np.arange(len(starts)), chunk_len)[:n_samples],
                         n_folds, seed, unit="chunks")


def story_splits(story_lengths: list[int], n_folds: int = 5, seed: int = 0):
    """Cross-validation folds made of whole stories, for several concatenated stories.

    Nothing leaks across fold edges (stories are normalised and delayed separately), at
    the price of coarser folds than :func:`chunk_splits`. Stories are dealt into folds
    like chunks are there.

    Parameters
    ----------
    story_lengths : list of int
        TRs of each story, in the order they are concatenated in X and Y.
    n_folds : int
        Number of folds, at least 2 and at most the number of stories.
    seed : int
        Seed of the story permutation.

    Returns
    -------
    splits : list of n_folds tuples (train_idx, val_idx)
        Sorted int arrays of TR indices into the concatenation.
    """
    lengths = np.asarray(story_lengths, dtype=int)
    if lengths.ndim != 1 or (lengths < 1).any():
        raise ValueError(f"story_lengths must be positive integers; got {story_lengths}")
    return _group_splits(np.repeat(np.arange(len(lengths)), lengths), n_folds, seed,
                         unit="stories")


def _group_splits(group_of_sample: np.ndarray, n_folds: int, seed: int, unit: str):
    """Folds that keep each group (chunk, story) of samples whole.

    Parameters
    ----------
    group_of_sample : int array of shape (n_samples,)
        Group index of each sample, 0..n_groups-1.
    """
    n_groups = int(group_of_sample.max()) + 1 if len(group_of_sample) else 0
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2; got {n_folds}")
    if n_groups < n_folds:
        raise ValueError(
            f"{n_folds} folds need at least {n_folds} {unit}; got {n_groups} "
            f"({len(group_of_sample)} TRs)"
        )
    fold_of_group = np.empty(n_groups, dtype=int)
    fold_of_group[np.random.default_rng(seed).permutation(n_groups)] = np.arange(n_groups) % n_folds
    fold_of_sample = fold_of_group[group_of_sample]
    return [
        (np.flatnonzero(fold_of_sample != fold), np.flatnonzero(fold_of_sample == fold))
        for fold in range(n_folds)
    ]


@contextlib.contextmanager
def himalaya_backend(name: str):
    """Use himalaya backend ``name`` inside the block, then restore the previous one.

    Parameters
    ----------
    name : str
        A himalaya backend: "numpy", "torch", "torch_cuda", "torch_mps" or "cupy".
    """
    previous = get_backend().name
    backend = set_backend(name)
    try:
        yield backend
    finally:
        set_backend(previous)


def fit_ridge(X, Y, alphas=ALPHAS, chunk_len: int = 40, n_folds: int = 5, seed: int = 0,
              backend: str = "numpy", n_targets_batch: int | None = None,
              splits=None) -> RidgeFit:
    """Fit ridge from features to voxels, choosing each voxel's alpha by cross-validation.

    X is z-scored (constant columns become 0) and Y centred with statistics of all
    rows; for each voxel the alpha with the best mean validation R^2 over the folds is
    chosen, then the weights are refit on all rows with that alpha.

    Parameters
    ----------
    X : array of shape (n_trs, n_features)
        Features, finite.
    Y : array of shape (n_trs, n_voxels)
        Responses. A voxel column with any NaN/inf is a NaN voxel: it is left out of the
        fit and gets zero weights and NaN alpha, score and mean.
    alphas : array of shape (n_alphas,)
        Candidate alphas (himalaya convention, see :data:`ALPHA_CONVENTION`).
    chunk_len, n_folds, seed : int
        Folds from :func:`chunk_splits`; ignored when ``splits`` is given.
    backend : str
        himalaya backend to compute with ("numpy", "torch", "torch_cuda", ...); the
        caller's backend is restored afterwards. Results are numpy arrays either way.
    n_targets_batch : int or None
        Voxels solved at once (memory knob); all at once if None.
    splits : list of (train_idx, val_idx), optional
        Explicit folds, e.g. from :func:`story_splits`.

    Returns
    -------
    RidgeFit
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X must be (n_trs, n_features) and Y (n_trs, n_voxels) with the same n_trs; "
            f"got shapes {X.shape} and {Y.shape}"
        )
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf; features must be finite")
    alphas = np.sort(np.atleast_1d(np.asarray(alphas, dtype=np.float64)))
    if (alphas <= 0).any():
        raise ValueError(f"alphas must be positive; got {alphas}")
    if splits is None:
        # Short data (a small test set of stories) gets shorter chunks rather than an error.
        splits = chunk_splits(X.shape[0], min(chunk_len, max(1, X.shape[0] // n_folds)), n_folds, seed)

    n_features, n_voxels = X.shape[1], Y.shape[1]
    x_mean = X.mean(axis=0)
    x_std = X.std(axis=0)
    # Rounding leaves a tiny std on constant columns; z-scoring would blow it up.
    x_std[x_std <= 1e-12 * np.maximum(np.abs(x_mean), 1.0)] = 0.0
    Xz = _standardise(X, x_mean, x_std)
    good = np.isfinite(Y).all(axis=0)
    y_mean = np.full(n_voxels, np.nan)
    y_mean[good] = Y[:, good].mean(axis=0)
    Yc = (Y[:, good] - y_mean[good]).astype(np.float32)

    weights = np.zeros((n_features, n_voxels), dtype=np.float32)
    chosen = np.full(n_voxels, np.nan)
    cv_scores = np.full(n_voxels, np.nan)
    if good.any():
        with himalaya_backend(backend) as bk:
            # fit_intercept re-centres X and Y on each training fold, so validation
            # rows never inform the centring of the model that predicts them.
            best, coefs, scores, intercept = solve_ridge_cv_svd(
                bk.asarray(Xz), bk.asarray(Yc), alphas=bk.asarray(alphas, dtype="float32"),
                fit_intercept=True, score_func=r2_score, cv=splits,
                n_targets_batch=n_targets_batch, warn=False,
            )
            best, coefs = bk.to_numpy(best), bk.to_numpy(coefs)
            scores, intercept = bk.to_numpy(scores), bk.to_numpy(intercept)
        # himalaya returns exp(-log(alpha)) in float32: snap back to the grid value.
        chosen[good] = alphas[np.abs(np.log(best)[:, None] - np.log(alphas)).argmin(axis=1)]
        weights[:, good] = coefs
        # The SVD leaves rounding-level weights on all-zero (constant) features.
        weights[x_std == 0] = 0.0
        cv_scores[good] = scores[0]
        # Y was centred on all rows, so this intercept is rounding-level; keep it exact.
        y_mean[good] += intercept
    return RidgeFit(weights=weights, alphas=chosen, cv_scores=cv_scores,
                    x_mean=x_mean, x_std=x_std, y_mean=y_mean)
