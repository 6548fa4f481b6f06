"""The planted-teacher dataset: layout, determinism, and the two properties that make it a test."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import gamma

from core import synthetic as synth
from core.backbones import cnn_features, encode
from core.data.dataset import Dataset
from core.encoding.evaluation import ridge_evaluation
from core.encoding.extract import FrozenFeatures
from core.encoding.features import WindowSpec
from core.errors import ConfigError, DataError
from core.synthetic import writing

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
        assert set(masks) == {"AC", "left", "right", "planted"}
        assert not (masks["left"] & masks["right"]).any()
        with h5py.File(tiny_data / "truth" / f"{subject}.hf5") as f:
            np.testing.assert_array_equal(masks["planted"], f["group"][:] == synth.GROUPS.index("high"))
            np.testing.assert_array_equal(masks["AC"], f["group"][:] == synth.GROUPS.index("AC"))
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

    monkeypatch.setattr(writing, "_write_subject", fail)
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


def _ridge_r(root, model: str, layer: int) -> np.ndarray:
    """UTS01's per-voxel test r of ridge on ``model``'s layer features (cached across tests)."""
    data = Dataset(root)
    split = data.split("UTS01")
    extractor = FrozenFeatures(str(root / model))
    _, evaluations = ridge_evaluation(lambda s: extractor.tr_features(data, "UTS01", s, layer), data, "UTS01",
                                      split.train, {"test": split.test})
    return evaluations["test"].r


def test_frozen_ridge_falls_short_of_teacher_ridge_on_planted_voxels(tiny_data):
    """The headroom brain-tuning must close exists, and only where the change was planted."""
    masks = Dataset(tiny_data).roi_masks("UTS01")
    high, ac = masks["planted"], masks["AC"]
    r = {}
    for name, model in [("frozen", "pretrained"), ("teacher", "truth/teacher")]:
        for layer in (1, 3):
            voxel_r = _ridge_r(tiny_data, model, layer)
            r[name, layer] = (np.nanmean(voxel_r[high]), np.nanmean(voxel_r[ac]))
    # Low-layer features are untouched by the planted change; AC voxels are explained alike.
    assert r["frozen", 1][1] == pytest.approx(r["teacher", 1][1], abs=1e-6)
    assert r["frozen", 1][1] > 0.85
    # The planted change leaves a clear gap on the high voxels.
    assert r["teacher", 3][0] - r["frozen", 3][0] > 0.1
    assert r["teacher", 3][0] > 0.8


def test_the_sweep_summary_without_the_teachers_read_out_layer_says_so(tiny_data):
    """gpu_check's paper trial: a 12-layer backbone read out at layer 9 on the 4-layer teacher's data."""
    from types import SimpleNamespace

    from sweeper.launch import summarize
    from sweeper.space import parse_spec

    spec = parse_spec({"name": "t", "data": str(tiny_data), "fixed": {"readout_layer": 9},
                       "search": {"lr": {"choice": [1e-4]}}}, "t.yaml")
    metrics = {"done_training": 1, "best_val_r": 0.5, "test_r": 0.61, "baseline_r": 0.6,
               "test_r.planted": 0.55, "baseline_r.planted": 0.5}
    result = SimpleNamespace(config={"subject": "UTS01", "settings": {"lr": 1e-4}}, metrics=metrics)
    lines = summarize([result], spec, ["UTS01"], data=tiny_data).splitlines()
    assert lines[4] == (f"  planted voxels: frozen ridge 0.500, tuned ridge 0.550, no teacher ridge (read-out layer 9; "
                        f"the teacher, {tiny_data / 'truth/teacher'}, has {synth.SIZES['tiny'].num_layers} layers)")
    assert lines[5].startswith("  LoRA layers ranked by best_val_r: [1, 2, 3, 4, 5, 6, 7, 8, 9] 0.500; planted:")


def test_hrf_response_model_is_used_and_keeps_the_gap(tiny_data, tmp_path):
    """TR averaging + canonical HRF, not our Lanczos + FIR: other responses from the same
    sound and teacher, and frozen ridge still falls short of teacher ridge on the planted voxels."""
    spec = replace(synth.SIZES["tiny"], response_model="hrf")
    root = synth.generate(tmp_path / "hrf", spec, progress=lambda m: None)
    truth = json.loads((root / "truth" / "truth.json").read_text())
    assert truth["response_model"] == "hrf" and truth["spec"]["response_model"] == "hrf"
    assert truth["hrf"] == pytest.approx(synth.canonical_hrf().tolist()) and "hrf_fir" not in truth
    # SPM's double gamma from scipy (peak at 5 s, undershoot of a sixth at 15 s) at ds003020's TR, summing to 1.
    assert truth["tr"] == 2.0045
    t = np.arange(0.0, 32.0, truth["tr"])
    spm = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6
    assert truth["hrf"] == pytest.approx((spm / spm.sum()).tolist(), abs=1e-12)
    assert (root / "stimuli/avatar.wav").read_bytes() == (tiny_data / "stimuli/avatar.wav").read_bytes()
    fir, hrf = Dataset(tiny_data).responses("UTS01", "avatar"), Dataset(root).responses("UTS01", "avatar")
    planted = Dataset(root).roi_masks("UTS01")["planted"] & np.isfinite(hrf).all(0)
    same = [np.corrcoef(fir[:, v], hrf[:, v])[0, 1] for v in np.flatnonzero(planted)]
    assert np.mean(same) < 0.9  # related (same features, same readout) but not the same responses
    frozen, teacher = (np.nanmean(_ridge_r(root, model, 3)[planted]) for model in ("pretrained", "truth/teacher"))
    assert teacher - frozen > 0.05
    with pytest.raises(ConfigError, match="response_model"):
        replace(spec, response_model="gamma")


def test_a_real_checkpoint_and_speech_clips_make_a_planted_dataset(tmp_path):
    """``pretrained`` (here a tiny Whisper, as the real tiny.en would be) and ``speech`` (wav clips)."""
    from transformers import WhisperConfig, WhisperModel

    from core.data.audio import read_wav, write_wav

    torch.manual_seed(0)
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=100,
                               max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               decoder_start_token_id=1)).save_pretrained(tmp_path / "whisper")
    rng = np.random.default_rng(0)
    clips = [synth.speechlike_audio(seconds, rng)[0] for seconds in (1.5, 2.5, 3.0)]
    for i, clip in enumerate(clips):
        write_wav(tmp_path / "speech" / f"clip{i}.wav", clip)
    clips = [read_wav(tmp_path / "speech" / f"clip{i}.wav")[0] for i in range(3)]  # as stored (16-bit)
    spec = replace(synth.SIZES["tiny"], n_train_stories=2, train_trs=20, val_trs=12, test_trs=12, n_voxels=40,
                   planted_layers=(2,), high_layer=2, pretrained=str(tmp_path / "whisper"), speech=str(tmp_path / "speech"),
                   window=WindowSpec(context=0.75, chunk=0.25, stride=1.0).as_dict())
    root = synth.generate(tmp_path / "data", spec, progress=lambda m: None)

    # The teacher is the checkpoint with the change planted in layer 2's q and v, nothing else.
    pretrained, teacher = synth.load_checkpoint(str(root / "pretrained")), synth.load_checkpoint(str(root / "truth/teacher"))
    changed = {name for name, p in teacher.state_dict().items() if not torch.equal(p, pretrained.state_dict()[name])}
    assert changed == {"encoder.layers.1.self_attn.q_proj.weight", "encoder.layers.1.self_attn.v_proj.weight"}
    # The sound is the clips, whole, in some order, with silent pauses between them.
    audio = read_wav(root / "stimuli" / "wheretheressmoke.wav")[0]
    first = next(clip for clip in clips if np.allclose(audio[:len(clip)], clip, atol=2e-4))  # 16-bit rounding
    assert not audio[len(first):len(first) + 3200].any()
    assert not (root / "derivative" / "TextGrids").exists()  # real clips have no word times
    dataset = Dataset(root)
    for subject in spec.subjects:
        dataset.validate(subject)
        responses = dataset.responses(subject, "wheretheressmoke")
        assert responses.shape == (12, 40) and np.isfinite(responses[:, ~np.isnan(responses).all(0)]).all()
