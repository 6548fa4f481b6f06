"""The forward pass of any loaded backbone, by family: front-end features, frame geometry and hidden states.

Each family's module (:mod:`core.backbones.wav2vec`, :mod:`core.backbones.whisper`)
computes its own; these functions pick the family from the model's config.
"""

from __future__ import annotations

import torch

from core.backbones import wav2vec, whisper
from core.backbones.chunks import ChunkLayout
from core.backbones.loading import is_whisper
from core.errors import ConfigError


def _family(config):
    return whisper if is_whisper(config) else wav2vec


def cnn_slicing_is_exact(config) -> bool:
    """True when a window's CNN output is exactly a slice of the whole story's.

    With ``feat_extract_norm == "layer"`` every CNN frame depends only on its own
    400-sample receptive field. With ``"group"`` (wavlm-base, base-plus) the first conv
    layer's GroupNorm normalises each channel over the whole input, so a window's output
    depends on the window's extent. Never for Whisper: its log-mel is normalised by the
    input's maximum, and its convolutions pad at the input's edges.
    """
    return not is_whisper(config) and config.feat_extract_norm == "layer"


def frame_hop(config) -> int:
    """Samples between CNN frames (320 for every supported checkpoint)."""
    return _family(config).frame_hop(config)


def conv_output_length(n_samples: int, config) -> int:
    """Number of CNN frames for ``n_samples`` of audio."""
    return _family(config).conv_output_length(n_samples, config)


def receptive_field(config) -> int:
    """Samples one CNN frame sees (400 for every WavLM; for Whisper 5 mel frames, 1040 samples)."""
    return _family(config).receptive_field(config)


def cnn_features(model, audio: torch.Tensor) -> torch.Tensor:
    """Frozen CNN features (Whisper: the log-mel through both convolutions).

    Parameters
    ----------
    audio : tensor of shape (batch, n_samples), 16 kHz.

    Returns
    -------
    tensor of shape (batch, n_frames, conv_dim[-1]) (Whisper: (batch, n_frames, d_model))
    """
    return _family(model.config).cnn_features(model, audio)


def encode(model, cnn: torch.Tensor, n_layers: int, layout: ChunkLayout | None = None) -> list[torch.Tensor]:
    """Transformer hidden states from CNN features, up to layer ``n_layers``.

    Parameters
    ----------
    cnn : tensor of shape (batch, n_frames, conv_dim[-1])
    n_layers : int
        Last transformer layer to compute (1-based; layers above it are not run).
    layout : the chunks of a batch of passes (:mod:`core.backbones.chunks`), or None: every
        frame attends to every frame (one window per sequence).

    Returns
    -------
    list of ``n_layers + 1`` tensors of shape (batch, n_frames, hidden_size): element
    ``k`` is ``hidden_states[k]`` of transformers' model (0 = input to the first layer;
    for pre-LN checkpoints the last layer's output is taken before the encoder's final
    LayerNorm, as transformers records it).

    In training mode (``model.training``) a layer may be skipped with probability
    ``layerdrop`` (a skipped layer's state equals its input; which layers may be skipped
    depends on the family); in eval mode no layer is ever skipped.
    """
    n_hidden = model.config.num_hidden_layers
    if not 0 <= n_layers <= n_hidden:
        raise ConfigError(f"layer {n_layers} does not exist: the model has {n_hidden} layers")
    return _family(model.config).encode(model, cnn, n_layers, layout)
