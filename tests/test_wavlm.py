"""core.backbones and core.encoding.extract on tiny WavLM models built from a config (no hub access).

Our forward pass (:func:`core.backbones.encode`) is checked against transformers' own
``WavLMModel`` outputs, and the LoRA trap of BRIEF section 5 is kept under test.
"""

from __future__ import annotations

import copy
import shutil
import time

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from peft import LoraConfig, inject_adapter_in_model
from transformers import WavLMConfig, WavLMForCTC, WavLMModel

from core import backbones
from core.data.dataset import Dataset, write_respdict, write_responses, write_wav
import core.encoding.extract as extract
from core.errors import ConfigError
from core.encoding.extract import (
    FrozenFeatures,
    StoryWindows,
    all_window_features,
    model_fingerprint,
    story_cnn,
    window_vectors,
)
from core.encoding.features import WindowSpec, window_end_times

SAMPLE_RATE = 16000
N_LAYERS = 3
HIDDEN = 32
LORA_LAYER = 1  # 0-based index into model.encoder.layers


def tiny_config(feat_extract_norm: str = "layer", do_stable_layer_norm: bool = False, **extra) -> WavLMConfig:
    return WavLMConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=do_stable_layer_norm,
        **extra,
    )


def tiny_model(seed: int = 0, **config) -> WavLMModel:
    torch.manual_seed(seed)
    return WavLMModel(tiny_config(**config)).eval()


def random_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise in [-1, 1], float32 of shape (n_samples,)."""
    rng = np.random.default_rng(seed)
    return np.clip(0.3 * rng.standard_normal(int(seconds * SAMPLE_RATE)), -1, 1).astype(np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny checkpoint folder with the layerdrop and masking that real checkpoints ship."""
    path = tmp_path_factory.mktemp("tiny_wavlm")
    tiny_model(seed=5, layerdrop=0.1, mask_time_prob=0.05).save_pretrained(path)
    return path


# ---- our forward pass against transformers' -------------------------------------------


@pytest.mark.parametrize("stable", [False, True], ids=["post_ln", "stable_ln"])
@pytest.mark.parametrize("norm", ["layer", "group"])
def test_encode_matches_transformers(norm, stable):
    model = tiny_model(feat_extract_norm=norm, do_stable_layer_norm=stable)
    x = torch.from_numpy(np.stack([random_audio(1.0, 1), random_audio(1.0, 2)]))
    with torch.no_grad():
        expected = model(x, output_hidden_states=True).hidden_states
        cnn = backbones.cnn_features(model, x)
        for n_layers in range(N_LAYERS + 1):
            states = backbones.encode(model, cnn, n_layers)
            assert len(states) == n_layers + 1
            for k, state in enumerate(states):
                torch.testing.assert_close(state, expected[k], rtol=0, atol=1e-5)


def test_encode_runs_only_the_layers_it_needs():
    model = tiny_model()
    ran = []
    for i, layer in enumerate(model.encoder.layers):
        # encode() calls the layers' submodules, not the layer modules: hook those.
        layer.attention.q_proj.register_forward_hook(lambda *_, i=i: ran.append(("attention", i)))
        layer.feed_forward.register_forward_hook(lambda *_, i=i: ran.append(("feed_forward", i)))
    x = torch.from_numpy(random_audio(0.5))[None]
    with torch.no_grad():
        cnn = backbones.cnn_features(model, x)
        for n_layers in range(N_LAYERS + 1):
            ran.clear()
            backbones.encode(model, cnn, n_layers)
            assert ran == [(part, i) for i in range(n_layers) for part in ("attention", "feed_forward")]


def test_encode_rejects_missing_layer():
    model = tiny_model()
    cnn = torch.zeros(1, 10, 16)
    with pytest.raises(ConfigError, match=f"{N_LAYERS} layers"):
        backbones.encode(model, cnn, N_LAYERS + 1)


def test_cnn_geometry():
    config = tiny_config()
    assert backbones.frame_hop(config) == 320
    assert backbones.receptive_field(config) == 400
    model = tiny_model()
    for n in (400, 719, 720, 16000, 64000):
        with torch.no_grad():
            frames = backbones.cnn_features(model, torch.zeros(1, n)).shape[1]
        assert backbones.conv_output_length(n, config) == frames == (n - 400) // 320 + 1


# ---- the story-level CNN cache --------------------------------------------------------


def test_cnn_slicing_is_exact_only_for_layer_norm():
    assert backbones.cnn_slicing_is_exact(tiny_config("layer"))
    assert not backbones.cnn_slicing_is_exact(tiny_config("group"))


@pytest.fixture(scope="module")
def story20():
    """20 s of noise, its windows and the padded audio tensor."""
    audio = random_audio(20.0, seed=3)
    windows = StoryWindows.for_audio(len(audio), WindowSpec())
    return windows, torch.from_numpy(windows.pad(audio))


def test_story_cnn_equals_one_pass(story20):
    windows, padded = story20
    model = tiny_model()
    with torch.no_grad():
        one_pass = backbones.cnn_features(model, padded[None])[0]
    segmented = story_cnn(model, padded, segment_frames=37)
    assert segmented.shape == one_pass.shape
    torch.testing.assert_close(segmented, one_pass, rtol=0, atol=1e-5)


def test_window_vectors_from_story_cnn_equal_per_window_cnn(story20):
    windows, padded = story20
    model = tiny_model()
    ids = np.array([0, 1, 2, 31, len(windows) - 1])  # window 0 reads the left padding
    assert windows.ends[0] < windows.spec.window_samples
    layers = [0, 1, N_LAYERS]
    with torch.no_grad():
        cached = window_vectors(model, padded, windows, ids, layers, cnn=story_cnn(model, padded))
        direct = window_vectors(model, padded, windows, ids, layers, cnn=None)
    for k in layers:
        assert cached[k].shape == (len(ids), HIDDEN)
        torch.testing.assert_close(cached[k], direct[k], rtol=0, atol=1e-5)


class Int64Outputs(TorchDispatchMode):
    """Records the size of every int64 tensor that a torch operation makes."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sizes += [t.numel() for t in torch.utils._pytree.tree_leaves(out)
                       if isinstance(t, torch.Tensor) and t.dtype == torch.int64]
        return out


def test_window_audio_is_cut_from_a_view_without_a_per_sample_index(story20, monkeypatch):
    """Without the CNN cache (base-plus), the windows' audio is the index gather's, with one index per window."""
    windows, padded = story20
    ids = np.array([0, 1, 2, 31, len(windows) - 1])
    starts = torch.from_numpy(windows.ends[ids])
    by_index = padded[starts[:, None] + torch.arange(windows.spec.window_samples)[None, :]]

    class CNNReached(Exception):
        pass

    def cnn_features(model, audio):
        raise CNNReached(audio)

    monkeypatch.setattr(backbones, "cnn_features", cnn_features)
    with pytest.raises(CNNReached) as reached, Int64Outputs() as spy:
        window_vectors(tiny_model(feat_extract_norm="group"), padded, windows, ids, [1], cnn=None)
    torch.testing.assert_close(reached.value.args[0], by_index, rtol=0, atol=0)
    assert max(spy.sizes, default=0) <= len(ids)


def test_window_vectors_from_story_cnn_differ_for_group_norm(story20):
    """Why the cache is off for "group" checkpoints: GroupNorm sees the whole input."""
    windows, padded = story20
    model = tiny_model(feat_extract_norm="group")
    ids = np.array([0, 40])
    with torch.no_grad():
        cached = window_vectors(model, padded, windows, ids, [1], cnn=story_cnn(model, padded))
        direct = window_vectors(model, padded, windows, ids, [1], cnn=None)
    assert (cached[1] - direct[1]).abs().max() > 1e-3


def test_all_window_features_times_and_shapes():
    audio = random_audio(7.3, seed=4)
    spec = WindowSpec(context=0.75, stride=0.5)
    times, feats = all_window_features(tiny_model(), audio, spec, [1, 2], batch_windows=5)
    np.testing.assert_array_equal(times, window_end_times(len(audio), spec))
    assert sorted(feats) == [1, 2]
    for v in feats.values():
        assert v.dtype == np.float32 and v.shape == (len(times), HIDDEN)


# ---- loading --------------------------------------------------------------------------


def test_load_wavlm(saved_model):
    loaded = backbones.load_backbone(str(saved_model))
    assert loaded.config.to_dict()["layerdrop"] == 0.0
    assert loaded.config.mask_time_prob == 0.0
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.feature_extractor.parameters())
    assert all(p.requires_grad for p in loaded.encoder.parameters())

    original = WavLMModel.from_pretrained(saved_model).eval()
    assert original.config.layerdrop == 0.1  # the test really starts from a layerdrop checkpoint
    x = torch.from_numpy(random_audio(1.0))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).last_hidden_state, original(x).last_hidden_state, rtol=0, atol=0)


def test_load_wavlm_missing_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match="no_such_model") as err:
        backbones.load_backbone(str(missing))
    assert str(missing) in str(err.value)


def edit_weights(src, dst, edit) -> None:
    """Copy checkpoint folder ``src`` to ``dst`` with ``edit(state_dict)`` applied to its weights."""
    shutil.copytree(src, dst)
    weights = safetensors.torch.load_file(dst / "model.safetensors")
    edit(weights)
    safetensors.torch.save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("encoder.layers.1.attention.gru_rel_pos_const"),
     r"lacks weights of the backbone: encoder\.layers\.1\.attention\.gru_rel_pos_const$"),
    (lambda w: w.update({"encoder.layers.0.attention.extra.weight": torch.zeros(2)}),
     r"has unknown weights of the backbone: encoder\.layers\.0\.attention\.extra\.weight$"),
], ids=["missing", "unknown"])
def test_load_wavlm_refuses_incomplete_checkpoint(saved_model, tmp_path, edit, message):
    edit_weights(saved_model, tmp_path / "edited", edit)
    with pytest.raises(ConfigError, match=message) as err:
        backbones.load_backbone(str(tmp_path / "edited"))
    assert str(tmp_path / "edited") in str(err.value)


def test_load_wavlm_ignores_a_task_head(tmp_path):
    """A fine-tuned CTC checkpoint carries a head (and masking weights) beyond the backbone: fine."""
    torch.manual_seed(0)
    ctc = WavLMForCTC(tiny_config(vocab_size=12, mask_time_prob=0.05)).eval()
    ctc.save_pretrained(tmp_path / "ctc")
    loaded = backbones.load_backbone(str(tmp_path / "ctc"))
    x = torch.from_numpy(random_audio(0.5))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).last_hidden_state, ctc.wavlm(x).last_hidden_state, rtol=0, atol=0)


# ---- layer drop -----------------------------------------------------------------------


def test_layerdrop_in_training_follows_transformers_and_torch_seed():
    """In training mode our encode() skips the same layers as transformers' encoder under the same seed."""
    model = tiny_model(layerdrop=0.5, mask_time_prob=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                       activation_dropout=0.0, feat_proj_dropout=0.0).train()
    x = torch.from_numpy(random_audio(0.5, seed=9))[None]
    with torch.no_grad():
        cnn = backbones.cnn_features(model, x)
        full = backbones.encode(model.eval(), cnn, N_LAYERS)[-1]
        model.train()
        patterns = set()
        for seed in range(8):
            torch.manual_seed(seed)
            expected = model(x).last_hidden_state
            torch.manual_seed(seed)
            states = backbones.encode(model, cnn, N_LAYERS)
            torch.testing.assert_close(states[-1], expected, rtol=0, atol=1e-5)
            skipped = tuple(torch.equal(states[k], states[k - 1]) for k in range(1, N_LAYERS + 1))
            assert not skipped[0]  # the first layer is never dropped
            patterns.add(skipped)
        assert len(patterns) > 1 and (False,) * N_LAYERS in patterns  # some runs drop layers, some do not

        model.eval()  # never at evaluation
        for seed in range(4):
            torch.manual_seed(seed)
            assert torch.equal(backbones.encode(model, cnn, N_LAYERS)[-1], full)


# ---- LoRA (BRIEF section 5) -----------------------------------------------------------

LORA_MODULES = ("q_proj", "k_proj", "v_proj")


def with_lora(model: WavLMModel) -> WavLMModel:
    config = LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=list(LORA_MODULES),
        layers_to_transform=[LORA_LAYER], layers_pattern="layers",
    )
    return inject_adapter_in_model(config, model)


def lora_params(model: WavLMModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def set_lora_b(model: WavLMModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora_params(model).items():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.fixture
def lora_setup():
    """(base model, adapted copy with non-zero lora_B, CNN features, base hidden states)."""
    base = tiny_model()
    x = torch.from_numpy(random_audio(0.5, seed=6))[None]
    with torch.no_grad():
        cnn = backbones.cnn_features(base, x)
        base_states = backbones.encode(base, cnn, N_LAYERS)
    adapted = with_lora(copy.deepcopy(base))
    names = lora_params(adapted)
    assert len(names) == 2 * len(LORA_MODULES)
    assert all(f"layers.{LORA_LAYER}.attention." in n for n in names)
    return base, adapted, x, cnn, base_states


def test_lora_with_zero_delta_changes_nothing(lora_setup):
    _, adapted, _, cnn, base_states = lora_setup
    for name, p in lora_params(adapted).items():  # peft's default init: B = 0, A random
        assert (p == 0).all() == ("lora_B" in name)
    with torch.no_grad():
        states = backbones.encode(adapted, cnn, N_LAYERS)
    for state, base_state in zip(states, base_states):
        assert torch.equal(state, base_state)


def test_canary_transformers_ignores_lora_adapters(lora_setup):
    """CANARY. transformers' WavLMAttention never calls q/k/v_proj, so LoRA does nothing there.

    If this fails, a transformers release has fixed the trap. Our wrapper
    (core.backbones.encode) is then still correct, since it calls the same modules and is
    checked against transformers above; update this canary and BRIEF section 5, and keep
    the other LoRA tests.
    """
    base, adapted, x, _, _ = lora_setup
    set_lora_b(adapted)
    with torch.no_grad():
        expected = base(x).last_hidden_state
        actual = adapted(x).last_hidden_state
    assert torch.equal(actual, expected), (
        "CANARY: transformers' WavLMModel output now changes with a LoRA adapter on q/k/v, "
        "so the trap of BRIEF section 5 seems fixed upstream. Our wrapper core.backbones.encode "
        "is then still correct; update this canary and the BRIEF."
    )


def test_lora_changes_our_output_and_gets_gradients(lora_setup):
    _, adapted, _, cnn, base_states = lora_setup
    set_lora_b(adapted)
    states = backbones.encode(adapted, cnn, LORA_LAYER + 1)
    for k in range(LORA_LAYER + 1):  # states up to the adapted layer's input are unchanged
        assert torch.equal(states[k].detach(), base_states[k])
    out = states[LORA_LAYER + 1]
    assert (out.detach() - base_states[LORA_LAYER + 1]).abs().max() > 1e-2

    # A plain sum of a post-LN layer's output is constant (LayerNorm), so its gradient is
    # rounding noise: weight the output with a fixed random tensor instead.
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    for module in LORA_MODULES:
        for part in ("lora_A", "lora_B"):
            name = f"encoder.layers.{LORA_LAYER}.attention.{module}.{part}.default.weight"
            grad = lora_params(adapted)[name].grad
            assert grad is not None and grad.abs().max() > 1e-4, name
    assert all(p.grad is None for n, p in adapted.named_parameters() if "lora_" not in n and "layers.2." in n)


# ---- fingerprints and the feature cache -----------------------------------------------


def test_model_fingerprint():
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.encoder.layers[2].feed_forward.output_dense.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(tiny_model(seed=1))


STORY, SUBJECT = "tinystory", "UTS01"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """One 30 s story and its responses in the ds003020 layout."""
    root = tmp_path_factory.mktemp("ds")
    write_wav(root / "stimuli" / f"{STORY}.wav", random_audio(30.0, seed=7))
    n_trs = 9  # row 8 is at 27.1 s of audio
    write_responses(root / "derivative" / "preprocessed_data" / SUBJECT / f"{STORY}.hf5",
                    np.random.default_rng(8).standard_normal((n_trs, 5)))
    write_respdict(root / "derivative" / "respdict.json", {STORY: n_trs})  # a trimmed respdict
    return Dataset(root)


class Computed(Exception):
    pass


def test_frozen_features_cache(tiny_dataset, saved_model, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = FrozenFeatures(str(saved_model), cache_dir=cache_dir)
    times, feats = first.window_features(tiny_dataset, STORY, [1, 2])
    assert len(list(cache_dir.rglob("*.npz"))) == 2
    np.testing.assert_array_equal(times, window_end_times(30 * SAMPLE_RATE, WindowSpec()))
    assert feats[1].shape == feats[2].shape == (len(times), HIDDEN)

    def refuse(*args, **kwargs):
        raise Computed

    monkeypatch.setattr(extract, "all_window_features", refuse)
    second = FrozenFeatures(str(saved_model), cache_dir=cache_dir)
    times2, feats2 = second.window_features(tiny_dataset, STORY, [2, 1])
    np.testing.assert_array_equal(times2, times)
    for k in (1, 2):
        np.testing.assert_array_equal(feats2[k], feats[k])

    delayed = second.tr_features(tiny_dataset, SUBJECT, STORY, 1)
    assert delayed.shape == (len(tiny_dataset.tr_times(SUBJECT, STORY)), 4 * HIDDEN)

    with pytest.raises(Computed):
        second.window_features(tiny_dataset, STORY, [3])
    with pytest.raises(Computed):
        FrozenFeatures(str(saved_model), WindowSpec(stride=0.5), cache_dir=cache_dir).window_features(
            tiny_dataset, STORY, [1])
    assert len(list(cache_dir.rglob("*.npz"))) == 2


def test_frozen_features_cache_off_writes_nothing(tiny_dataset, saved_model, tmp_path):
    cache_dir = tmp_path / "cache"
    spec = WindowSpec(stride=1.0)
    _, feats = FrozenFeatures(str(saved_model), spec, cache_dir=cache_dir, cache=False).window_features(
        tiny_dataset, STORY, [1])
    assert not cache_dir.exists()
    _, cached = FrozenFeatures(str(saved_model), spec, cache_dir=cache_dir).window_features(tiny_dataset, STORY, [1])
    np.testing.assert_array_equal(feats[1], cached[1])


def test_an_unreachable_hub_fails_fast_with_what_to_do(monkeypatch):
    # Loopback port 9 (discard) refuses at once: the hub is unreachable, deterministically.
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        backbones.checkpoint_config("microsoft/wavlm-base-plus")
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "\n" not in message
    assert all(hint in message for hint in ("save_pretrained", "model: DIR", "HF_HOME", "HF_HUB_OFFLINE")), message


def test_a_saved_checkpoint_folder_loads_without_the_hub(monkeypatch, saved_model):
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    model = backbones.load_backbone(str(saved_model))
    assert isinstance(model, WavLMModel) and model.config.num_hidden_layers == tiny_config().num_hidden_layers
