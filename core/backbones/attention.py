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
