"""Loading a speech backbone by family (WavLM, HuBERT, wav2vec2, Whisper's encoder), its front end frozen.

Only :data:`FAMILIES` are accepted; :func:`load_backbone` refuses a checkpoint whose
backbone weights do not all come from the checkpoint (module docstring of
:mod:`core.backbones`).
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch
from transformers import AutoConfig

from core.errors import ConfigError


#: Supported checkpoint families: ``model_type`` -> transformers model class.
FAMILIES = {"wavlm": "WavLMModel", "hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "whisper": "WhisperModel"}


def checkpoint_config(model: str):
    """The checkpoint's transformers config, read without its weights; refused unless one of :data:`FAMILIES`.

    Raises
    ------
    ConfigError
        The checkpoint cannot be read, or is of another family (one line naming both).
    """
    online = hub_reachable(model)
    try:
        config = AutoConfig.from_pretrained(model, local_files_only=not online)
    except (OSError, ValueError) as err:
        if not online and not Path(model).expanduser().is_dir():
            raise ConfigError(
                f"cannot load checkpoint {model!r}: not a folder here, not in the Hugging Face cache "
                f"(HF_HOME), and the hub is unreachable or HF_HUB_OFFLINE is set. Save it on a machine "
                f"with internet (python -c \"from transformers import AutoModel; "
                f"AutoModel.from_pretrained('{model}').save_pretrained('DIR')\"), copy DIR here and pass "
                f"model: DIR, or point HF_HOME at a cache that holds it"
            ) from None
        raise ConfigError(f"cannot load checkpoint {model!r}: {str(err).splitlines()[0]}") from None
    if config.model_type not in FAMILIES:
        raise ConfigError(f"{model!r} is a {config.model_type!r} checkpoint; supported are "
                          f"{', '.join(map(repr, FAMILIES))} (e.g. microsoft/wavlm-base-plus, "
                          "facebook/hubert-base-ls960, facebook/wav2vec2-base, openai/whisper-tiny.en)")
    return config


def hub_reachable(model: str, timeout_s: float = 3.0) -> bool:
    """Whether ``model`` may be fetched from the Hugging Face hub now (a local folder never is).

    A quick TCP connect to the hub's endpoint (``HF_ENDPOINT``) decides, so an offline
    machine fails in seconds, not after huggingface_hub's retries (~30 s).
    """
    from huggingface_hub import constants

    if Path(model).expanduser().is_dir() or constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError:
        return False
    return True


def load_backbone(model: str, *, layerdrop: float = 0.0, dropout: float = 0.0,
                  dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load a WavLM, HuBERT, wav2vec2 or Whisper checkpoint (local folder or hub id) with its CNN frozen.

    Only the :data:`FAMILIES` are accepted, each loaded as its own transformers class, and
    every weight of the backbone must come from the checkpoint: a checkpoint loaded as
    another family's class would otherwise load "successfully", with the missing weights
    (e.g. WavLM's gated relative position weights) drawn at random (transformers only
    warns). Weights the checkpoint has beyond the backbone are ignored: a task head
    (``lm_head`` of a CTC model) and ``masked_spec_embed``, which we do not build because
    SpecAugment masking is off. Of a Whisper checkpoint only the encoder is returned
    (a ``WhisperEncoder``; its front end, the two convolutions, frozen); the decoder is
    loaded to check the checkpoint and then dropped.

    Parameters
    ----------
    model : str
        Anything ``from_pretrained`` accepts.
    layerdrop : float
        Probability that :func:`encode` skips a layer in training mode (WavLM: never the
        first). Set explicitly: the checkpoints ship 0.05-0.1.
    dropout : float
        The model's own dropout (attention, hidden, activation, feature projection) in
        training mode; checkpoints ship 0.1. In eval mode there is none either way.

    Raises
    ------
    ConfigError
        The checkpoint cannot be read, is of another family, or lacks (or has unknown)
        weights of the backbone.
    """
    import transformers

    model_type = checkpoint_config(model).model_type
    model_class = getattr(transformers, FAMILIES[model_type])
    if model_type == "whisper":
        settings = {"encoder_layerdrop": layerdrop, "apply_spec_augment": False,
                    **dict.fromkeys(("dropout", "attention_dropout", "activation_dropout"), dropout)}
    else:
        settings = {"layerdrop": layerdrop, "mask_time_prob": 0.0, "mask_feature_prob": 0.0,
                    **dict.fromkeys(("attention_dropout", "hidden_dropout", "activation_dropout",
                                     "feat_proj_dropout"), dropout)}
    try:
        with quiet_transformers():  # its load report and progress bar; we check the loading info below
            net, info = model_class.from_pretrained(model, dtype=dtype, output_loading_info=True,
                                                    local_files_only=not hub_reachable(model), **settings)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load {model_type} checkpoint {model!r}: {str(err).splitlines()[0]}") from None
    backbone = tuple(f"{name}." for name, _ in net.named_children())
    unexpected = [k for k in info["unexpected_keys"] if k.removeprefix(f"{net.base_model_prefix}.").startswith(backbone)]
    for kind, keys in (("lacks", info["missing_keys"]), ("has unknown", unexpected)):
        if keys:
            keys = sorted(keys)
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise ConfigError(f"{model_type} checkpoint {model!r} {kind} weights of the backbone: "
                              f"{', '.join(keys[:5])}{more}")
    if model_type == "whisper":
        net = net.encoder
        for p in [*net.conv1.parameters(), *net.conv2.parameters(), net.embed_positions.weight]:
            p.requires_grad_(False)
    else:
        net.feature_extractor._freeze_parameters()
    return net.eval()


def is_whisper(config) -> bool:
    return config.model_type == "whisper"


def encoder_layers(model) -> torch.nn.ModuleList:
    """The transformer layers of a loaded model (:func:`load_backbone`)."""
    return model.layers if is_whisper(model.config) else model.encoder.layers


@contextmanager
def quiet_transformers():
    """Silence transformers' logging and progress bars inside the block (restored after it)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


#: The name this loader had when it loaded WavLM only (``core.load_wavlm``, kept for notebooks that use it).
load_wavlm = load_backbone
