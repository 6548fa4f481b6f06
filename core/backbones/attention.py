"""Self-attention that calls its projection modules, so LoRA adapters wrapping them run.

Why our own forward pass: transformers' ``WavLMAttention`` hands ``q_proj.weight``,
``k_proj.weight`` and ``v_proj.weight`` straight to ``F.multi_head_attention_forward``,
so adapters that wrap those ``nn.Linear`` modules (peft's LoRA) are never called: no
change in the output, no gradient (BRIEF section 5). :func:`attention` computes the same
thing by *calling* the projection modules, so whatever wraps them runs. It reuses the
checkpoint's modules and weights unchanged; nothing in transformers is patched.
``tests/test_wavlm.py`` checks it against transformers' own outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.backbones.chunks import ChunkLayout


def attention(attn, hidden: torch.Tensor, position_bias: torch.Tensor | None, layout: ChunkLayout | None = None):
    """WavLM gated relative-position self-attention, calling the projection modules.

    Parameters
    ----------
    attn : transformers ``WavLMAttention`` (its q/k/v/out projections may be wrapped).
    hidden : tensor of shape (batch, n_frames, hidden_size)
    position_bias : None for the first layer, which computes it from its relative-position
        embedding; then what that layer returned.
    layout : the chunks of a batch of passes (:mod:`core.backbones.chunks`): each chunk's
        frames attend to their window's frames only; None = every frame to every frame.

    Returns
    -------
    output : tensor of shape (batch, n_frames, hidden_size)
    position_bias : the ungated bias, passed on to the next layer: (1, n_heads, n_frames,
        n_frames), or with a ``layout`` the bias of each relative position, (n_heads,
        2 * n_frames - 1).
    """
    b, t, d = hidden.shape
    h, hd = attn.num_heads, attn.head_dim
    gate = None
    if hasattr(attn, "gru_rel_pos_linear"):  # WavLM; HuBERT and wav2vec2 have no position bias
        if position_bias is None:
            position_bias = attn.compute_bias(t, t).unsqueeze(0) if layout is None else relative_bias(attn, t)
        # Gate the bias per head and query position from the layer's input.
        per_head = hidden.view(b, t, h, hd).transpose(1, 2)
        gate_logits = attn.gru_rel_pos_linear(per_head).view(b, h, t, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(gate_logits).chunk(2, dim=-1)
        gate = gate_a * (gate_b * attn.gru_rel_pos_const - 1.0) + 2.0  # (b, h, t, 1)

    q = attn.q_proj(hidden).view(b, t, h, hd)
    k = attn.k_proj(hidden).view(b, t, h, hd)
    v = attn.v_proj(hidden).view(b, t, h, hd)
    dropout = attn.dropout if attn.training else 0.0
    if layout is None:
        bias = None if gate is None else (gate * position_bias).to(hidden.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias,
                                             dropout_p=dropout).transpose(1, 2)
    else:
        out = chunked(q, k, v, gate, position_bias, layout, dropout)
    return attn.out_proj(out.reshape(b, t, d)), position_bias


def relative_bias(attn, t: int) -> torch.Tensor:
    """WavLM's relative-position bias of every offset ``key - query`` in ``-(t-1) ... t-1``: (n_heads, 2t - 1).

    ``attn.compute_bias(t, t)[:, i, j]`` is column ``j - i + t - 1`` of this.
    """
    offsets = torch.arange(-(t - 1), t, device=attn.rel_attn_embed.weight.device)
    return attn.rel_attn_embed(attn._relative_positions_bucket(offsets)).T


def chunked(q, k, v, gate, table, layout: ChunkLayout, dropout: float) -> torch.Tensor:
    """Attention under ``layout``: each pass's first window to itself, each later chunk to its window's keys.

    Parameters
    ----------
    q, k, v : tensors of shape (batch, n_frames, n_heads, head_dim)
    gate : tensor (batch, n_heads, n_frames, 1) of WavLM's bias gates, or None (no position bias).
    table : tensor (n_heads, 2 * n_frames - 1) from :func:`relative_bias`, or None.

    Returns
    -------
    tensor of shape (batch, n_frames, n_heads, head_dim)
    """
    b, t, h, hd = q.shape
    w = layout.window_frames
    index = layout.index(q.device)
    bias = None if gate is None else (gate[:, :, :w] * table[:, index.first_relative]).to(q.dtype)
    first = F.scaled_dot_product_attention(q[:, :w].transpose(1, 2), k[:, :w].transpose(1, 2),
                                           v[:, :w].transpose(1, 2), attn_mask=bias, dropout_p=dropout)
    out = torch.cat([first.transpose(1, 2), q.new_zeros(b, t - w, h, hd)], dim=1)
    g, size = index.queries.shape[1:]
    if not index.frames.numel():
        return out
    rows = torch.arange(b, device=q.device)[:, None, None]

    def heads_first(x):  # (b, g, n, h, hd) -> (b * g, h, n, hd)
        return x.reshape(b * g, x.shape[2], h, hd).transpose(1, 2)

    if gate is not None:
        gates = gate[:, :, :, 0].transpose(1, 2)[rows, index.queries]  # (b, g, size, h)
        bias = table[:, index.relative].permute(1, 2, 0, 3, 4) * gates.permute(0, 1, 3, 2)[..., None]
        bias = bias.reshape(b * g, h, size, -1).to(q.dtype)
    later = F.scaled_dot_product_attention(heads_first(q[rows, index.queries]), heads_first(k[rows, index.keys]),
                                           heads_first(v[rows, index.keys]), attn_mask=bias, dropout_p=dropout)
    later = later.transpose(1, 2).reshape(b, g, size, h, hd)
    return out.index_put((index.placed[0], index.frames), later[index.placed])
