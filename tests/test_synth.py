"""The planted-teacher dataset: layout, determinism, and the two properties that make it a test."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from core import synth
from core.dataset import Dataset
from core.errors import DataError
from core.evaluation import ridge_evaluation
from core.extract import FrozenFeatures
from core.wavlm import cnn_features, encode

from conftest import SMALL


def test_layout_is_read_by_the_dataset_loader(tiny_data):
    data = Dataset(tiny_data)
    spec = synth.SIZES["tiny"]
    assert data.subjects == list(spec.subjects)
    for subject in data.subjects:
        data.validate(subject)
        split = data.split(subject)
        assert split.test == ("wheretheressmoke",)
        assert len(split.train) == spec.n_train_stories
        assert data.n_voxels(subject) == spec.n_voxels
        assert data.repeats(subject, "wheretheressmoke").shape[0] == spec.n_repeats
        masks = data.roi_masks(subject)
        assert set(masks) == {"AC", "left", "right"}
        assert not (masks["left"] & masks["right"]).any()
        nan = data.nan_voxels(subject)
        assert 0 < nan.sum() < 0.1 * spec.n_voxels
    assert len(data.words("avatar")) > 50 and len(data.phones("avatar")) > len(data.words("avatar"))
    truth = json.loads((tiny_data / "truth" / "truth.json").read_text())
    assert truth["spec"]["planted_layers"] == [3]


def test_generation_is_deterministic_and_reused(tmp_path):
    a = synth.generate(tmp_path / "a", SMALL, progress=lambda m: None)
    b = synth.generate(tmp_path / "b", SMALL, progress=lambda m: None)
    assert (a / "stimuli/avatar.wav").read_bytes() == (b / "stimuli/avatar.wav").read_bytes()
    da, db = Dataset(a), Dataset(b)
    for story in ("avatar", "wheretheressmoke"):
        np.testing.assert_array_equal(da.responses("UTS02", story), db.responses("UTS02", story))
    np.testing.assert_array_equal(da.repeats("UTS02", "wheretheressmoke"), db.repeats("UTS02", "wheretheressmoke"))
    messages = []
    synth.generate(a, SMALL, progress=messages.append)
    assert "already" in messages[0]
    with pytest.raises(DataError, match="--force"):
        synth.generate(a, replace(SMALL, seed=1), progress=lambda m: None)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_subject", fail)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(tmp_path / "d", SMALL, progress=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def _layer_correlation(model, layer: int) -> float:
    audio = torch.from_numpy(synth.speechlike_audio(4.0, np.random.default_rng(0))[0])[None]
    with torch.no_grad():
        states = encode(model, cnn_features(model, audio), layer)
    return float(np.corrcoef(states[0].flatten(), states[layer].flatten())[0, 1])


def test_redrawn_weights_make_layers_differ():
    """BRIEF section 4: default init (std 0.02) is nearly the identity through the layers."""
    from transformers import WavLMModel

    torch.manual_seed(0)
    default = WavLMModel(synth.wavlm_config(synth.SIZES["tiny"])).eval()
    redrawn = synth.make_pretrained(synth.SIZES["tiny"])
    assert _layer_correlation(default, 4) > 0.99
    assert _layer_correlation(redrawn, 4) < 0.5


def test_frozen_ridge_falls_short_of_teacher_ridge_on_planted_voxels(tiny_data):
    """The headroom brain-tuning must close exists, and only where the change was planted."""
    data = Dataset(tiny_data)
    split = data.split("UTS01")
    with h5py.File(tiny_data / "truth" / "UTS01.hf5") as f:
        group = f["group"][:]
    high = group == synth.GROUPS.index("high")
    ac = group == synth.GROUPS.index("AC")
    r = {}
    for name, model in [("frozen", tiny_data / "pretrained"), ("teacher", tiny_data / "truth" / "teacher")]:
        extractor = FrozenFeatures(str(model))
        for layer in (1, 3):
            result = ridge_evaluation(lambda s: extractor.tr_features(data, "UTS01", s, layer), data, "UTS01",
                                      split.train, split.test)
            r[name, layer] = (np.nanmean(result.r[high]), np.nanmean(result.r[ac]))
    # Low-layer features are untouched by the planted change; AC voxels are explained alike.
    assert r["frozen", 1][1] == pytest.approx(r["teacher", 1][1], abs=1e-6)
    assert r["frozen", 1][1] > 0.85
    # The planted change leaves a clear gap on the high voxels.
    assert r["teacher", 3][0] - r["frozen", 3][0] > 0.1
    assert r["teacher", 3][0] > 0.8
