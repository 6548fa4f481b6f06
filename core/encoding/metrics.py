"""Encoding-model metrics: per-voxel and spatial correlation, ROI summaries, noise ceiling.

All functions take numpy arrays (or anything ``np.asarray`` accepts), compute in float64
and return numpy arrays or floats. Per-voxel and per-TR metrics convert their input to
float64 one block at a time (:data:`BLOCK_ELEMENTS` values), so scoring ~95,000 voxels
needs no float64 copy of them all. Voxels whose responses contain NaN (common in
ds003020: voxels outside the brain mask of some sessions) give NaN, never an error, and
every summary ignores them.

Definitions
-----------
pearson_r
    Per voxel, Pearson correlation over time between prediction and response.
spatial_r
    Per TR, Pearson correlation across voxels (the reference training loss).
explainable_variance, noise_ceiling
    From repeated presentations of one story (Sahani & Linden 2003; Hsu, Borst &
    Theunissen 2004). See :func:`explainable_variance` for the formulas.
mean_ceiling_fraction
    ``mean(r) / mean(ceiling)`` over the voxels where both are finite: the "fraction of
    ceiling" reported in run summaries.
"""

from __future__ import annotations

import numpy as np

# Below this ceiling a voxel has (almost) no explainable signal; dividing by it would
# turn estimation noise into huge fractions.
MIN_CEILING = 0.05

#: Values converted to float64 at once (8 MiB): the block size of the per-voxel metrics.
BLOCK_ELEMENTS = 2**20


def _blocks(n: int, other: int) -> list[slice]:
    """Consecutive slices of ``range(n)`` whose blocks of ``other`` values each stay under BLOCK_ELEMENTS."""
    width = max(1, BLOCK_ELEMENTS // max(other, 1))
    return [slice(start, min(start + width, n)) for start in range(0, n, width)]


def _as_2d(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n_trs, n_voxels); got shape {array.shape}")
    return array


def _check_same_shape(pred: np.ndarray, actual: np.ndarray) -> None:
    if pred.shape != actual.shape:
        raise ValueError(
            f"pred and actual must have the same shape (n_trs, n_voxels); "
            f"got {pred.shape} and {actual.shape}"
        )


def _is_constant(x: np.ndarray, centred_sum_sq: np.ndarray) -> np.ndarray:
    """Columns of ``x`` that are constant up to rounding, shape (n_columns,)."""
    # Centring a constant column leaves rounding residue of about eps * |value| per
    # entry, not exact zeros, and that residue must not be correlated.
    residue = 8 * np.finfo(np.float64).eps * np.abs(x).max(axis=0, initial=0.0)
    return centred_sum_sq <= x.shape[0] * residue**2


def _correlate_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns of two finite arrays; NaN for constant columns.

    Parameters
    ----------
    a, b : array of shape (n_samples, n_columns)

    Returns
    -------
    r : array of shape (n_columns,)
    """
    a_c = a - a.mean(axis=0)
    b_c = b - b.mean(axis=0)
    ss_a = (a_c * a_c).sum(axis=0)
    ss_b = (b_c * b_c).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a_c * b_c).sum(axis=0) / np.sqrt(ss_a * ss_b)
    r[_is_constant(a, ss_a) | _is_constant(b, ss_b)] = np.nan
    return np.clip(r, -1.0, 1.0)


def pearson_r(pred, actual) -> np.ndarray:
    """Per-voxel Pearson correlation over time.

    Parameters
    ----------
    pred : array of shape (n_trs, n_voxels)
        Predicted responses.
    actual : array of shape (n_trs, n_voxels)
        Measured responses.

    Returns
    -------
    r : array of shape (n_voxels,)
        NaN where either column is constant or contains any NaN/inf.

    Examples
    --------
    >>> t = np.arange(10.0)[:, None]
    >>> pearson_r(np.hstack([t, t]), np.hstack([2 * t, -t])).tolist()
    [1.0, -1.0]
    """
    pred, actual = _as_2d("pred", pred), _as_2d("actual", actual)
    _check_same_shape(pred, actual)
    r = np.full(pred.shape[1], np.nan)
    for block in _blocks(pred.shape[1], pred.shape[0]):
        p = pred[:, block].astype(np.float64)
        a = actual[:, block].astype(np.float64)
        valid = np.isfinite(p).all(axis=0) & np.isfinite(a).all(axis=0)
        r_block = np.full(p.shape[1], np.nan)
        r_block[valid] = _correlate_columns(p[:, valid], a[:, valid])
        r[block] = r_block
    return r


def spatial_r(pred, actual) -> np.ndarray:
    """Per-TR Pearson correlation across voxels.

    Voxel columns of ``actual`` that contain any NaN are left out of every TR, so all TRs
    are scored on the same voxel set.

    Parameters
    ----------
    pred : array of shape (n_trs, n_voxels)
        Predicted responses.
    actual : array of shape (n_trs, n_voxels)
        Measured responses.

    Returns
    -------
    r : array of shape (n_trs,)
        NaN for a TR where either pattern is constant across the kept voxels, or where
        ``pred`` has a non-finite value in a kept voxel.
    """
    pred, actual = _as_2d("pred", pred), _as_2d("actual", actual)
    _check_same_shape(pred, actual)
    keep = ~np.isnan(actual).any(axis=0)
    r = np.full(pred.shape[0], np.nan)
    if keep.sum() < 2:
        return r
    for block in _blocks(pred.shape[0], int(keep.sum())):
        p = pred[block][:, keep].astype(np.float64)
        a = actual[block][:, keep].astype(np.float64)
        rows_ok = np.isfinite(p).all(axis=1) & np.isfinite(a).all(axis=1)
        r_block = np.full(p.shape[0], np.nan)
        r_block[rows_ok] = _correlate_columns(p[rows_ok].T, a[rows_ok].T)
        r[block] = r_block
    return r


def mean_r(r) -> float:
    """Mean of the finite entries of ``r``.

    Parameters
    ----------
    r : array of shape (n_voxels,)

    Returns
    -------
    float
        NaN if no entry is finite.
    """
    r = np.asarray(r, dtype=np.float64)
    finite = np.isfinite(r)
    return float(r[finite].mean()) if finite.any() else float("nan")


def roi_summary(r, roi_masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean per-voxel score inside each ROI.

    Only the given masks are summarised; add a whole-cortex or "rest" mask yourself if
    you want one.

    Parameters
    ----------
    r : array of shape (n_voxels,)
        Per-voxel score (e.g. from :func:`pearson_r`).
    roi_masks : dict of str -> bool array of shape (n_voxels,)
        Named voxel masks.

    Returns
    -------
    dict of str -> float
        Mean of the finite scores in each ROI; NaN for an ROI with no finite voxel.
    """
    r = np.asarray(r, dtype=np.float64)
    summary = {}
    for name, mask in roi_masks.items():
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != r.shape:
            raise ValueError(
                f"ROI mask {name!r} must be a bool array of shape {r.shape}; "
                f"got dtype {mask.dtype}, shape {mask.shape}"
            )
        summary[name] = mean_r(r[mask])
    return summary


def _signal_and_total_variance(repeats) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-voxel signal variance and mean single-repeat variance (see explainable_variance).

    Returns
    -------
    signal_var, total_var : arrays of shape (n_voxels,)
        NaN for voxels with a NaN in any repeat.
    n_repeats : int
    """
    repeats = np.asarray(repeats)
    if repeats.ndim != 3:
        raise ValueError(
            f"repeats must have shape (n_repeats, n_trs, n_voxels); got shape {repeats.shape}"
        )
    n_repeats, n_trs, n_voxels = repeats.shape
    if n_repeats < 2 or n_trs < 2:
        raise ValueError(
            f"a noise ceiling needs at least 2 repeats of at least 2 TRs; got shape {repeats.shape}"
        )
    signal_var = np.empty(n_voxels)
    total_var = np.empty(n_voxels)
    for block in _blocks(n_voxels, n_repeats * n_trs):
        values = repeats[..., block].astype(np.float64)
        total = values.var(axis=1, ddof=1).mean(axis=0)
        mean_var = values.mean(axis=0).var(axis=0, ddof=1)
        signal = (n_repeats * mean_var - total) / (n_repeats - 1)
        # NaN propagates through var/mean already; inf must not pose as a ceiling.
        bad = ~np.isfinite(values).all(axis=(0, 1))
        signal[bad] = np.nan
        total[bad] = np.nan
        signal_var[block], total_var[block] = signal, total
    return signal_var, total_var, n_repeats


def explainable_variance(repeats) -> np.ndarray:
    """Per-voxel explainable variance from repeated presentations of one story.

    Model each repeat ``i`` of a voxel as ``x_i(t) = s(t) + e_i(t)``: a signal ``s``
    common to all repeats plus independent noise of variance ``noise_var``. With ``n``
    repeats, and variances taken over time (ddof=1)::

        total_var  = mean_i var_t(x_i)            ~ signal_var + noise_var
        mean_var   = var_t(mean_i x_i)            ~ signal_var + noise_var / n
        signal_var = (n * mean_var - total_var) / (n - 1)
        EV         = signal_var / total_var

    (Sahani & Linden 2003). ``EV`` is the fraction of a single repeat's variance that
    any stimulus-driven model could explain. It is not clipped here: a negative value
    means the voxel's repeats share no detectable signal.

    Parameters
    ----------
    repeats : array of shape (n_repeats, n_trs, n_voxels)
        Responses to the same story, ``n_repeats >= 2``.

    Returns
    -------
    ev : array of shape (n_voxels,)
        At most 1. NaN for voxels with a NaN in any repeat or no variance at all.
    """
    signal_var, total_var, _ = _signal_and_total_variance(repeats)
    with np.errstate(invalid="ignore", divide="ignore"):
        ev = signal_var / total_var
    ev[~(total_var > 0)] = np.nan
    return ev


def noise_ceiling(repeats, against: str = "mean") -> np.ndarray:
    """Per-voxel noise ceiling: the correlation a perfect model can expect.

    With ``signal_var``, ``total_var`` and ``n`` as in :func:`explainable_variance`,
    ``signal_var`` clipped at 0 and ``noise_var = total_var - signal_var``:

    ``against="mean"`` (evaluating against the average of the ``n`` repeats, as the
    reference evaluation does)::

        ceiling = sqrt(signal_var / (signal_var + noise_var / n))

    ``against="single"`` (evaluating against one repeat)::

        ceiling = sqrt(signal_var / total_var) = sqrt(clip(EV, 0, 1))

    Both are the correlation between the noiseless signal ``s`` and the response a
    model is scored against, i.e. the expected Pearson r of a perfect prediction.

    Parameters
    ----------
    repeats : array of shape (n_repeats, n_trs, n_voxels)
        Responses to the same story, ``n_repeats >= 2``.
    against : {"mean", "single"}
        What the model's predictions will be correlated with.

    Returns
    -------
    ceiling : array of shape (n_voxels,)
        In [0, 1]; 0 where no signal is detectable; NaN for voxels with a NaN in any
        repeat or no variance at all.
    """
    if against not in ("mean", "single"):
        raise ValueError(f"against must be 'mean' or 'single'; got {against!r}")
    signal_var, total_var, n_repeats = _signal_and_total_variance(repeats)
    signal_var = np.clip(signal_var, 0.0, None)
    noise_var = total_var - signal_var
    scored_var = signal_var + noise_var / n_repeats if against == "mean" else total_var
    with np.errstate(invalid="ignore", divide="ignore"):
        ceiling = np.sqrt(np.clip(signal_var / scored_var, 0.0, 1.0))
    ceiling[~(total_var > 0)] = np.nan
    return ceiling


def ceiling_fraction(r, ceiling) -> np.ndarray:
    """Per-voxel fraction of the noise ceiling reached, ``r / ceiling``.

    Parameters
    ----------
    r : array of shape (n_voxels,)
        Per-voxel Pearson r of a model.
    ceiling : array of shape (n_voxels,)
        Noise ceiling from :func:`noise_ceiling` (same ``against`` as ``r`` was scored).

    Returns
    -------
    fraction : array of shape (n_voxels,)
        NaN where ``ceiling <= 0.05`` (no explainable signal: the ratio would be noise)
        or where either input is NaN.
    """
    r = np.asarray(r, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    fraction = np.full(np.broadcast_shapes(r.shape, ceiling.shape), np.nan)
    ok = np.isfinite(r) & (ceiling > MIN_CEILING)
    fraction[ok] = r[ok] / ceiling[ok]
    return fraction


def mean_ceiling_fraction(r, ceiling, mask=None) -> float:
    """Fraction of ceiling for a set of voxels: ``mean(r) / mean(ceiling)``.

    Both means run over the same voxels: those in ``mask`` where ``r`` and ``ceiling``
    are both finite. This ratio of means (not the mean of per-voxel ratios) keeps
    low-ceiling voxels from dominating the summary.

    Parameters
    ----------
    r : array of shape (n_voxels,)
        Per-voxel Pearson r of a model.
    ceiling : array of shape (n_voxels,)
        Noise ceiling from :func:`noise_ceiling`.
    mask : bool array of shape (n_voxels,), optional
        Voxels to summarise (e.g. an ROI); all voxels if None.

    Returns
    -------
    float
        NaN if no voxel qualifies or the mean ceiling is not positive.
    """
    r = np.asarray(r, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    if r.shape != ceiling.shape:
        raise ValueError(f"r and ceiling must have the same shape; got {r.shape} and {ceiling.shape}")
    ok = np.isfinite(r) & np.isfinite(ceiling)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != r.shape:
            raise ValueError(f"mask must be a bool array of shape {r.shape}; got {mask.dtype}, {mask.shape}")
        ok &= mask
    if not ok.any():
        return float("nan")
    mean_ceiling = ceiling[ok].mean()
    return float(r[ok].mean() / mean_ceiling) if mean_ceiling > 0 else float("nan")
