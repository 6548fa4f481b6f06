"""Where the readout starts (core.tuning.readout_init) and the readout_refit setting, on the tiny dataset."""

from __future__ import annotations

import numpy as np

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.evaluation import ridge_evaluation
from core.tuning.model import ridge_as_linear
from core.tuning.readout_init import whitened_ridge_map, whitening
from core.tuning.trainer import Trainer


def test_whitening_gives_unit_covariance():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) * [1, 10, 100, 1, 1, 1] + 5
    mean, std, P = whitening(X, shrinkage=1e-9)
    Z = ((X - mean) / std) @ P
    np.testing.assert_allclose(Z.T @ Z / len(Z), np.eye(6), atol=1e-4)


def test_whitened_ridge_map_is_the_whitened_ridge_folded_into_the_features(tiny_data):
    # The folded map on the raw features predicts what the ridge fitted on whitened features does.
    dataset = Dataset(tiny_data)
    train = dataset.split("UTS01").train
    rng = np.random.default_rng(1)
    features = {s: (rng.standard_normal((dataset.n_trs("UTS01", s), 12)) * np.arange(1, 13)).astype(np.float32)
                for s in train}
    outputs = np.array([0, 5, 7])
    weight, bias = whitened_ridge_map(features, dataset, "UTS01", train, outputs, shrinkage=0.1)
    X = np.concatenate([features[s] for s in train]).astype(np.float64)
    mean, std, P = whitening(X, 0.1)
    fit, _ = ridge_evaluation({s: (((features[s] - mean) / std) @ P).astype(np.float32) for s in train},
                              dataset, "UTS01", train, {})
    w, b = ridge_as_linear(fit, outputs)
    np.testing.assert_allclose(X @ weight + bias, ((X - mean) / std) @ P @ w + b, rtol=1e-3, atol=1e-4)


def test_refit_sets_the_readout_from_every_epochs_ridge(tiny_data, tmp_path):
    # Adapters held (lr 0) and the normalisation statistics all but fixed, so every epoch's
    # ridge map is epoch 0's: with readout_refit the readout trained in epoch 1 is replaced
    # by that map again, and scores as at epoch 0 (without it, it moves).
    config = TrainConfig(readout_layer=3, lora_layers=[3], lr=0.0, readout_lr=1e-2, epochs=1, block_trs=35,
                         bottleneck=8, lora_dropout=0.0, context=0.75, stride=1.0, device="cpu",
                         norm_momentum=1e-9, readout_refit="epoch")
    history = Trainer(config, Dataset(tiny_data), "UTS01", tmp_path).fit()["history"]
    moved = history[1]["val_readout_r"] - history[0]["val_readout_r"]
    assert abs(moved) < 1e-5, f"the readout's validation r moved by {moved:.2e} in epoch 1"


def test_refit_steps_sets_the_readout_again_within_the_epoch(small_data, tmp_path, one_thread):
    # Adapters held (lr 0), so every refit gives epoch 0's ridge map again, and AdamW's moments
    # are dropped with it: each step after a refit moves every readout weight by at most
    # readout_lr (Adam's first step). Refitting after every step, the epoch's end is one
    # step away from the map; without it, several steps (the refit after the epoch hides this).
    moved = {}
    for every in (0, 1):
        config = TrainConfig(readout_layer=3, lora_layers=[3], lr=0.0, readout_lr=1e-3, epochs=1, block_trs=15,
                             bottleneck=8, lora_dropout=0.0, context=0.75, stride=1.0, device="cpu",
                             norm_momentum=1e-9, readout_refit="epoch", readout_refit_steps=every)
        trainer = Trainer(config, Dataset(small_data), "UTS01", tmp_path / str(every))
        trainer._run_epoch(0, train_loss=float("nan"), started=0.0)  # the readout starts as epoch 0's ridge map
        start = [p.detach().clone() for p in trainer.model.readout.parameters()]
        trainer._train_epoch(1)
        moved[every] = max(float((p - p0).abs().max()) for p, p0 in zip(trainer.model.readout.parameters(), start))
    assert moved[1] <= 1.01e-3, f"refitting after every step, the readout moved {moved[1]:.2e} (> one step)"
    assert moved[0] > 1.5e-3, f"without refits the readout moved only {moved[0]:.2e}: the test cannot tell"
