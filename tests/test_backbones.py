"""HuBERT, wav2vec2 and Whisper backbones (issue 13): tiny models built from configs, no hub access.

Each family is loaded as its own transformers class (no weight drawn at random), our
forward pass (core.backbones.encode) is checked against transformers' hidden states and
LayerDrop, LoRA added by the trainer's own ``adapt`` changes the read-out layer and gets
gradients, and a trainer run with such a checkpoint as ``model`` trains its adapters.
Whisper's log-mel is checked against transformers' ``WhisperFeatureExtractor``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from core import backbones
from core.backbones import adapt
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.errors import ConfigError
from core.tuning.trainer import Trainer

N_LAYERS = 3
FAMILIES = {"hubert": (HubertConfig, HubertModel), "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
            "whisper": (WhisperConfig, WhisperModel)}
WHISPER_SECONDS = 2.0  # the tiny Whisper's whole input (100 positions); transformers' forward takes only that


def tiny(family: str, seed: int = 0, **extra):
    """A tiny random model of ``family`` (Whisper: its encoder; the whole model with ``whole=True``)."""
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(seed)
    if family == "whisper":
        whole = extra.pop("whole", False)
        extra.pop("feat_extract_norm", None)  # no CNN
        config = WhisperConfig(d_model=32, encoder_layers=N_LAYERS, encoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=80,
                               max_source_positions=int(WHISPER_SECONDS * 50), max_target_positions=16, vocab_size=64,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, **extra)
        model = model_class(config).eval()
        return model if whole else model.encoder
    config = config_class(hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **extra)
    return model_class(config).eval()


def forward(model, x: torch.Tensor, **kwargs):
    """transformers' own forward of a tiny model on audio ``x`` (Whisper: on its feature extractor's log-mel)."""
    if backbones.is_whisper(model.config):
        extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=int(WHISPER_SECONDS),
                                            n_samples=x.shape[1], nb_max_frames=x.shape[1] // 160)
        mel = extractor(list(x.numpy()), sampling_rate=16000, return_tensors="pt").input_features
        return model(mel, **kwargs)
    return model(x, **kwargs)


def audio(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.clip(0.3 * rng.standard_normal(int(seconds * 16000)), -1, 1).astype(np.float32))


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.mark.parametrize("family,stable", [(family, stable) for family in sorted(FAMILIES) for stable in (False, True)
                                           if family != "whisper" or stable])  # Whisper is pre-LN only
def test_encode_matches_transformers(family, stable):
    extra = {} if family == "whisper" else {"do_stable_layer_norm": stable,
                                            "feat_extract_norm": "layer" if stable else "group"}
    model = tiny(family, **extra)
    seconds = WHISPER_SECONDS if family == "whisper" else 1.0
    x = torch.stack([audio(seconds, 1), audio(seconds, 2)])
    with torch.no_grad():
        expected = forward(model, x, output_hidden_states=True).hidden_states
        states = backbones.encode(model, backbones.cnn_features(model, x), N_LAYERS)
    assert len(states) == len(expected) == N_LAYERS + 1
    # For pre-LN checkpoints transformers' last hidden state has the encoder's final
    # LayerNorm applied; ours is the layer's output (as for WavLM, see test_wavlm).
    last = N_LAYERS if stable else N_LAYERS + 1
    for k in range(last):
        torch.testing.assert_close(states[k], expected[k], rtol=0, atol=1e-5)
    if family == "whisper":
        torch.testing.assert_close(model.layer_norm(states[-1]), expected[-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layerdrop_follows_transformers_including_the_first_layer(family):
    if family == "whisper":
        model = tiny(family, encoder_layerdrop=0.5, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        x = audio(WHISPER_SECONDS, 9)[None]
    else:
        model = tiny(family, layerdrop=0.5, mask_time_prob=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                     activation_dropout=0.0, feat_proj_dropout=0.0)
        x = audio(0.5, 9)[None]
    model.train()
    # Whisper's last hidden state has the encoder's final LayerNorm applied (see test_encode_matches_transformers).
    last = model.layer_norm if family == "whisper" else (lambda h: h)
    with torch.no_grad():
        cnn = backbones.cnn_features(model, x)
        first_skipped = False
        for seed in range(8):
            torch.manual_seed(seed)
            expected = forward(model, x).last_hidden_state
            torch.manual_seed(seed)
            states = backbones.encode(model, cnn, N_LAYERS)
            torch.testing.assert_close(last(states[-1]), expected, rtol=0, atol=1e-5)
            first_skipped |= torch.equal(states[1], states[0])
        assert first_skipped  # unlike WavLM, these families may drop their first layer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_changes_the_read_out_layer_and_gets_gradients(family):
    model = tiny(family)
    x = audio(0.5, 6)[None]
    with torch.no_grad():
        cnn = backbones.cnn_features(model, x)
        before = backbones.encode(model, cnn, N_LAYERS)
    trainable = adapt(model, [2], ["q_proj", "k_proj", "v_proj"], rank=4, alpha=4, dropout=0.0)
    assert len(trainable) == 6 and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # adapters start at zero: nothing changes
        assert torch.equal(backbones.encode(model, cnn, N_LAYERS)[2], before[2])
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    states = backbones.encode(model, cnn, 2)
    assert torch.equal(states[1].detach(), before[1])
    assert (states[2].detach() - before[2]).abs().max() > 1e-2
    (states[2] * torch.randn(states[2].shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 1e-4 for p in trainable)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_load_gives_the_familys_own_class_with_every_weight(family, tmp_path):
    if family == "whisper":
        tiny(family, seed=3, whole=True, encoder_layerdrop=0.1, apply_spec_augment=True).save_pretrained(tmp_path / family)
        net = backbones.load_backbone(str(tmp_path / family), layerdrop=0.0)
        # Only the encoder; its front end (the convolutions, and the fixed positions) frozen.
        assert type(net).__name__ == "WhisperEncoder" and net.layerdrop == 0.0 and not net.training
        front = [*net.conv1.parameters(), *net.conv2.parameters(), net.embed_positions.weight]
        assert not net.config.apply_spec_augment
    else:
        tiny(family, seed=3, layerdrop=0.1, mask_time_prob=0.05).save_pretrained(tmp_path / family)
        net = backbones.load_backbone(str(tmp_path / family), layerdrop=0.0)
        assert type(net) is FAMILIES[family][1] and net.config.layerdrop == 0.0 and not net.training
        front = list(net.feature_extractor.parameters())
    assert all(not p.requires_grad for p in front)
    assert all(p.requires_grad for p in backbones.encoder_layers(net).parameters())
    reference = tiny(family, seed=3).state_dict()
    assert set(net.state_dict()) <= set(reference)
    for name, p in net.state_dict().items():
        assert torch.equal(p, reference[name]), name


def test_whisper_log_mel_is_the_feature_extractors():
    x = torch.stack([audio(3.0, 4), 0.01 * audio(3.0, 5)])  # a quiet row: the floor 8 below its own maximum
    extractor = WhisperFeatureExtractor(feature_size=80)  # pads to 30 s; its first 300 frames are ours
    expected = extractor(list(x.numpy()), sampling_rate=16000, return_tensors="pt").input_features[..., :300]
    ours = backbones.log_mel(x, 80)
    assert ours.shape == (2, 80, 300)
    # The padding's silence does not change the maximum, so the frames agree but for the
    # last one, whose 25-ms frame reaches into the padding in transformers' 30-s input.
    torch.testing.assert_close(ours[..., :-1], expected[..., :-1], rtol=0, atol=1e-4)


def test_whisper_windows_longer_than_its_positions_and_a_story_level_front_end_are_refused(tmp_path):
    model = tiny("whisper")
    cnn = backbones.cnn_features(model, audio(WHISPER_SECONDS + 0.5, 1)[None])
    with pytest.raises(ConfigError, match=r"125 frames is longer than Whisper's 100 positions \(30 s\)"):
        backbones.encode(model, cnn, 1)
    from core.encoding.extract import resolve_cnn_cache

    assert resolve_cnn_cache(model, "auto") is False
    with pytest.raises(ConfigError, match="cnn_cache: Whisper's front end cannot be cut from the story's"):
        resolve_cnn_cache(model, True)


def test_other_families_are_refused_in_one_line(tmp_path):
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path / "bert")  # refused from its config, before any weight is read
    with pytest.raises(ConfigError, match=r"is a 'bert' checkpoint; supported are 'wavlm', 'hubert', 'wav2vec2', 'whisper'"):
        backbones.load_backbone(str(tmp_path / "bert"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_trainer_tunes_a_family_given_as_model(family, tiny_data, tmp_path):
    """The same trainer and commands: ``model`` names the checkpoint, LoRA trains it."""
    tiny(family, seed=4, feat_extract_norm="layer", **({"whole": True} if family == "whisper" else {})
         ).save_pretrained(tmp_path / family)
    config = TrainConfig(model=str(tmp_path / family), readout_layer=2, lora_layers=[2], epochs=1, block_trs=35,
                         bottleneck=8, lr=1e-2, context=0.75, chunk=0.25, stride=1.0, device="cpu")
    trainer = Trainer(config, Dataset(tiny_data), "UTS01", tmp_path / "run")
    start = {n: p.detach().clone() for n, p in trainer.model.wavlm.named_parameters() if p.requires_grad}
    summary = trainer.fit()
    moved = [n for n, p in trainer.model.wavlm.named_parameters() if p.requires_grad and not torch.equal(p, start[n])]
    attention = "self_attn" if family == "whisper" else "attention"
    assert moved and all(f"layers.1.{attention}" in n and "lora_" in n for n in moved)
    assert [h["epoch"] for h in summary["history"]] == [0, 1] and summary["model"] == str(tmp_path / family)
    assert np.isfinite(summary["tuned"]["mean_r"])
