"""HuBERT and wav2vec2 backbones (issue 13): tiny models built from configs, no hub access.

Each family is loaded as its own transformers class (no weight drawn at random), our
forward pass (core.wavlm.encode) is checked against transformers' hidden states and
LayerDrop, LoRA added by the trainer's own ``adapt`` changes the read-out layer and gets
gradients, and a trainer run with such a checkpoint as ``model`` trains its adapters.
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
)

from core import wavlm
from core.config import TrainConfig
from core.dataset import Dataset
from core.errors import ConfigError
from core.model import adapt
from core.trainer import Trainer

N_LAYERS = 3
FAMILIES = {"hubert": (HubertConfig, HubertModel), "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}


def tiny(family: str, seed: int = 0, **extra):
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_class(hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **extra)
    return model_class(config).eval()


def audio(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.clip(0.3 * rng.standard_normal(int(seconds * 16000)), -1, 1).astype(np.float32))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("stable", [False, True], ids=["post_ln", "stable_ln"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_encode_matches_transformers(family, stable):
    extra = {"do_stable_layer_norm": stable, "feat_extract_norm": "layer" if stable else "group"}
    model = tiny(family, **extra)
    x = torch.stack([audio(1.0, 1), audio(1.0, 2)])
    with torch.no_grad():
        expected = model(x, output_hidden_states=True).hidden_states
        states = wavlm.encode(model, wavlm.cnn_features(model, x), N_LAYERS)
    assert len(states) == len(expected) == N_LAYERS + 1
    # For pre-LN checkpoints transformers' last hidden state has the encoder's final
    # LayerNorm applied; ours is the layer's output (as for WavLM, see test_wavlm).
    last = N_LAYERS if stable else N_LAYERS + 1
    for k in range(last):
        torch.testing.assert_close(states[k], expected[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layerdrop_follows_transformers_including_the_first_layer(family):
    model = tiny(family, layerdrop=0.5, mask_time_prob=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                 activation_dropout=0.0, feat_proj_dropout=0.0).train()
    x = audio(0.5, 9)[None]
    with torch.no_grad():
        cnn = wavlm.cnn_features(model, x)
        first_skipped = False
        for seed in range(8):
            torch.manual_seed(seed)
            expected = model(x).last_hidden_state
            torch.manual_seed(seed)
            states = wavlm.encode(model, cnn, N_LAYERS)
            torch.testing.assert_close(states[-1], expected, rtol=0, atol=1e-5)
            first_skipped |= torch.equal(states[1], states[0])
        assert first_skipped  # unlike WavLM, these families may drop their first layer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_changes_the_read_out_layer_and_gets_gradients(family):
    model = tiny(family)
    x = audio(0.5, 6)[None]
    with torch.no_grad():
        cnn = wavlm.cnn_features(model, x)
        before = wavlm.encode(model, cnn, N_LAYERS)
    trainable = adapt(model, [2], ["q_proj", "k_proj", "v_proj"], rank=4, alpha=4, dropout=0.0)
    assert len(trainable) == 6 and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # adapters start at zero: nothing changes
        assert torch.equal(wavlm.encode(model, cnn, N_LAYERS)[2], before[2])
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    states = wavlm.encode(model, cnn, 2)
    assert torch.equal(states[1].detach(), before[1])
    assert (states[2].detach() - before[2]).abs().max() > 1e-2
    (states[2] * torch.randn(states[2].shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 1e-4 for p in trainable)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_load_gives_the_familys_own_class_with_every_weight(family, tmp_path):
    tiny(family, seed=3, layerdrop=0.1, mask_time_prob=0.05).save_pretrained(tmp_path / family)
    net = wavlm.load_wavlm(str(tmp_path / family), layerdrop=0.0)
    assert type(net) is FAMILIES[family][1] and net.config.layerdrop == 0.0 and not net.training
    assert all(not p.requires_grad for p in net.feature_extractor.parameters())
    reference = tiny(family, seed=3).state_dict()
    assert set(net.state_dict()) <= set(reference)
    for name, p in net.state_dict().items():
        assert torch.equal(p, reference[name]), name


def test_whisper_is_refused_in_one_line(tmp_path):
    WhisperConfig().save_pretrained(tmp_path / "whisper")  # refused from its config, before any weight is read
    with pytest.raises(ConfigError, match=r"is a 'whisper' checkpoint; supported are 'wavlm', 'hubert', 'wav2vec2'"):
        wavlm.load_wavlm(str(tmp_path / "whisper"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_trainer_tunes_a_family_given_as_model(family, tiny_data, tmp_path):
    """The same trainer and commands: ``model`` names the checkpoint, LoRA trains it."""
    tiny(family, seed=4, feat_extract_norm="layer").save_pretrained(tmp_path / family)
    config = TrainConfig(model=str(tmp_path / family), readout_layer=2, lora_layers=[2], epochs=1, block_trs=35,
                         bottleneck=8, lr=1e-2, context=0.75, chunk=0.25, stride=1.0, device="cpu")
    trainer = Trainer(config, Dataset(tiny_data), "UTS01", tmp_path / "run")
    start = {n: p.detach().clone() for n, p in trainer.model.wavlm.named_parameters() if p.requires_grad}
    summary = trainer.fit()
    moved = [n for n, p in trainer.model.wavlm.named_parameters() if p.requires_grad and not torch.equal(p, start[n])]
    assert moved and all("layers.1.attention" in n and "lora_" in n for n in moved)
    assert [h["epoch"] for h in summary["history"]] == [0, 1] and summary["model"] == str(tmp_path / family)
    assert np.isfinite(summary["tuned"]["mean_r"])
