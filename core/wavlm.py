"""WavLM, HuBERT and wav2vec2: loading a checkpoint, and a forward pass that LoRA adapters can change.

Why our own forward pass: transformers' ``WavLMAttention`` hands ``q_proj.weight``,
``k_proj.weight`` and ``v_proj.weight`` straight to ``F.multi_head_attention_forward``,
so adapters that wrap those ``nn.Linear`` modules (peft's LoRA) are never called: no
change in the output, no gradient (BRIEF section 5). :func:`attention` computes the same
thing by *calling* the projection modules, so whatever wraps them runs. It reuses the
checkpoint's modules and weights unchanged; nothing in transformers is patched.
``tests/test_wavlm.py`` checks it against transformers' own outputs.

HuBERT and wav2vec2 (:data:`FAMILIES`) share WavLM's layout (the same CNN, feature
projection, convolutional position embedding, and layers whose attention has
``q_proj``/``k_proj``/``v_proj``/``out_proj``) without its gated relative-position bias;
the same forward runs them, with their own LayerDrop rule (transformers' HuBERT and
wav2vec2 may drop the first layer too, WavLM never does).

Whisper's encoder (``model_type`` ``whisper``; only the encoder is kept) reads a log-mel
spectrogram instead of the waveform. Its "CNN" here is the frozen front end: log-mel
(:func:`log_mel`, the feature extractor's: 25-ms Hann frames every 10 ms, Slaney mel,
log10 clipped 8 below the input's maximum) and the two convolutions, which give one
frame per 320 samples (20 ms), WavLM's frame rate. Whisper always saw 30 s of input
(shorter audio padded with silence); our windows are a few seconds, and we **cut the
positional embeddings** to the window's frames instead of padding every window to 30 s:
padding would cost 1500 frames of attention per window (about 30 s / window length
times the compute) for frames that only hold silence, and a window's own frames keep
the positions they would have at the start of a 30-s input. The price is that the
encoder never sees the trailing silence it was trained with; a window must not be
longer than 30 s (:class:`~core.errors.ConfigError`). Because the log-mel
normalisation uses the input's maximum, a window's front end is not a slice of the
story's, so the story-level cache (``cnn_cache``) is refused for Whisper.

It also stops at the read-out layer: layers above it are never computed, and it skips
the SpecAugment masking that the models' ``forward`` applies in training mode. LayerDrop
(``config.layerdrop``) works as in transformers: in training mode only.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, WavLMConfig, WavLMModel

from .errors import ConfigError


#: Supported checkpoint families: ``model_type`` -> transformers model class.
FAMILIES = {"wavlm": "WavLMModel", "hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "whisper": "WhisperModel"}

#: Whisper's log-mel: 16 kHz, 400-sample (25 ms) Hann frames every 160 samples (10 ms).
MEL_FFT, MEL_HOP = 400, 160


def checkpoint_config(model: str):
    """The checkpoint's transformers config, read without its weights; refused unless one of :data:`FAMILIES`.

    Raises
    ------
    ConfigError
        The checkpoint cannot be read, or is of another family (one line naming both).
    """
    online = hub_reachable(model)
    try:
        config = AutoConfig.from_pretrained(model, local_files_only=not online)
    except (OSError, ValueError) as err:
        if not online and not Path(model).expanduser().is_dir():
            raise ConfigError(
                f"cannot load checkpoint {model!r}: not a folder here, not in the Hugging Face cache "
                f"(HF_HOME), and the hub is unreachable or HF_HUB_OFFLINE is set. Save it on a machine "
                f"with internet (python -c \"from transformers import AutoModel; "
                f"AutoModel.from_pretrained('{model}').save_pretrained('DIR')\"), copy DIR here and pass "
                f"model: DIR, or point HF_HOME at a cache that holds it"
            ) from None
        raise ConfigError(f"cannot load checkpoint {model!r}: {str(err).splitlines()[0]}") from None
    if config.model_type not in FAMILIES:
        raise ConfigError(f"{model!r} is a {config.model_type!r} checkpoint; supported are "
                          f"{', '.join(map(repr, FAMILIES))} (e.g. microsoft/wavlm-base-plus, "
                          "facebook/hubert-base-ls960, facebook/wav2vec2-base, openai/whisper-tiny.en)")
    return config


def hub_reachable(model: str, timeout_s: float = 3.0) -> bool:
    """Whether ``model`` may be fetched from the Hugging Face hub now (a local folder never is).

    A quick TCP connect to the hub's endpoint (``HF_ENDPOINT``) decides, so an offline
    machine fails in seconds, not after huggingface_hub's retries (~30 s).
    """
    from huggingface_hub import constants

    if Path(model).expanduser().is_dir() or constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError:
        return False
    return True


def load_wavlm(model: str, *, layerdrop: float = 0.0, dropout: float = 0.0,
               dtype: torch.dtype = torch.float32) -> WavLMModel:
    """Load a WavLM, HuBERT, wav2vec2 or Whisper checkpoint (local folder or hub id) with its CNN frozen.

    Only the :data:`FAMILIES` are accepted, each loaded as its own transformers class, and
    every weight of the backbone must come from the checkpoint: a checkpoint loaded as
    another family's class would otherwise load "successfully", with the missing weights
    (e.g. WavLM's gated relative position weights) drawn at random (transformers only
    warns). Weights the checkpoint has beyond the backbone are ignored: a task head
    (``lm_head`` of a CTC model) and ``masked_spec_embed``, which we do not build because
    SpecAugment masking is off. Of a Whisper checkpoint only the encoder is returned
    (a ``WhisperEncoder``; its front end, the two convolutions, frozen); the decoder is
    loaded to check the checkpoint and then dropped.

    Parameters
    ----------
    model : str
        Anything ``from_pretrained`` accepts.
    layerdrop : float
        Probability that :func:`encode` skips a layer in training mode (WavLM: never the
        first). Set explicitly: the checkpoints ship 0.05-0.1.
    dropout : float
        The model's own dropout (attention, hidden, activation, feature projection) in
        training mode; checkpoints ship 0.1. In eval mode there is none either way.

    Raises
    ------
    ConfigError
        The checkpoint cannot be read, is of another family, or lacks (or has unknown)
        weights of the backbone.
    """
    import transformers

    model_type = checkpoint_config(model).model_type
    model_class = getattr(transformers, FAMILIES[model_type])
    if model_type == "whisper":
        settings = {"encoder_layerdrop": layerdrop, "apply_spec_augment": False,
                    **dict.fromkeys(("dropout", "attention_dropout", "activation_dropout"), dropout)}
    else:
        settings = {"layerdrop": layerdrop, "mask_time_prob": 0.0, "mask_feature_prob": 0.0,
                    **dict.fromkeys(("attention_dropout", "hidden_dropout", "activation_dropout",
                                     "feat_proj_dropout"), dropout)}
    try:
        with quiet_transformers():  # its load report and progress bar; we check the loading info below
            net, info = model_class.from_pretrained(model, dtype=dtype, output_loading_info=True,
                                                    local_files_only=not hub_reachable(model), **settings)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load {model_type} checkpoint {model!r}: {str(err).splitlines()[0]}") from None
    backbone = tuple(f"{name}." for name, _ in net.named_children())
    unexpected = [k for k in info["unexpected_keys"] if k.removeprefix(f"{net.base_model_prefix}.").startswith(backbone)]
    for kind, keys in (("lacks", info["missing_keys"]), ("has unknown", unexpected)):
        if keys:
            keys = sorted(keys)
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise ConfigError(f"{model_type} checkpoint {model!r} {kind} weights of the backbone: "
                              f"{', '.join(keys[:5])}{more}")
    if model_type == "whisper":
        net = net.encoder
        for p in [*net.conv1.parameters(), *net.conv2.parameters(), net.embed_positions.weight]:
            p.requires_grad_(False)
    else:
        net.feature_extractor._freeze_parameters()
    return net.eval()


def is_whisper(config) -> bool:
    return config.model_type == "whisper"


def encoder_layers(model) -> torch.nn.ModuleList:
    """The transformer layers of a loaded model (:func:`load_wavlm`)."""
    return model.layers if is_whisper(model.config) else model.encoder.layers


#: Our names of the projections LoRA may adapt -> their attribute paths in a layer, per kind of layer.
_TARGET_PATHS = {
    "wav": {"q_proj": "attention.q_proj", "k_proj": "attention.k_proj", "v_proj": "attention.v_proj",
            "out_proj": "attention.out_proj", "intermediate_dense": "feed_forward.intermediate_dense",
            "output_dense": "feed_forward.output_dense"},
    "whisper": {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                "out_proj": "self_attn.out_proj", "intermediate_dense": "fc1", "output_dense": "fc2"},
}


def layer_target_path(config, target: str) -> str:
    """Path of projection ``target`` (e.g. ``q_proj``, ``intermediate_dense``) inside one transformer layer.

    The feed-forward projections keep WavLM's names in our settings: for Whisper,
    ``intermediate_dense`` is ``fc1`` and ``output_dense`` is ``fc2``.
    """
    return _TARGET_PATHS["whisper" if is_whisper(config) else "wav"][target]


def target_module_name(config, layer: int, target: str) -> str:
    """Full module name of projection ``target`` of 1-based ``layer`` in a loaded model (:func:`load_wavlm`)."""
    prefix = "layers" if is_whisper(config) else "encoder.layers"
    return f"{prefix}.{layer - 1}.{layer_target_path(config, target)}"


@contextmanager
def quiet_transformers():
    """Silence transformers' logging and progress bars inside the block (restored after it)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def cnn_slicing_is_exact(config: WavLMConfig) -> bool:
    """True when a window's CNN output is exactly a slice of the whole story's.

    With ``feat_extract_norm == "layer"`` every CNN frame depends only on its own
    400-sample receptive field. With ``"group"`` (wavlm-base, base-plus) the first conv
    layer's GroupNorm normalises each channel over the whole input, so a window's output
    depends on the window's extent. Never for Whisper: its log-mel is normalised by the
    input's maximum, and its convolutions pad at the input's edges.
    """
    return not is_whisper(config) and config.feat_extract_norm == "layer"


def frame_hop(config: WavLMConfig) -> int:
    """Samples between CNN frames (product of conv strides; 320 for every WavLM, and for Whisper)."""
    if is_whisper(config):
        return MEL_HOP * 2  # the second convolution has stride 2
    hop = 1
    for s in config.conv_stride:
        hop *= s
    return hop


def conv_output_length(n_samples: int, config: WavLMConfig) -> int:
    """Number of CNN frames for ``n_samples`` of audio (no padding in the CNN; Whisper's: see :func:`log_mel`)."""
    if is_whisper(config):
        mel_frames = n_samples // MEL_HOP
        return (mel_frames - 1) // 2 + 1 if mel_frames else 0
    n = n_samples
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    return n


def receptive_field(config: WavLMConfig) -> int:
    """Samples one CNN frame sees (400 for every WavLM; for Whisper 5 mel frames, 1040 samples)."""
    if is_whisper(config):
        return 4 * MEL_HOP + MEL_FFT
    field = 1
    for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        field = (field - 1) * s + k
    return field


def cnn_features(model: WavLMModel, audio: torch.Tensor) -> torch.Tensor:
    """Frozen CNN features.

    Parameters
    ----------
    audio : tensor of shape (batch, n_samples), 16 kHz.

    Returns
    -------
    tensor of shape (batch, n_frames, conv_dim[-1]) (Whisper: (batch, n_frames, d_model),
    the log-mel through both convolutions)
    """
    if is_whisper(model.config):
        mel = log_mel(audio, model.config.num_mel_bins)
        hidden = F.gelu(model.conv2(F.gelu(model.conv1(mel.to(model.conv1.weight.dtype)))))
        return hidden.transpose(1, 2)
    return model.feature_extractor(audio).transpose(1, 2)


_MEL_FILTERS: dict[int, np.ndarray] = {}


def log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel spectrogram of each row of ``audio``, as its feature extractor computes it.

    Centred 400-sample Hann frames every 160 samples, power spectrum, Slaney-normalised
    mel filters over 0-8 kHz, ``log10`` floored at 1e-10, then clipped to 8 below the
    input's maximum and mapped by ``(x + 4) / 4``; the last frame is dropped, so
    ``n_samples // 160`` frames.

    Parameters
    ----------
    audio : tensor of shape (batch, n_samples), 16 kHz.

    Returns
    -------
    tensor of shape (batch, n_mels, n_samples // 160), float32
    """
    if n_mels not in _MEL_FILTERS:
        from transformers.audio_utils import mel_filter_bank

        _MEL_FILTERS[n_mels] = mel_filter_bank(num_frequency_bins=MEL_FFT // 2 + 1, num_mel_filters=n_mels,
                                               min_frequency=0.0, max_frequency=8000.0, sampling_rate=16000,
                                               norm="slaney", mel_scale="slaney").astype(np.float32)
    audio = audio.float()
    window = torch.hann_window(MEL_FFT, device=audio.device)
    spectrum = torch.stft(audio, MEL_FFT, MEL_HOP, window=window, return_complex=True)[..., :-1]
    filters = torch.from_numpy(_MEL_FILTERS[n_mels]).to(audio.device)
    mel = torch.einsum("fm,bft->bmt", filters, spectrum.abs() ** 2)
    log = torch.clamp(mel, min=1e-10).log10()
    log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log + 4.0) / 4.0


def attention(attn, hidden: torch.Tensor, position_bias: torch.Tensor | None):
    """WavLM gated relative-position self-attention, calling the projection modules.

    Parameters
    ----------
    attn : transformers ``WavLMAttention`` (its q/k/v/out projections may be wrapped).
    hidden : tensor of shape (batch, n_frames, hidden_size)
    position_bias : tensor of shape (1, n_heads, n_frames, n_frames), or None for the
        first layer, which computes it from its relative-position embedding.

    Returns
    -------
    output : tensor of shape (batch, n_frames, hidden_size)
    position_bias : the ungated bias, passed on to the next layer.
    """
    b, t, d = hidden.shape
    h, hd = attn.num_heads, attn.head_dim
    bias = None
    if hasattr(attn, "gru_rel_pos_linear"):  # WavLM; HuBERT and wav2vec2 have no position bias
        if position_bias is None:
            position_bias = attn.compute_bias(t, t).unsqueeze(0)
        # Gate the bias per head and query position from the layer's input.
        per_head = hidden.view(b, t, h, hd).transpose(1, 2)
        gate_logits = attn.gru_rel_pos_linear(per_head).view(b, h, t, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(gate_logits).chunk(2, dim=-1)
        gate = gate_a * (gate_b * attn.gru_rel_pos_const - 1.0) + 2.0
        bias = (gate * position_bias).to(hidden.dtype)

    q = attn.q_proj(hidden).view(b, t, h, hd).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, t, h, hd).transpose(1, 2)
    v = attn.v_proj(hidden).view(b, t, h, hd).transpose(1, 2)
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    out = attn.out_proj(out.transpose(1, 2).reshape(b, t, d))
    return out, position_bias


def encoder_layer(layer, hidden: torch.Tensor, position_bias, stable_layer_norm: bool):
    """One transformer layer (post-LN, or pre-LN for ``do_stable_layer_norm`` checkpoints)."""
    if stable_layer_norm:
        attn_out, position_bias = attention(layer.attention, layer.layer_norm(hidden), position_bias)
        hidden = hidden + layer.dropout(attn_out)
        hidden = hidden + layer.feed_forward(layer.final_layer_norm(hidden))
    else:
        attn_out, position_bias = attention(layer.attention, hidden, position_bias)
        hidden = layer.layer_norm(hidden + layer.dropout(attn_out))
        hidden = layer.final_layer_norm(hidden + layer.feed_forward(hidden))
    return hidden, position_bias


def encode(model: WavLMModel, cnn: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """Transformer hidden states from CNN features, up to layer ``n_layers``.

    Parameters
    ----------
    cnn : tensor of shape (batch, n_frames, conv_dim[-1])
    n_layers : int
        Last transformer layer to compute (1-based; layers above it are not run).

    Returns
    -------
    list of ``n_layers + 1`` tensors of shape (batch, n_frames, hidden_size): element
    ``k`` is ``hidden_states[k]`` of transformers' ``WavLMModel`` (0 = input to the first
    layer; for pre-LN checkpoints the last layer's output is taken before the encoder's
    final LayerNorm, as transformers records it).

    In training mode (``model.training``) each layer but the first is skipped with
    probability ``model.config.layerdrop`` (a skipped layer's state equals its input);
    in eval mode no layer is ever skipped.
    """
    config = model.config
    if not 0 <= n_layers <= config.num_hidden_layers:
        raise ConfigError(f"layer {n_layers} does not exist: the model has {config.num_hidden_layers} layers")
    if is_whisper(config):
        return _encode_whisper(model, cnn, n_layers)
    enc = model.encoder
    stable = config.do_stable_layer_norm
    hidden = model.feature_projection(cnn)
    if isinstance(hidden, tuple):  # WavLM and wav2vec2 also return the normalised CNN features
        hidden = hidden[0]
    hidden = hidden + enc.pos_conv_embed(hidden)
    if not stable:
        hidden = enc.layer_norm(hidden)
    hidden = enc.dropout(hidden)
    states = [hidden]
    position_bias = None
    for i, layer in enumerate(enc.layers[:n_layers]):
        # LayerDrop as in transformers' encoders: one torch.rand draw per layer that may be
        # skipped, so the skips follow torch's seed. WavLM never skips its first layer (its
        # relative position embedding makes the bias the others reuse); HuBERT and wav2vec2 may.
        droppable = i > 0 or config.model_type != "wavlm"
        if model.training and droppable and config.layerdrop > 0 and torch.rand([]) < config.layerdrop:
            states.append(hidden)
            continue
        hidden, position_bias = encoder_layer(layer, hidden, position_bias, stable)
        states.append(hidden)
    return states


def _encode_whisper(model, frames: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """:func:`encode` for a ``WhisperEncoder``: positions cut to the input's frames (module docstring).

    Element ``k`` of the result is the output of layer ``k``; the encoder's final
    LayerNorm, which transformers applies to its last hidden state, is not applied (as
    for the other pre-LN checkpoints). LayerDrop may skip any layer, as in transformers.
    """
    n_frames = frames.shape[1]
    if n_frames > model.config.max_source_positions:
        raise ConfigError(f"a window of {n_frames} frames is longer than Whisper's "
                          f"{model.config.max_source_positions} positions (30 s): use a shorter context")
    hidden = frames + model.embed_positions.weight[:n_frames]
    hidden = F.dropout(hidden, p=model.dropout, training=model.training)
    states = [hidden]
    for layer in model.layers[:n_layers]:
        if model.training and model.layerdrop > 0 and torch.rand([]) < model.layerdrop:
            states.append(hidden)
            continue
        attn_out, _ = attention(layer.self_attn, layer.self_attn_layer_norm(hidden), None)
        hidden = hidden + F.dropout(attn_out, p=layer.dropout, training=layer.training)
        inner = F.dropout(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))),
                          p=layer.activation_dropout, training=layer.training)
        hidden = hidden + F.dropout(layer.fc2(inner), p=layer.dropout, training=layer.training)
        states.append(hidden)
    return states
