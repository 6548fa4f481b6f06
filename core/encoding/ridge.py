"""Ridge regression from features to voxels, with a per-voxel alpha chosen by CV on TR chunks.

The solver is our own, in torch (CPU or GPU), and streams the voxels: memory is set by
the features and one block of voxels, not by the number of voxels. Each fold's
features are diagonalised once (an eigendecomposition of the training Gram matrix,
in float64) and reused for every voxel block; per block it computes the validation R^2
of every alpha, picks each voxel's best alpha and refits on all rows. Around the solver
this module adds what encoding models need: feature standardisation, NaN voxels,
cross-validation folds made of contiguous TR chunks (neighbouring TRs are correlated,
so single random TRs would leak), and a result that records its alpha convention.

Alpha convention
----------------
Alphas here are himalaya's: the loss is ``||Y - X W||^2 + alpha * ||W||^2`` on z-scored
``X``. The Huth-lab ``ridge_utils`` (``bootstrap_ridge``) penalises ``alpha**2``: their
alpha ``a`` corresponds to ``a**2`` here. :data:`ALPHA_CONVENTION` is stored with every fit.
The default grid :data:`ALPHAS` spans 1e0..1e8, covering Huth's ``encoding.py`` grid
(``logspace(1, 3, 10)`` there, 1e2..1e6 here) and the scaling-laws tutorial's
(``logspace(1, 4, 15)``, 1e2..1e8 here). :attr:`RidgeFit.edge_fraction` says how many
voxels chose an alpha at either end of the grid. Voxels with no signal rightly choose the
largest; among the predictive voxels (cross-validated score > 0) more than 5% at an edge
means the grid is too narrow for the data, and :func:`fit_ridge` warns. The lower end,
1e0, is for data with many samples per feature and little noise (our demo data chose
1e1, the old lower end, for half its voxels).

Cross-validation score
----------------------
Alphas are chosen per voxel by the mean over folds of the validation R^2 (the semantics
of ``himalaya.scoring.r2_score``; X and Y are re-centred on each fold's training rows,
as himalaya's ``fit_intercept=True`` does), which, unlike correlation, also penalises
predictions of the wrong scale. Ties go to the larger alpha, as in himalaya.

Memory
------
``Y`` is read one block of ``voxel_block`` voxels at a time: an array, or any object
with ``shape`` and ``block(start, stop)`` (e.g. :class:`core.encoding.evaluation.StoryResponses`,
which reads the block's columns from the response files). When ``voxel_block`` is None
it is chosen so that one block's working memory stays under ``block_bytes`` (default
:data:`BLOCK_BYTES`). Besides one block, the fit holds standardised X (float32), per
fold a (n_features, n_features) eigenbasis and the validation rows projected onto it,
and its result: ``weights`` of shape (n_features, n_voxels), float32.

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

import warnings
from dataclasses import dataclass

import numpy as np
import torch

#: Default alpha grid (himalaya convention): 17 values, half a decade apart, 1e0..1e8.
ALPHAS = np.logspace(0, 8, 17)

ALPHA_CONVENTION = (
    "himalaya: loss = ||Y - XW||^2 + alpha * ||W||^2 on z-scored X "
    "(the Huth-lab ridge_utils penalises alpha**2: their alpha a corresponds to a**2 here)"
)

#: Working memory of one voxel block when ``voxel_block`` is None (bytes).
BLOCK_BYTES = 256 * 2**20

#: Above this fraction of predictive voxels (cross-validated score > 0) at an edge of the
#: alpha grid, fit_ridge warns. Voxels with no signal rightly choose the largest alpha.
ALPHA_EDGE_WARNING = 0.05

# himalaya backend name -> torch device. The numpy backend computes with torch on the CPU.
_DEVICES = {"numpy": "cpu", "torch": "cpu", "torch_cuda": "cuda", "torch_mps": "mps"}

_ROW_BLOCK = 4096  # rows per step when standardising X or accumulating its Gram matrix


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
        Intercept of each voxel (its training mean, up to rounding); NaN for NaN
        voxels, so their predictions are NaN, as their responses are.
    alpha_convention : str
        How ``alphas`` penalise the weights; see :data:`ALPHA_CONVENTION`.
    alpha_grid : array of shape (n_alphas,) or None
        The sorted grid the alphas were chosen from.
    """

    weights: np.ndarray
    alphas: np.ndarray
    cv_scores: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    alpha_convention: str = ALPHA_CONVENTION
    alpha_grid: np.ndarray | None = None

    @property
    def edge_fraction(self) -> float:
        """Fraction of the finite voxels whose alpha is the grid's smallest or largest.

        NaN when no voxel is finite or the grid is unknown. With a one-value grid every
        voxel is at the edge.
        """
        finite = np.isfinite(self.alphas)
        if self.alpha_grid is None or not finite.any():
            return float("nan")
        chosen = self.alphas[finite]
        return float(np.mean((chosen == self.alpha_grid[0]) | (chosen == self.alpha_grid[-1])))

    def predict(self, X, voxels=None) -> np.ndarray:
        """Predict voxel responses.

        Parameters
        ----------
        X : array of shape (n_trs, n_features)
            Features, on the same scale as the training features (not z-scored).
        voxels : slice or int or int array, optional
            Columns to predict (e.g. ``slice(start, stop)`` for one block); all by default.

        Returns
        -------
        Y_pred : array of shape (n_trs, n_selected), float32
            (n_trs,) for an int ``voxels``.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"X must have shape (n_trs, {self.weights.shape[0]}); got shape {X.shape}"
            )
        columns = slice(None) if voxels is None else voxels
        Xz = _standardise(X, self.x_mean, self.x_std)
        return Xz @ self.weights[:, columns] + self.y_mean[columns].astype(np.float32)


def _feature_statistics(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of X in float64, without a float64 copy of X."""
    x_mean = X.mean(axis=0, dtype=np.float64)
    sum_sq = np.zeros(X.shape[1])
    for start in range(0, X.shape[0], _ROW_BLOCK):
        sum_sq += np.square(X[start:start + _ROW_BLOCK] - x_mean).sum(axis=0)
    x_std = np.sqrt(sum_sq / max(X.shape[0], 1))
    # Rounding leaves a tiny std on constant columns; z-scoring would blow it up.
    x_std[x_std <= 1e-12 * np.maximum(np.abs(x_mean), 1.0)] = 0.0
    return x_mean, x_std


def _standardise(X: np.ndarray, x_mean: np.ndarray, x_std: np.ndarray) -> np.ndarray:
    """Z-score the columns of X, mapping constant columns (``x_std == 0``) to 0, float32.

    Computed in float64 one block of rows at a time.
    """
    scale = np.divide(1.0, x_std, out=np.zeros_like(x_std, dtype=np.float64), where=x_std > 0)
    out = np.empty(X.shape, dtype=np.float32)
    for start in range(0, X.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        out[rows] = (X[rows] - x_mean) * scale
    return out


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


def torch_device(backend: str) -> torch.device:
    """The torch device that himalaya backend name ``backend`` computes on.

    Parameters
    ----------
    backend : str
        "numpy" or "torch" (CPU), "torch_cuda" (GPU), "torch_mps" (Apple GPU).
    """
    if backend not in _DEVICES:
        raise ValueError(f"ridge backend must be one of {', '.join(_DEVICES)}; got {backend!r}")
    return torch.device(_DEVICES[backend])


class _ArrayBlocks:
    """Column blocks of an in-memory response array, as float32 copies."""

    def __init__(self, Y: np.ndarray):
        self._Y = Y
        self.shape = Y.shape

    def block(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._Y[:, start:stop], dtype=np.float32)


@dataclass
class _Basis:
    """One set of training rows, diagonalised: X_c^T X_c = V diag(eigenvalues) V^T.

    ``X_c`` is standardised X restricted to the rows and centred on their mean ``x_mean``.
    For a fold, the held-out rows centred on ``x_mean`` and projected onto V are kept
    factored as ``val_q @ val_r`` (thin QR): ``val_q`` of shape (n_val, k) with
    orthonormal columns and ``val_r`` of shape (k, n_features), k = min(n_val,
    n_features), so that validation errors cost k (not n_val) rows per alpha.
    """

    rows: torch.Tensor | None
    val_rows: torch.Tensor | None
    x_mean: torch.Tensor
    vectors: torch.Tensor
    eigenvalues: torch.Tensor
    val_q: torch.Tensor | None = None
    val_r: torch.Tensor | None = None


def _gram(Xz: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and uncentred Gram matrix of the given rows of Xz, float64, a block of rows at a time."""
    n_features = Xz.shape[1]
    total = torch.zeros(n_features, dtype=torch.float64, device=Xz.device)
    gram = torch.zeros(n_features, n_features, dtype=torch.float64, device=Xz.device)
    n_rows = Xz.shape[0] if rows is None else len(rows)
    for start in range(0, n_rows, _ROW_BLOCK):
        part = slice(start, start + _ROW_BLOCK)
        block = (Xz[part] if rows is None else Xz[rows[part]]).double()
        total += block.sum(0)
        gram += block.T @ block
    return total, gram


def _basis(Xz: torch.Tensor, total: torch.Tensor, gram: torch.Tensor, n_rows: int,
           rows=None, val_rows=None) -> _Basis:
    """Diagonalise the centred Gram matrix of ``n_rows`` rows given their sum and Gram."""
    x_mean = total / n_rows
    eigenvalues, vectors = torch.linalg.eigh(gram - n_rows * torch.outer(x_mean, x_mean))
    vectors = vectors.float()
    x_mean = x_mean.float()
    basis = _Basis(rows=rows, val_rows=val_rows, x_mean=x_mean, vectors=vectors,
                   eigenvalues=eigenvalues.clamp(min=0).float())
    if val_rows is not None:
        val_q, val_r = torch.linalg.qr(((Xz[val_rows] - x_mean) @ vectors).double())
        basis.val_q, basis.val_r = val_q.float(), val_r.float()
    return basis


def fit_ridge(X, Y, alphas=ALPHAS, chunk_len: int = 40, n_folds: int = 5, seed: int = 0,
              backend: str = "numpy", voxel_block: int | None = None, splits=None,
              block_bytes: int = BLOCK_BYTES) -> RidgeFit:
    """Fit ridge from features to voxels, choosing each voxel's alpha by cross-validation.

    X is z-scored (constant columns become 0) with statistics of all rows. On each fold,
    X and Y are centred on the training rows and every alpha is scored by the R^2 of
    its validation predictions; each voxel takes the alpha with the best mean R^2 over
    the folds, and its weights are refit on all rows with that alpha.

    Parameters
    ----------
    X : array of shape (n_trs, n_features)
        Features, finite.
    Y : array of shape (n_trs, n_voxels), or an object with ``shape == (n_trs, n_voxels)``
        and ``block(start, stop)`` returning a new float32 array of shape (n_trs, stop - start)
        (the fit may overwrite it). Responses, read one voxel block at a time and never
        copied whole. A voxel column with any NaN/inf is a NaN voxel: it is left out of
        the fit and gets zero weights and NaN alpha, score and mean.
    alphas : array of shape (n_alphas,)
        Candidate alphas (himalaya convention, see :data:`ALPHA_CONVENTION`).
    chunk_len, n_folds, seed : int
        Folds from :func:`chunk_splits`; ignored when ``splits`` is given.
    backend : str
        Where to compute: "numpy" or "torch" (CPU), "torch_cuda" (GPU), "torch_mps".
        Results are numpy arrays either way.
    voxel_block : int or None
        Voxels solved at once (memory knob); None picks the largest block whose working
        memory fits in ``block_bytes``. Results do not depend on it beyond rounding.
    splits : list of (train_idx, val_idx), optional
        Explicit folds, e.g. from :func:`story_splits`.
    block_bytes : int
        Memory budget of one voxel block when ``voxel_block`` is None.

    Returns
    -------
    RidgeFit

    Warns
    -----
    RuntimeWarning
        When more than :data:`ALPHA_EDGE_WARNING` of the voxels chose an alpha at
        either end of a grid of three or more alphas.
    """
    X = np.asarray(X)
    Y = Y if hasattr(Y, "block") else _ArrayBlocks(np.asarray(Y))
    if X.ndim != 2 or len(Y.shape) != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X must be (n_trs, n_features) and Y (n_trs, n_voxels) with the same n_trs; "
            f"got shapes {X.shape} and {tuple(Y.shape)}"
        )
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf; features must be finite")
    alphas = np.sort(np.atleast_1d(np.asarray(alphas, dtype=np.float64)))
    if (alphas <= 0).any():
        raise ValueError(f"alphas must be positive; got {alphas}")
    if splits is None:
        # Short data (a small test set of stories) gets shorter chunks rather than an error.
        splits = chunk_splits(X.shape[0], min(chunk_len, max(1, X.shape[0] // n_folds)), n_folds, seed)
    for train_idx, val_idx in splits:
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError("every fold needs training and validation rows; check `splits`")
    device = torch_device(backend)
    (n_trs, n_features), n_voxels = X.shape, Y.shape[1]
    if voxel_block is None:
        n_val = max(len(val_idx) for _, val_idx in splits)
        per_voxel = 4 * (3 * n_trs + 2 * n_val + 6 * n_features) + 8 * 2 * len(alphas)
        voxel_block = block_bytes // per_voxel
    voxel_block = int(min(max(voxel_block, 1), max(n_voxels, 1)))

    x_mean, x_std = _feature_statistics(X)
    Xz = torch.from_numpy(_standardise(X, x_mean, x_std)).to(device)
    total, gram = _gram(Xz, None)
    full = _basis(Xz, total, gram, n_trs)
    folds = []
    for train_idx, val_idx in splits:
        val_rows = torch.as_tensor(val_idx, device=device)
        val_total, val_gram = _gram(Xz, val_rows)
        folds.append(_basis(Xz, total - val_total, gram - val_gram, len(train_idx),
                            rows=torch.as_tensor(train_idx, device=device), val_rows=val_rows))
    del gram

    weights = np.zeros((n_features, n_voxels), dtype=np.float32)
    chosen = np.full(n_voxels, np.nan)
    cv_scores = np.full(n_voxels, np.nan)
    y_mean = np.full(n_voxels, np.nan)
    alphas_t = torch.as_tensor(alphas, dtype=torch.float32, device=device)
    for start in range(0, n_voxels, voxel_block):
        stop = min(start + voxel_block, n_voxels)
        block = Y.block(start, stop)
        if block.shape != (n_trs, stop - start):
            raise ValueError(f"Y.block({start}, {stop}) has shape {block.shape}, "
                             f"expected ({n_trs}, {stop - start})")
        good = np.isfinite(block).all(axis=0)
        if not good.any():
            continue
        values = block if good.all() else block[:, good]
        del block
        Yb = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)
        del values
        best, score, W, intercept = _solve_block(Xz, Yb, full, folds, alphas_t)
        columns = np.arange(start, stop)[good]
        chosen[columns] = alphas[best]
        cv_scores[columns] = score
        weights[:, columns] = W
        y_mean[columns] = intercept
    weights[x_std == 0] = 0.0  # the eigenbasis leaves rounding-level weights on all-zero features
    fit = RidgeFit(weights=weights, alphas=chosen, cv_scores=cv_scores, x_mean=x_mean,
                   x_std=x_std, y_mean=y_mean, alpha_grid=alphas)
    predictive = chosen[np.isfinite(chosen) & (cv_scores > 0)]
    low, high = (np.mean(predictive == alphas[0]), np.mean(predictive == alphas[-1])) if len(predictive) else (0, 0)
    if len(alphas) > 2 and low + high > ALPHA_EDGE_WARNING:
        warnings.warn(
            f"ridge: {low + high:.0%} of the predictive voxels chose an alpha at an edge of the grid "
            f"({low:.0%} at the smallest, {alphas[0]:g}; {high:.0%} at the largest, {alphas[-1]:g}); "
            "widen the grid (alphas) on that side", RuntimeWarning, stacklevel=2)
    return fit


def _solve_block(Xz: torch.Tensor, Y: torch.Tensor, full: _Basis, folds: list[_Basis],
                 alphas: torch.Tensor):
    """Cross-validate the alphas and refit, for one block of finite voxels.

    Parameters
    ----------
    Xz : tensor of shape (n_trs, n_features), standardised features.
    Y : tensor of shape (n_trs, n_block), finite responses; centred in place.
    full, folds : bases of all rows and of each fold's training rows.
    alphas : tensor of shape (n_alphas,), sorted.

    Returns
    -------
    best : int array of shape (n_block,), index of each voxel's alpha.
    score : array of shape (n_block,), mean validation R^2 at that alpha.
    weights : float32 array of shape (n_features, n_block).
    intercept : float64 array of shape (n_block,).
    """
    n_trs = Y.shape[0]
    # Centring on all rows first keeps the fold-wise centring below free of cancellation.
    offset = Y.sum(0, dtype=torch.float64) / n_trs
    Y -= offset.float()
    y_sum = Y.sum(0)
    cross = Xz.T @ Y  # (n_features, n_block)
    scores = torch.zeros(len(alphas), Y.shape[1], dtype=torch.float64, device=Y.device)
    for fold in folds:
        Y_val = Y[fold.val_rows]
        n_train = len(fold.rows)
        val_sum = Y_val.sum(0)
        y_train_mean = (y_sum - val_sum) / n_train
        # X_c^T Y_c of the training rows, from all rows minus the validation rows.
        train_cross = cross - Xz[fold.val_rows].T @ Y_val
        train_cross -= n_train * torch.outer(fold.x_mean, y_train_mean)
        coords = fold.vectors.T @ train_cross
        total_ss = torch.square(Y_val - val_sum / len(Y_val)).sum(0)
        Y_val -= y_train_mean
        # ||Y_val - Q R c||^2 = (||Y_val||^2 - ||Q^T Y_val||^2) + ||Q^T Y_val - R c||^2
        val_coords = fold.val_q.T @ Y_val
        outside_ss = (torch.square(Y_val).sum(0) - torch.square(val_coords).sum(0)).clamp(min=0)
        del Y_val
        for i, alpha in enumerate(alphas):
            residual = fold.val_r @ (coords / (fold.eigenvalues + alpha)[:, None])
            residual -= val_coords
            r2 = 1.0 - (outside_ss + torch.square(residual).sum(0)) / total_ss
            scores[i] += torch.where(total_ss > 0, r2, torch.zeros_like(r2)).double()
    scores /= len(folds)
    # A slope of 1e-10 per log-alpha breaks ties towards larger alphas (himalaya's rule).
    best = torch.argmax(scores + 1e-10 * torch.log(alphas.double())[:, None], dim=0)
    score = scores.gather(0, best[None])[0]
    coords = full.vectors.T @ (cross - torch.outer(full.x_mean, y_sum))
    weights = full.vectors @ (coords / (full.eigenvalues[:, None] + alphas[best][None, :]))
    intercept = offset + (y_sum / n_trs).double() - full.x_mean.double() @ weights.double()
    return (best.cpu().numpy(), score.cpu().numpy(), weights.cpu().numpy(),
            intercept.cpu().numpy())
