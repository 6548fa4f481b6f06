"""Scoring an encoding model on held-out stories, and the ridge protocol of the paper.

:func:`ridge_evaluation` fits ridge (per-voxel alphas, contiguous-chunk CV) from a
feature function's training-story features to the responses, predicts the test stories
and scores them. The frozen baseline (:mod:`core.baseline`) and the tuned model's
evaluation use it alike, so the two numbers are comparable.

Summary keys (stable: scripts and tools read them): ``mean_r`` (whole cortex),
``roi_mean_r`` (ROI name -> mean r), and where the test story has repeats
``ceiling_fraction`` and ``roi_ceiling_fraction`` (see
:func:`core.metrics.mean_ceiling_fraction`), plus ``mean_ceiling``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import metrics
from .ridge import ALPHA_CONVENTION, ALPHAS, fit_ridge


@dataclass
class Evaluation:
    """Per-voxel test scores and their summary.

    Attributes
    ----------
    r : array of shape (n_voxels,), Pearson r on the test stories (NaN voxels NaN).
    ceiling : array of shape (n_voxels,) or None, noise ceiling of the test response.
    summary : dict, see the module docstring.
    alphas : array of shape (n_voxels,) or None, ridge alphas (``alpha_convention``).
    """

    r: np.ndarray
    ceiling: np.ndarray | None
    summary: dict
    alphas: np.ndarray | None = None
    alpha_convention: str = ALPHA_CONVENTION

    def voxel_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}r": self.r}
        if self.ceiling is not None:
            out[f"{prefix}ceiling"] = self.ceiling
        if self.alphas is not None:
            out[f"{prefix}alpha"] = self.alphas
        return out


def encoding_summary(r: np.ndarray, roi_masks: dict[str, np.ndarray], ceiling: np.ndarray | None = None) -> dict:
    """Whole-cortex and per-ROI mean r, and fractions of the noise ceiling when known."""
    summary = {"mean_r": metrics.mean_r(r), "roi_mean_r": metrics.roi_summary(r, roi_masks)}
    if ceiling is not None:
        summary["mean_ceiling"] = metrics.mean_r(ceiling)
        summary["ceiling_fraction"] = metrics.mean_ceiling_fraction(r, ceiling)
        summary["roi_ceiling_fraction"] = {
            name: metrics.mean_ceiling_fraction(r, ceiling, mask) for name, mask in roi_masks.items()
        }
    return summary


def held_out_responses(dataset, subject: str, stories) -> tuple[np.ndarray, np.ndarray | None]:
    """Responses of the test stories stacked over time, and the ceiling if every story has repeats.

    Returns
    -------
    responses : array of shape (n_test_trs, n_voxels)
    ceiling : array of shape (n_voxels,) or None; with several test stories, the
        ceiling of the concatenation is computed from the concatenated repeats.
    """
    responses = np.concatenate([dataset.responses(subject, s) for s in stories])
    repeats = [dataset.repeats(subject, s) for s in stories]
    if any(rep is None for rep in repeats) or len({rep.shape[0] for rep in repeats}) != 1:
        return responses, None
    return responses, metrics.noise_ceiling(np.concatenate(repeats, axis=1), against="mean")


def score(prediction: np.ndarray, responses: np.ndarray, roi_masks: dict, ceiling=None) -> Evaluation:
    """Score a prediction of shape (n_trs, n_voxels) against responses of the same shape."""
    r = metrics.pearson_r(prediction, responses)
    return Evaluation(r=r, ceiling=ceiling, summary=encoding_summary(r, roi_masks, ceiling))


def ridge_evaluation(
    features: Callable[[str], np.ndarray],
    dataset,
    subject: str,
    train: tuple[str, ...],
    test: tuple[str, ...],
    *,
    alphas=ALPHAS,
    chunk_len: int = 40,
    seed: int = 0,
    backend: str = "numpy",
    progress: Callable[[str], None] = lambda message: None,
) -> Evaluation:
    """Fit ridge on the training stories' features and score it on the test stories.

    Parameters
    ----------
    features : story -> array of shape (n_trs(story), n_features)
    train, test : story names.
    alphas, chunk_len, seed, backend : see :func:`core.ridge.fit_ridge`.
    """
    X = np.concatenate([features(s) for s in train])
    Y = np.concatenate([dataset.responses(subject, s) for s in train])
    progress(f"ridge: {X.shape[0]} TRs x {X.shape[1]} features -> {Y.shape[1]} voxels, {len(np.atleast_1d(alphas))} alphas")
    fit = fit_ridge(X, Y, alphas=alphas, chunk_len=chunk_len, seed=seed, backend=backend)
    responses, ceiling = held_out_responses(dataset, subject, test)
    prediction = np.concatenate([fit.predict(features(s)) for s in test])
    result = score(prediction, responses, dataset.roi_masks(subject), ceiling)
    result.alphas = fit.alphas
    return result
