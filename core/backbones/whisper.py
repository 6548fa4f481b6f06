"""Whisper's encoder: the log-mel front end, its frame geometry and a forward pass with positions cut to the window.

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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.backbones.attention import attention
from core.backbones.chunks import ChunkLayout
from core.errors import ConfigError

#: Whisper's log-mel: 16 kHz, 400-sample (25 ms) Hann frames every 160 samples (10 ms).
MEL_FFT, MEL_HOP = 400, 160


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


def frame_hop(config) -> int:
    """Samples between front-end frames: 320 (the second convolution has stride 2)."""
    return MEL_HOP * 2


def conv_output_length(n_samples: int, config) -> int:
    """Number of front-end frames for ``n_samples`` of audio (see :func:`log_mel`)."""
    mel_frames = n_samples // MEL_HOP
    return (mel_frames - 1) // 2 + 1 if mel_frames else 0


def receptive_field(config) -> int:
    """Samples one front-end frame sees: 5 mel frames, 1040 samples."""
    return 4 * MEL_HOP + MEL_FFT


def cnn_features(model, audio: torch.Tensor) -> torch.Tensor:
    """The frozen front end: the log-mel of ``audio`` (batch, n_samples) through both convolutions.

    Returns
    -------
    tensor of shape (batch, n_frames, d_model)
    """
    mel = log_mel(audio, model.config.num_mel_bins)
    hidden = F.gelu(model.conv2(F.gelu(model.conv1(mel.to(model.conv1.weight.dtype)))))
    return hidden.transpose(1, 2)


def encode(model, frames: torch.Tensor, n_layers: int, layout: ChunkLayout | None = None) -> list[torch.Tensor]:
    """:func:`core.backbones.forward.encode` for a ``WhisperEncoder``: positions cut to the input's frames (module docstring).

    Element ``k`` of the result is the output of layer ``k``; the encoder's final
    LayerNorm, which transformers applies to its last hidden state, is not applied (as
    for the other pre-LN checkpoints). LayerDrop may skip any layer, as in transformers.
    With a ``layout`` every attention layer keeps to its chunks; positions count from
    the pass's first frame, so a pass must fit Whisper's 30 s as a window must.
    """
    n_frames = frames.shape[1]
    if n_frames > model.config.max_source_positions:
        raise ConfigError(f"an input of {n_frames} frames is longer than Whisper's "
                          f"{model.config.max_source_positions} positions (30 s): use a shorter context "
                          "(extraction: blocks: a shorter block_seconds)")
    hidden = frames + model.embed_positions.weight[:n_frames]
    hidden = F.dropout(hidden, p=model.dropout, training=model.training)
    states = [hidden]
    for layer in model.layers[:n_layers]:
        if model.training and model.layerdrop > 0 and torch.rand([]) < model.layerdrop:
            states.append(hidden)
            continue
        attn_out, _ = attention(layer.self_attn, layer.self_attn_layer_norm(hidden), None, layout)
        hidden = hidden + F.dropout(attn_out, p=layer.dropout, training=layer.training)
        inner = F.dropout(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))),
                          p=layer.activation_dropout, training=layer.training)
        hidden = hidden + F.dropout(layer.fc2(inner), p=layer.dropout, training=layer.training)
        states.append(hidden)
    return states
