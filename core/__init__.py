"""Brain-tuned speech encoding models: the library (no Ray, no MLflow).

The public API is :data:`__all__`; each name is imported from its module on first use, so
``import core`` stays light. A notebook session, for example::

    from core import Dataset, TrainConfig, Trainer, run_baseline
    ds = Dataset("/data/ds003020")
    summary = Trainer(TrainConfig(epochs=2), ds, "UTS01", "runs/one").fit()

Modules
-------
dataset      ds003020-layout reader and writer (audio, responses, TextGrids, ROI masks, splits)
check        ``python -m core.check``: validate a dataset folder as users have it
features     causal windows, Lanczos interpolation to TRs, FIR delays, normalisation
wavlm        loading WavLM checkpoints and a forward pass whose attention LoRA can adapt
extract      window features, frozen features cached on disk, the ridge protocol's TR features
model        the BrainWavLM model: WavLM (+ LoRA) -> windows -> TRs -> delays -> readout
loss         training losses and ROI weighting
metrics      per-voxel and spatial correlation, ROI summaries, noise ceiling
ridge        ridge regression with per-voxel alphas, streamed over voxel blocks
evaluation   the ridge protocol on held-out stories: one path for baseline, trainer and transfer
trainer      the training loop, its per-epoch evaluation, checkpoints, data parallelism
readout_init where the readout starts: the ridge map of an epoch's features, plain or whitened
recovery_checks  planted data: the oracle adapters and the readout's alignment, before training
studies      cross-subject transfer and word-level probes of a tuned model
distributed  the collectives the trainer needs inside a torch.distributed process group
synth        the planted-teacher synthetic dataset
tts          prose spoken by Festival into clips with word times (real speech for synth)
whisper_ct2  a CTranslate2 Whisper converted to a transformers checkpoint
baseline     frozen-feature ridge baseline (``python -m core.baseline``)
train        one training run (``python -m core.train``)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Dataset": "dataset", "Split": "dataset",
    "TrainConfig": "config",
    "WindowSpec": "features", "LanczosOperator": "features", "delay_features": "features",
    "load_wavlm": "wavlm",
    "FrozenFeatures": "extract", "all_window_features": "extract", "to_trs": "extract",
    "BrainModel": "model", "Readout": "model", "adapt": "model",
    "loss_fn": "loss", "voxel_weights": "loss",
    "pearson_r": "metrics", "spatial_r": "metrics", "noise_ceiling": "metrics", "explainable_variance": "metrics",
    "roi_summary": "metrics",
    "RidgeFit": "ridge", "fit_ridge": "ridge", "ALPHAS": "ridge", "ALPHA_CONVENTION": "ridge",
    "Evaluation": "evaluation", "StoryResponses": "evaluation", "ridge_evaluation": "evaluation",
    "score_prediction": "evaluation",
    "Trainer": "trainer",
    "transfer": "studies", "probe": "studies",
    "run_baseline": "baseline",
    "SynthSpec": "synth", "generate": "synth", "speak": "tts",
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
