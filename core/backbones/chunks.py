"""Chunked attention over one pass of several windows: which frames each frame may see.

In ``blocks`` extraction (:mod:`core.encoding.blocks`) a run of consecutive windows goes
through the transformer as one sequence. Window ``j`` of a pass covers frames
``[offset_j, offset_j + window_frames)``; its *chunk* is the frames after the previous
window's end up to its own end (the first window's chunk is the whole first window). A
frame of chunk ``j`` attends to window ``j``'s frames only: from ``context`` seconds before
the chunk to the chunk's end, as in streaming speech recognition. So nothing later than a
chunk's end ever reaches it, and with one window per pass every frame sees exactly what
the windowed forward pass shows it.

The family forward passes (:func:`core.backbones.forward.encode`) take a :class:`ChunkLayout`
and apply it in every attention layer (:func:`core.backbones.attention.attention` computes
each chunk's queries against its window's keys only, so attention costs what the windows'
chunks cost, not the square of the pass) and, for WavLM, HuBERT and wav2vec2, in the
convolutional position embedding (:func:`chunked_position_conv`), which would otherwise
read 63 frames (1.26 s) past a chunk's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ConfigError


class ChunkIndex(NamedTuple):
    """:meth:`ChunkLayout.index`: the attention's gathers, as tensors on the model's device."""

    queries: torch.Tensor  # (n_passes, n_chunks, chunk_size): each later chunk's query frames
    keys: torch.Tensor  # (n_passes, n_chunks, window_frames): its window's frames
    relative: torch.Tensor  # (n_passes, n_chunks, chunk_size, window_frames): key - query + n_frames - 1
    placed: tuple[torch.Tensor, ...]  # (pass, chunk, slot) of every real query
    frames: torch.Tensor  # the frame of each of those
    first_relative: torch.Tensor  # (window_frames, window_frames): the first window's key - query + n_frames - 1


@dataclass
class ChunkLayout:
    """The chunks of a batch of passes of equal length.

    Attributes
    ----------
    offsets : list of int arrays, one per pass: window start frames, increasing, from 0.
    window_frames : frames in one window.
    n_frames : frames in each pass (``offsets[b][-1] + window_frames`` for every pass).
    """

    offsets: list[np.ndarray]
    window_frames: int
    n_frames: int
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for o in self.offsets:
            if o[0] != 0 or o[-1] + self.window_frames != self.n_frames or np.any(np.diff(o) <= 0):
                raise ValueError(f"window offsets {o[:4]}... do not make a pass of {self.n_frames} frames")

    def index(self, device) -> ChunkIndex:
        """The attention's gathers as tensors on ``device`` (made once per device, shared by every layer).

        The first window of each pass attends to itself, as a window does; every later chunk
        is one group of queries that attend to its window's keys. Chunks are padded to the
        longest (padding repeats the chunk's last frame and is dropped), passes with fewer
        chunks with empty ones.
        """
        key = str(device)
        if key not in self._index:
            starts, ends = self.later_chunks()
            size = max(1, int((ends - starts).max())) if ends.size else 1
            frames = ends[:, :, None] - size + np.arange(size)  # (n_passes, n_chunks, size), right-aligned
            valid = (frames >= starts[:, :, None]) & (ends[:, :, None] > starts[:, :, None])
            queries = np.maximum(frames, starts[:, :, None]).clip(0)
            keys = (ends - self.window_frames).clip(0)[:, :, None] + np.arange(self.window_frames)
            placed = np.nonzero(valid)
            first = np.arange(self.window_frames)

            def on_device(a):
                return torch.as_tensor(a, device=device)

            self._index[key] = ChunkIndex(
                on_device(queries), on_device(keys),
                on_device(keys[:, :, None, :] - queries[:, :, :, None] + self.n_frames - 1),
                tuple(on_device(a) for a in placed), on_device(queries[placed]),
                on_device(first[None, :] - first[:, None] + self.n_frames - 1))
        return self._index[key]

    def later_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end frames of every chunk but each pass's first: int arrays (n_passes, max chunks), 0-padded."""
        count = max(len(o) - 1 for o in self.offsets)
        starts = np.zeros((len(self.offsets), count), np.int64)
        ends = np.zeros_like(starts)
        for b, o in enumerate(self.offsets):
            window_ends = o + self.window_frames
            starts[b, : len(o) - 1], ends[b, : len(o) - 1] = window_ends[:-1], window_ends[1:]
        return starts, ends


def chunked_position_conv(pos, hidden: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """WavLM's convolutional position embedding with each chunk's frames seeing nothing after the chunk's end.

    Each frame's output is the module's for its chunk's window (the frames from the
    window's start to the chunk's end) between silence (zeros), the way a window's frames
    see zeros outside the window; the first chunk (the whole first window) is the module
    run on that window alone. Costs
    about what one pass of the module over the sequence costs: each chunk computes only
    its own outputs.

    Parameters
    ----------
    pos : transformers' ``*PositionalConvEmbedding`` (``conv``, ``padding``, ``activation``).
    hidden : tensor of shape (n_passes, n_frames, hidden_size)

    Returns
    -------
    tensor of shape (n_passes, n_frames, hidden_size)
    """
    if getattr(pos, "batch_norm", None) is not None:
        raise ConfigError("extraction: blocks does not support a position embedding with batch norm "
                          "(conv_pos_batch_norm); use extraction: windows")
    conv = pos.conv
    kernel, pad = conv.kernel_size[0], conv.padding[0]
    n, t, d = hidden.shape
    first = layout.window_frames
    head = pos(hidden[:, :first])
    starts, ends = layout.later_chunks()
    if ends.shape[1] == 0:
        return head
    longest = int((ends - starts).max())
    # Chunk c's outputs for frames ends[c] - longest ... ends[c] - 1 read inputs from ``pad``
    # frames before the first of them to ``kernel - pad - 1`` after the last: zeros past the end.
    index = ends[:, :, None] - longest - pad + np.arange(longest + kernel - 1)
    def on_device(a):
        return torch.as_tensor(a, device=hidden.device)

    # Within the chunk's window, as a window's frames see zeros outside it.
    valid = on_device((index >= ends[:, :, None] - layout.window_frames) & (index >= 0) & (index < ends[:, :, None]))
    rows = torch.arange(n, device=hidden.device)[:, None, None]
    segments = hidden[rows, on_device(index.clip(0, t - 1))] * valid[..., None]
    c = segments.shape[1]
    out = F.conv1d(segments.reshape(n * c, -1, d).transpose(1, 2), conv.weight, conv.bias, groups=conv.groups)
    out = pos.activation(out).transpose(1, 2).reshape(n, c, longest, d)
    # Keep each chunk's own frames (a shorter chunk's first outputs belong to the chunk before).
    frame = ends[:, :, None] - longest + np.arange(longest)
    keep = frame >= starts[:, :, None]
    b, ci, j = np.nonzero(keep)
    tail = hidden.new_zeros(n, t, d).index_put((on_device(b), on_device(frame[b, ci, j])),
                                               out[on_device(b), on_device(ci), on_device(j)])
    return torch.cat([head, tail[:, first:]], dim=1)
