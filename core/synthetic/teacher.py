"""The pretrained model and the teacher: a small WavLM (or a checkpoint) and the planted low-rank change."""

from __future__ import annotations

import torch

from core.synthetic.spec import SynthSpec


def wavlm_config(spec: SynthSpec):
    """A small WavLM config with the real CNN geometry (320-sample hop, 400-sample field)."""
    from transformers import WavLMConfig

    return WavLMConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        conv_dim=(spec.conv_dim,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=False,
    )


def make_pretrained(spec: SynthSpec):
    """The 'pretrained' model: a WavLM from config with its encoder's linear weights re-drawn."""
    from transformers import WavLMModel

    torch.manual_seed(spec.seed)
    model = WavLMModel(wavlm_config(spec))
    gen = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for module in list(model.encoder.modules()) + [model.feature_projection.projection]:
            if isinstance(module, torch.nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
    return model.eval()


def plant(model, spec: SynthSpec):
    """The teacher: ``model`` with a rank-``r`` change added to q and v of the planted layers.

    The change is ``scale * ||W||_2 * U V^T`` with random orthonormal ``U``, ``V`` of
    ``r`` columns: each of its ``r`` singular values is ``scale`` times the weight's
    largest, so the change is large, yet within reach of a LoRA adapter of rank >= r.
    """
    import copy

    from core.backbones import layer_target_path

    teacher = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(spec.seed + 2)
    d = model.config.hidden_size
    with torch.no_grad():
        for layer in spec.planted_layers:
            block = teacher.encoder.layers[layer - 1]
            for name in spec.planted_projections:
                proj = block.get_submodule(layer_target_path(model.config, name))
                u = torch.linalg.qr(torch.randn(d, spec.planted_rank, generator=gen))[0]
                v = torch.linalg.qr(torch.randn(d, spec.planted_rank, generator=gen))[0]
                norm = torch.linalg.matrix_norm(proj.weight, ord=2)
                proj.weight.add_(spec.planted_scale * norm * u @ v.T)
    return teacher.eval()


def load_checkpoint(folder: str):
    """A checkpoint folder as its family's whole transformers model (Whisper with its decoder), for :func:`plant`."""
    import transformers

    from core.backbones import FAMILIES, checkpoint_config, quiet_transformers

    model_class = getattr(transformers, FAMILIES[checkpoint_config(folder).model_type])
    with quiet_transformers():
        return model_class.from_pretrained(folder).eval()
