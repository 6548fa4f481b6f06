"""WavLM, HuBERT and wav2vec2: the waveform CNN's geometry and the transformer's forward pass.

HuBERT and wav2vec2 (:data:`core.backbones.loading.FAMILIES`) share WavLM's layout (the same CNN, feature
projection, convolutional position embedding, and layers whose attention has
``q_proj``/``k_proj``/``v_proj``/``out_proj``) without its gated relative-position bias;
the same forward runs them, with their own LayerDrop rule (transformers' HuBERT and
wav2vec2 may drop the first layer too, WavLM never does).

It also stops at the read-out layer: layers above it are never computed, and it skips
the SpecAugment masking that the models' ``forward`` applies in training mode. LayerDrop
(``config.layerdrop``) works as in transformers: in training mode only.
"""

from __future__ import annotations

import torch
from transformers import WavLMConfig, WavLMModel

from core.backbones.attention import attention
from core.backbones.chunks import ChunkLayout, chunked_position_conv


def frame_hop(config: WavLMConfig) -> int:
    """Samples between CNN frames (product of conv strides; 320 for every WavLM)."""
    hop = 1
    for s in config.conv_stride:
        hop *= s
    return hop


def conv_output_length(n_samples: int, config: WavLMConfig) -> int:
    """Number of CNN frames for ``n_samples`` of audio (no padding in the CNN)."""
    n = n_samples
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    return n


def receptive_field(config: WavLMConfig) -> int:
    """Samples one CNN frame sees (400 for every WavLM)."""
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
    tensor of shape (batch, n_frames, conv_dim[-1])
    """
    return model.feature_extractor(audio).transpose(1, 2)


def encoder_layer(layer, hidden: torch.Tensor, position_bias, stable_layer_norm: bool, layout=None):
    """One transformer layer (post-LN, or pre-LN for ``do_stable_layer_norm`` checkpoints)."""
    if stable_layer_norm:
        attn_out, position_bias = attention(layer.attention, layer.layer_norm(hidden), position_bias, layout)
        hidden = hidden + layer.dropout(attn_out)
        hidden = hidden + layer.feed_forward(layer.final_layer_norm(hidden))
    else:
        attn_out, position_bias = attention(layer.attention, hidden, position_bias, layout)
        hidden = layer.layer_norm(hidden + layer.dropout(attn_out))
        hidden = layer.final_layer_norm(hidden + layer.feed_forward(hidden))
    return hidden, position_bias


def encode(model: WavLMModel, cnn: torch.Tensor, n_layers: int, layout: ChunkLayout | None = None) -> list[torch.Tensor]:
    """:func:`core.backbones.forward.encode` for WavLM, HuBERT and wav2vec2.

    In training mode each layer but WavLM's first may be skipped, with probability
    ``model.config.layerdrop``. With a ``layout``, the position embedding and every
    attention layer keep to its chunks (WavLM's relative position bias is the same for
    every pair of frames; the mask only removes pairs).
    """
    config = model.config
    enc = model.encoder
    stable = config.do_stable_layer_norm
    hidden = model.feature_projection(cnn)
    if isinstance(hidden, tuple):  # WavLM and wav2vec2 also return the normalised CNN features
        hidden = hidden[0]
    if layout is None:
        hidden = hidden + enc.pos_conv_embed(hidden)
    else:
        hidden = hidden + chunked_position_conv(enc.pos_conv_embed, hidden, layout)
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
        hidden, position_bias = encoder_layer(layer, hidden, position_bias, stable, layout)
        states.append(hidden)
    return states
