"""Brain-tuned speech encoding models: the library (no Ray, no MLflow).

The public API is :data:`__all__`; each name is imported from its module on first use, so
``import core`` stays light. A notebook session, for example::

    from core import Dataset, TrainConfig, Trainer, run_baseline
    ds = Dataset("/data/ds003020")
    summary = Trainer(TrainConfig(epochs=2), ds, "UTS01", "runs/one").fit()

Packages and modules
--------------------
data         the ds003020 dataset: reader and writers, audio, TextGrids, ``python -m core.check``
backbones    loading WavLM, HuBERT, wav2vec2 and Whisper; a forward pass LoRA adapters change; LoRA
encoding     features, extraction, ridge, metrics, the ridge protocol, ``python -m core.baseline``
tuning       the brain model, its loss and collectives, where the readout starts, and the Trainer: a loop
             over named steps
studies      readouts, cross-subject transfer and word-level probes over story features; the planted
             data's recovery checks
synthetic    the planted-teacher synthetic dataset (``python -m core.synth``) and TTS (``python -m core.tts``)
run          one run end to end: fit, studies, result files; returns a :class:`core.run.RunResult`
export       a tuned model for use without this project (``python -m core.export``)
train        one training run (``python -m core.train``)
config       the settings of a run (:class:`TrainConfig`), validated once
errors       the errors a user can act on
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Dataset": "data.dataset", "Split": "data.dataset",
    "TrainConfig": "config",
    "WindowSpec": "encoding.features", "LanczosOperator": "encoding.features", "delay_features": "encoding.features",
    "load_backbone": "backbones", "load_backbone": "backbones", "adapt": "backbones",
    "FrozenFeatures": "encoding.extract", "all_window_features": "encoding.extract", "to_trs": "encoding.extract",
    "BrainModel": "tuning.model", "Readout": "tuning.model",
    "loss_fn": "tuning.loss", "voxel_weights": "tuning.loss",
    "pearson_r": "encoding.metrics", "spatial_r": "encoding.metrics", "noise_ceiling": "encoding.metrics",
    "explainable_variance": "encoding.metrics", "roi_summary": "encoding.metrics",
    "RidgeFit": "encoding.ridge", "fit_ridge": "encoding.ridge", "ALPHAS": "encoding.ridge",
    "ALPHA_CONVENTION": "encoding.ridge",
    "Evaluation": "encoding.evaluation", "StoryResponses": "encoding.evaluation",
    "ridge_evaluation": "encoding.evaluation", "score_prediction": "encoding.evaluation",
    "Trainer": "tuning.trainer",
    "transfer": "studies.transfer", "probe": "studies.probes",
    "run_baseline": "encoding.baseline",
    "SynthSpec": "synthetic.spec", "generate": "synthetic.writing", "speak": "synthetic.tts",
    "BrainsweepError": "errors", "ConfigError": "errors", "DataError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
