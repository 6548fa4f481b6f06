"""Encoding models of fMRI responses: features, their extraction, ridge, metrics, evaluation and the frozen baseline.

Modules
-------
features    causal windows, Lanczos interpolation to TRs, FIR delays, normalisation
extract     window features, frozen features cached on disk, the ridge protocol's TR features
ridge       ridge regression with per-voxel alphas, streamed over voxel blocks
metrics     per-voxel and spatial correlation, ROI summaries, noise ceiling
evaluation  the ridge protocol on held-out stories: one path for baseline, trainer and studies
baseline    the frozen-feature ridge baseline (``python -m core.baseline``)
"""
