"""Brain-tuned speech encoding models: the library (no Ray, no MLflow).

Modules
-------
dataset   ds003020-layout reader and writer (audio, responses, TextGrids, ROI masks, splits)
features  causal windows, Lanczos interpolation to TRs, FIR delays, normalisation
wavlm     loading WavLM checkpoints and a forward pass whose attention LoRA can adapt
extract   frozen-feature extraction, cached on disk
metrics   per-voxel and spatial correlation, ROI summaries, noise ceiling
ridge     ridge regression with per-voxel alphas chosen on contiguous TR chunks
synth     the planted-teacher synthetic dataset
baseline  frozen-feature ridge baseline (``python -m core.baseline``)
"""
