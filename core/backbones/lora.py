"""LoRA on a backbone: the projections it may adapt in each family's layers, and adapting them."""

from __future__ import annotations

from torch import nn

from core.backbones.loading import encoder_layers, is_whisper


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
    """Full module name of projection ``target`` of 1-based ``layer`` in a loaded model (:func:`load_backbone`)."""
    prefix = "layers" if is_whisper(config) else "encoder.layers"
    return f"{prefix}.{layer - 1}.{layer_target_path(config, target)}"


def adapt(model, layers: list[int], targets: list[str], rank: int, alpha: float, dropout: float) -> list[nn.Parameter]:
    """Make ``layers`` of a backbone trainable: LoRA adapters on ``targets``, or all weights when ``rank == 0``.

    Every other weight is frozen. Adapters start at zero (peft initialises ``lora_B`` to
    0), so the adapted model starts equal to the pretrained one.

    Returns
    -------
    the trainable parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if rank == 0:
        for layer in layers:
            for p in encoder_layers(model)[layer - 1].parameters():
                p.requires_grad_(True)
    elif layers:
        from peft import LoraConfig, inject_adapter_in_model

        names = [target_module_name(model.config, layer, t) for layer in layers for t in targets]
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
        inject_adapter_in_model(config, model)
    return [p for p in model.parameters() if p.requires_grad]
