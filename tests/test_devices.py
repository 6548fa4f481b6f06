"""The GPU path on the CPU: the device of every tensor, the RNG state of each GPU and rank, and the precision
of evaluation features (issue 19). The ``meta`` device stands for a GPU: a CPU tensor mixed with it raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import TrainConfig
from core.dataset import Dataset
from core.trainer import Trainer

FAST = dict(readout_layer=3, lora_layers=[3], epochs=1, bottleneck=8, device="cpu")


def test_frozen_layers_are_mixed_on_the_model_device(small_data, tmp_path):
    """Epoch 0 (and transfer) with several read-out layers: the frozen features meet ``layer_logits`` on its device."""
    trainer = Trainer(TrainConfig(**{**FAST, "readout_layers": [2, 3]}), Dataset(small_data), "UTS01", tmp_path)
    frozen = trainer.frozen_features()
    story = trainer.split.train[0]
    expected = trainer.window_vectors([story], frozen)[story]
    # The read-out head on ``meta`` stands for a GPU (the backbone does not run on this path).
    trainer.model.norm.to("meta")
    trainer.model.layer_logits = torch.nn.Parameter(trainer.model.layer_logits.detach().to("meta"))
    mix = trainer.model.mix_layers
    mixed_on = []

    def mix_on_meta(vectors):
        mixed_on.append(mix(vectors).device)  # raises where a vector is not on the model's device
        return torch.zeros(expected.shape)  # a meta tensor holds no data to copy back

    trainer.model.mix_layers = mix_on_meta
    assert trainer.window_vectors([story], frozen)[story].shape == expected.shape
    assert mixed_on == [torch.device("meta")]


def test_evaluation_features_have_one_precision_at_every_epoch(small_data, tmp_path, monkeypatch):
    """bf16 trains, but epoch 0's features (the frozen model's) and a later epoch's (the current model's)
    are computed at one precision: before training the two are the same model, so they must agree."""
    monkeypatch.setenv("BRAINSWEEP_CACHE", str(tmp_path / "cache"))  # epoch 0's features computed, not read
    trainer = Trainer(TrainConfig(**{**FAST, "precision": "bf16"}), Dataset(small_data), "UTS01", tmp_path / "run")
    story = trainer.split.val[0]
    autocast = []  # whether bf16 autocast was on, at each call of a backbone projection
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: autocast.append(torch.is_autocast_enabled("cpu"))
        if isinstance(module, torch.nn.Linear) else None)
    try:
        baseline = trainer.window_vectors([story], trainer.frozen_features())[story]
        at_epoch0 = set(autocast)
        autocast.clear()
        tuned = trainer.window_vectors([story])[story]
    finally:
        hook.remove()
    assert at_epoch0 == set(autocast) == {False}
    assert tuned.dtype == baseline.dtype == torch.float32
    torch.testing.assert_close(tuned, baseline, rtol=1e-4, atol=1e-5)
