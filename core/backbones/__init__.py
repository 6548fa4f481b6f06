"""Speech backbones: loading by family, the forward pass LoRA can see, LoRA targets and adapters.

Modules
-------
loading      :func:`load_backbone`: a WavLM, HuBERT, wav2vec2 or Whisper checkpoint, its front end frozen
forward      front-end features, frame geometry and hidden states of any loaded backbone
attention    self-attention that calls its projection modules (so LoRA adapters run)
chunks       :class:`ChunkLayout`: chunked attention over a pass of several windows (``extraction: blocks``)
wav2vec      WavLM, HuBERT and wav2vec2: the waveform CNN and the transformer
whisper      Whisper's encoder: log-mel front end, positions cut to the window
lora         the projections LoRA may adapt, and :func:`adapt`
whisper_ct2  a CTranslate2 Whisper converted to a transformers checkpoint (``python -m core.whisper_ct2``)

The names below are the package's API; ``tests/test_wavlm.py`` checks the forward pass
against transformers' own outputs.
"""

from core.backbones.chunks import ChunkLayout
from core.backbones.forward import cnn_features, cnn_slicing_is_exact, conv_output_length, encode, frame_hop, receptive_field
from core.backbones.loading import (FAMILIES, checkpoint_config, encoder_layers, is_whisper, load_backbone,
                                    load_wavlm, quiet_transformers)
from core.backbones.lora import adapt, layer_target_path, target_module_name
from core.backbones.whisper import log_mel

__all__ = ["FAMILIES", "ChunkLayout", "adapt", "checkpoint_config", "cnn_features", "cnn_slicing_is_exact", "conv_output_length",
           "encode", "encoder_layers", "frame_hop", "is_whisper", "layer_target_path", "load_backbone", "load_wavlm", "log_mel",
           "quiet_transformers", "receptive_field", "target_module_name"]
