"""``blocks`` extraction: runs of consecutive windows in one pass, each chunk attending to its own window.

The paper's windows (``extraction: windows``) send every 0.25-s chunk through the network
with its own 3.75 s of context, so each second of a story is computed 16 times. Here a
*pass* covers up to ``spec.block_windows`` consecutive windows: the audio from the first
window's start to the last window's end goes through the front end and the transformer
once, and a chunked attention mask (:class:`core.backbones.ChunkLayout`) lets a chunk's
frames attend only to their own window's frames (``context`` before the chunk, up to the
chunk's end). A window's vector is, as in windows mode, the mean of its last
``chunk_frames`` frames at each layer.

What is the same as windows mode and what is not:

- With one window per pass (``block_seconds`` <= ``stride``) the two are the same at every
  layer (for WavLM with a layer-norm CNN exactly; see below for the front ends).
- At the input to the first layer a chunk's frames are the same as its window's: the
  CNN frames are the same slices of the audio, and the convolutional position embedding
  of WavLM, HuBERT and wav2vec2 is computed per chunk with zeros after the chunk's end,
  as a window has (:func:`core.backbones.chunks.chunked_position_conv`).
- Above the first layer a chunk still attends to its own window's frames only, but those
  frames were computed from their own windows, so layer ``L`` reaches ``L`` contexts back
  (the receptive field grows with depth, as in streaming models) and nothing after the
  chunk's end. The first window of a pass is computed exactly as in windows mode.
- Front ends, decided per family: a layer-norm CNN (WavLM large, HuBERT, wav2vec2 large)
  is local, so the story-level CNN cache is sliced as in windows mode. A group-norm CNN
  (wavlm-base, base-plus) normalises each channel over its input: here over the pass
  (``block_seconds`` plus a window: 4.75 s at the default 1 s and the paper's windows)
  instead of the 4-s window, so the normalisation statistics, but no frame, see audio
  after a chunk. Whisper's log-mel is clipped 8 below the pass's maximum instead
  of the window's, and its convolutions and centred STFT frames read up to 25 ms past a
  chunk's end (they are padded at a window's edge); its absolute positions count from the
  pass's first frame, so a pass, like a window, must fit in 30 s.
"""

from __future__ import annotations

import numpy as np
import torch

from core import backbones
from core.backbones import ChunkLayout
from core.encoding.features import cut_windows


def passes(ids: np.ndarray, per_pass: int) -> list[np.ndarray]:
    """``ids`` (sorted) cut into runs of consecutive windows of at most ``per_pass`` each."""
    runs = np.split(ids, np.flatnonzero(np.diff(ids) != 1) + 1)
    return [run[i:i + per_pass] for run in runs if len(run) for i in range(0, len(run), per_pass)]


def block_vectors(model, padded: torch.Tensor, windows, ids: np.ndarray, layers: list[int],
                  cnn: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """:func:`core.encoding.extract.window_vectors` in ``blocks`` extraction (module docstring).

    Passes of the same length go through the network together.

    Parameters
    ----------
    padded : tensor of shape (n_padded_samples,), the story from ``StoryWindows.pad``.
    windows : the story's ``StoryWindows`` (its ``spec.extraction`` is ``blocks``).
    ids : sorted int array of shape (n,), which windows to compute.
    layers : transformer layers to return (1-based; 0 = the encoder's input).
    cnn : tensor of shape (n_frames, conv_dim[-1]), the story's CNN output, or None.

    Returns
    -------
    dict layer -> tensor of shape (n, hidden_size), rows in the order of ``ids``.
    """
    config = model.config
    spec = windows.spec
    hop = backbones.frame_hop(config)
    window_frames = backbones.conv_output_length(spec.window_samples, config)
    groups = passes(np.asarray(ids), spec.block_windows)
    offsets = [(windows.ends[g] - windows.ends[g[0]]) // hop for g in groups]
    lengths = np.array([o[-1] + window_frames for o in offsets])
    rows = {k: [] for k in layers}
    order = []
    for n_frames in np.unique(lengths):
        batch = np.flatnonzero(lengths == n_frames)
        starts = np.array([windows.ends[groups[b][0]] for b in batch])
        if cnn is not None:
            feats = cut_windows(cnn, starts // hop, int(n_frames), 1)
        else:
            span = int(n_frames - window_frames) * hop + spec.window_samples
            with torch.no_grad():
                feats = backbones.cnn_features(model, cut_windows(padded, starts, span, spec.frame_samples))
        layout = ChunkLayout([offsets[b] for b in batch], window_frames, int(n_frames))
        states = backbones.encode(model, feats, max(layers), layout)
        # Each window's vector: the mean of its last chunk_frames frames.
        which = np.concatenate([np.full(len(offsets[b]), i) for i, b in enumerate(batch)])
        ends = np.concatenate([offsets[b] + window_frames for b in batch])
        frames = ends[:, None] - spec.chunk_frames + np.arange(spec.chunk_frames)
        index = (torch.as_tensor(which, device=feats.device)[:, None], torch.as_tensor(frames, device=feats.device))
        for k in layers:
            rows[k].append(states[k][index].mean(dim=1))
        order += [groups[b] for b in batch]
    position = np.argsort(np.concatenate(order), kind="stable")
    position = torch.as_tensor(position, device=padded.device)
    return {k: torch.cat(v)[position] for k, v in rows.items()}
