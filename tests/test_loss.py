"""ROI weights and the training losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.encoding import metrics
from core.errors import ConfigError
from core.tuning.loss import loss_fn, voxel_weights

MASKS = {
    "AC": np.array([1, 1, 0, 0, 0, 0], bool),
    "left": np.array([1, 0, 1, 0, 1, 0], bool),
    "right": np.array([0, 1, 0, 1, 0, 1], bool),
}
NO_NAN = np.zeros(6, bool)


@pytest.mark.parametrize("weights, expected", [
    ({}, [1, 1, 1, 1, 1, 1]),
    ({"AC": 1.0}, [1, 1, 0, 0, 0, 0]),
    ({"AC": 1.0, "rest": 0.25}, [1, 1, 0.25, 0.25, 0.25, 0.25]),
    ({"left": 1.0}, [1, 0, 1, 0, 1, 0]),
    ({"AC": 2.0, "left": 0.5}, [2, 2, 0.5, 0, 0.5, 0]),  # overlap: the largest weight
    ({"rest": 1.0, "AC": 0.0}, [0, 0, 1, 1, 1, 1]),
])
def test_voxel_weights(weights, expected):
    np.testing.assert_allclose(voxel_weights(weights, MASKS, NO_NAN), expected)


def test_nan_voxels_get_no_weight_and_errors_name_the_problem():
    nan = np.array([1, 0, 0, 0, 0, 0], bool)
    assert voxel_weights({}, MASKS, nan)[0] == 0
    with pytest.raises(ConfigError, match="STG.*AC, left, right"):
        voxel_weights({"STG": 1.0}, MASKS, NO_NAN)
    with pytest.raises(ConfigError, match="weight 0"):
        voxel_weights({"AC": 0.0}, MASKS, NO_NAN)


def _data(seed=0, n_trs=12, n_voxels=30):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(n_trs, n_voxels, generator=gen, dtype=torch.float64)
    pred = target + torch.randn(n_trs, n_voxels, generator=gen, dtype=torch.float64)
    return pred, target


def test_spatial_loss_is_minus_mean_spatial_correlation():
    pred, target = _data()
    w = torch.ones(target.shape[1], dtype=torch.float64)
    expected = -metrics.spatial_r(pred.numpy(), target.numpy()).mean()
    assert loss_fn("spatial", pred, target, w).item() == pytest.approx(expected, rel=1e-5)
    # 0/1 weights are the same as leaving the zero-weight voxels out.
    w[::3] = 0
    keep = w.bool()
    sub = -metrics.spatial_r(pred[:, keep].numpy(), target[:, keep].numpy()).mean()
    assert loss_fn("spatial", pred, target, w).item() == pytest.approx(sub, rel=1e-5)


def test_temporal_and_mse_losses():
    pred, target = _data(1)
    w = torch.rand(target.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = metrics.pearson_r(pred.numpy(), target.numpy())
    expected = -(w.numpy() * r).sum() / w.numpy().sum()
    assert loss_fn("temporal", pred, target, w).item() == pytest.approx(expected, rel=1e-5)
    mse = (w.numpy() * ((pred - target) ** 2).mean(0).numpy()).sum() / w.numpy().sum()
    assert loss_fn("mse", pred, target, w).item() == pytest.approx(mse, rel=1e-5)
    with pytest.raises(ConfigError, match="huber"):
        loss_fn("huber", pred, target, w)


def test_losses_have_gradients():
    pred, target = _data(2)
    pred.requires_grad_(True)
    for name in ("spatial", "temporal", "mse"):
        pred.grad = None
        loss_fn(name, pred, target, torch.ones(target.shape[1], dtype=torch.float64)).backward()
        assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
