"""Training losses and ROI weighting.

How ROI weights enter
---------------------
``roi_weights`` maps ROI names of the subject's mask file to non-negative weights; the
key ``rest`` stands for every voxel in none of the *named* ROIs. Each voxel gets one
weight :math:`w_v`:

- ``{}`` (the default): every voxel 1 (whole cortex);
- otherwise, the largest weight among the named ROIs that contain the voxel, or the
  ``rest`` weight (0 when ``rest`` is not given) for a voxel in none of them.

So ``{AC: 1}`` is AC-only, ``{left: 1}`` left-hemisphere-only, ``{AC: 1, rest: 0.25}``
weights AC four times the rest. NaN voxels get weight 0. Voxels of weight 0 are not
predicted at all (the readout has no output for them), as in ROI fine-tuning.

The weights enter the losses (``pred``, ``target`` of shape (n_trs, n_voxels), ``w`` of
shape (n_voxels,)) as:

- ``spatial`` (default, BRIEF): per TR, the *weighted* Pearson correlation across voxels,
  ``r_t = cov_w(p_t, y_t) / sqrt(var_w(p_t) var_w(y_t))`` with weighted means and
  (co)variances ``sum_v w_v (.)  / sum_v w_v``; loss ``-mean_t r_t``;
- ``temporal``: per voxel, Pearson r over the block's TRs; loss ``-sum_v w_v r_v / sum_v w_v``;
- ``mse``: ``sum_v w_v mean_t (p - y)^2 / sum_v w_v``.
"""

from __future__ import annotations

import numpy as np
import torch

from core.errors import ConfigError

LOSSES = ("spatial", "temporal", "mse")
EPS = 1e-8


def voxel_weights(roi_weights: dict[str, float], roi_masks: dict[str, np.ndarray], nan_voxels: np.ndarray) -> np.ndarray:
    """Per-voxel loss weights from named ROI weights (see the module docstring).

    Parameters
    ----------
    roi_weights : dict ROI name -> weight (``rest`` allowed).
    roi_masks : dict ROI name -> bool array of shape (n_voxels,).
    nan_voxels : bool array of shape (n_voxels,).

    Returns
    -------
    float32 array of shape (n_voxels,)
    """
    n = len(nan_voxels)
    unknown = sorted(set(roi_weights) - set(roi_masks) - {"rest"})
    if unknown:
        raise ConfigError(f"roi_weights: no ROI named {', '.join(unknown)} (this subject has: {', '.join(sorted(roi_masks)) or 'no ROI masks'}, and 'rest')")
    if not roi_weights:
        w = np.ones(n, np.float32)
    else:
        w = np.full(n, np.nan, np.float32)
        for name, weight in roi_weights.items():
            if name == "rest":
                continue
            mask = roi_masks[name]
            w[mask] = np.fmax(w[mask], weight)
        w[np.isnan(w)] = roi_weights.get("rest", 0.0)
    w[nan_voxels] = 0.0
    if not w.any():
        raise ConfigError(f"roi_weights {roi_weights}: every voxel has weight 0")
    return w


def _weighted_corr(pred, target, w, dim):
    """Weighted Pearson correlation along ``dim``; ``w`` broadcasts against pred."""
    total = w.sum(dim=dim, keepdim=True)
    pc = pred - (w * pred).sum(dim=dim, keepdim=True) / total
    tc = target - (w * target).sum(dim=dim, keepdim=True) / total
    cov = (w * pc * tc).sum(dim=dim)
    return cov / torch.sqrt((w * pc * pc).sum(dim=dim) * (w * tc * tc).sum(dim=dim) + EPS)


def loss_fn(name: str, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The training loss (lower is better).

    Parameters
    ----------
    name : one of :data:`LOSSES`
    pred, target : tensors of shape (n_trs, n_voxels); target must be finite
    weights : tensor of shape (n_voxels,), non-negative, not all zero
    """
    pred = pred.float()
    if name == "spatial":
        return -_weighted_corr(pred, target, weights[None, :], dim=1).mean()
    if name == "temporal":
        r = _weighted_corr(pred, target, torch.ones_like(pred), dim=0)
        return -(weights * r).sum() / weights.sum()
    if name == "mse":
        return (weights * ((pred - target) ** 2).mean(dim=0)).sum() / weights.sum()
    raise ConfigError(f"loss: unknown loss {name!r} (expected one of {', '.join(LOSSES)})")
