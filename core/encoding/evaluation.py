"""Scoring an encoding model on held-out stories, and the ridge protocol of the paper.

:func:`ridge_evaluation` fits ridge (per-voxel alphas, contiguous-chunk CV) from a
feature function's training-story features to the responses, predicts each held-out
set of stories (validation, test) and scores them. The frozen baseline
(:mod:`core.encoding.baseline`) and the tuned model's evaluation use it alike, so the two
numbers are comparable.

Memory
------
Nothing here holds all voxels of all training stories: :class:`StoryResponses` reads
one block of voxel columns at a time from the response files, the ridge solves one
block at a time, and held-out sets are predicted, scored and their noise ceiling
computed block by block; a model's own readout is scored the same way
(:func:`prediction_r` takes a function of the voxel block). What grows with the voxel
count is the fit's weights (n_features x n_voxels, float32) and per-voxel results.

Summary keys (stable: scripts and tools read them): ``mean_r`` (whole cortex),
``roi_mean_r`` (ROI name -> mean r), and where the stories have repeats
``ceiling_fraction`` and ``roi_ceiling_fraction`` (see
:func:`core.encoding.metrics.mean_ceiling_fraction`), plus ``mean_ceiling``. A ridge evaluation
adds ``alpha_edge_fraction``: the fraction of voxels whose alpha is at either end of
the grid (:attr:`core.encoding.ridge.RidgeFit.edge_fraction`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.encoding import metrics
from core.encoding.ridge import ALPHA_CONVENTION, ALPHAS, BLOCK_BYTES, RidgeFit, fit_ridge

# Working memory of one voxel block when scoring held-out stories or computing a
# ceiling (these have few rows, so blocks can be wide).
_SCORE_BLOCK_BYTES = 32 * 2**20


@dataclass
class Evaluation:
    """Per-voxel scores on held-out stories and their summary.

    Attributes
    ----------
    r : array of shape (n_voxels,), Pearson r on the held-out stories (NaN voxels NaN).
    ceiling : array of shape (n_voxels,) or None, noise ceiling of the held-out response.
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


class StoryResponses:
    """One subject's responses to a list of stories, stacked over time, read per voxel block.

    Stands for the (n_trs, n_voxels) array :func:`core.encoding.ridge.fit_ridge` takes without
    loading it: :meth:`block` reads only the requested columns of each story's file.

    Parameters
    ----------
    dataset : core.data.dataset.Dataset
    subject : str
    stories : sequence of str, in the order their rows are stacked.

    Attributes
    ----------
    shape : (total n_trs, n_voxels)
    story_lengths : list of int, rows of each story.
    """

    def __init__(self, dataset, subject: str, stories: Sequence[str]):
        self.dataset = dataset
        self.subject = subject
        self.stories = tuple(stories)
        self.story_lengths = [dataset.n_trs(subject, story) for story in self.stories]
        self.shape = (sum(self.story_lengths), dataset.n_voxels(subject))

    def block(self, start: int, stop: int) -> np.ndarray:
        """Columns ``start:stop`` of every story, stacked: float32 of shape (n_trs, stop - start)."""
        out = np.empty((self.shape[0], stop - start), dtype=np.float32)
        row = 0
        for story, n_rows in zip(self.stories, self.story_lengths):
            out[row:row + n_rows] = self.dataset.responses(self.subject, story, voxels=slice(start, stop))
            row += n_rows
        return out


def _voxel_blocks(n_voxels: int, n_rows: int, block_bytes: int = _SCORE_BLOCK_BYTES):
    """Consecutive ``slice``s of voxels whose (n_rows, n_block) float64 work arrays fit in block_bytes."""
    width = max(1, block_bytes // (8 * 4 * max(n_rows, 1)))
    return [slice(start, min(start + width, n_voxels)) for start in range(0, n_voxels, width)]


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


def held_out_ceiling(dataset, subject: str, stories: Sequence[str]) -> np.ndarray | None:
    """Noise ceiling of the stories' stacked responses, computed one voxel block at a time.

    Returns
    -------
    ceiling : array of shape (n_voxels,), or None unless every story has repeats, all
        with the same number of repeats. With several stories, the ceiling of the
        concatenation is computed from the concatenated repeats (against their mean).
    """
    n_voxels = dataset.n_voxels(subject)
    # Repeats have a handful of times the rows of a story: size the blocks for that.
    n_rows = 10 * sum(dataset.n_trs(subject, story) for story in stories)
    ceiling = np.empty(n_voxels)
    for block in _voxel_blocks(n_voxels, n_rows):
        repeats = [dataset.repeats(subject, story, voxels=block) for story in stories]
        if any(rep is None for rep in repeats) or len({rep.shape[0] for rep in repeats}) != 1:
            return None
        ceiling[block] = metrics.noise_ceiling(np.concatenate(repeats, axis=1), against="mean")
    return ceiling


def prediction_r(prediction: np.ndarray | Callable[[slice], np.ndarray], dataset, subject: str,
                 stories: Sequence[str], block_bytes: int = _SCORE_BLOCK_BYTES) -> np.ndarray:
    """Per-voxel r of a prediction of ``stories``, read one voxel block at a time.

    Parameters
    ----------
    prediction : array of shape (n_trs, n_voxels) (NaN columns give NaN), or a callable
        that returns the columns of a ``slice`` of voxels, shape (n_trs, width), such as
        :func:`core.tuning.model.readout_prediction`: then no array of all voxels is ever made.

    Memory holds the prediction (or one block of it) and one block of responses, never
    all of them.
    """
    responses = StoryResponses(dataset, subject, stories)
    whole = isinstance(prediction, np.ndarray)
    if whole and prediction.shape != responses.shape:
        raise ValueError(f"{subject}: a prediction of shape {prediction.shape} for {', '.join(stories)}, "
                         f"whose responses are {responses.shape}")
    r = np.empty(responses.shape[1])
    for block in _voxel_blocks(responses.shape[1], responses.shape[0], block_bytes):
        predicted = prediction[:, block] if whole else prediction(block)
        expected = (responses.shape[0], block.stop - block.start)
        if not whole and predicted.shape != expected:
            raise ValueError(f"{subject}: a prediction of voxels {block.start}:{block.stop} of "
                             f"{', '.join(stories)} has shape {predicted.shape}, expected {expected}")
        r[block] = metrics.pearson_r(predicted, responses.block(block.start, block.stop))
    return r


def score_prediction(prediction: np.ndarray | Callable[[slice], np.ndarray], dataset, subject: str,
                     stories: Sequence[str], roi_masks: dict | None = None) -> Evaluation:
    """Score a prediction of held-out ``stories`` (see :func:`prediction_r`) streamed by voxel block, with the ceiling."""
    r = prediction_r(prediction, dataset, subject, stories)
    ceiling = held_out_ceiling(dataset, subject, stories)
    roi_masks = dataset.roi_masks(subject) if roi_masks is None else roi_masks
    return Evaluation(r=r, ceiling=ceiling, summary=encoding_summary(r, roi_masks, ceiling))


def evaluate_fit(fit: RidgeFit, X: np.ndarray, dataset, subject: str, stories: Sequence[str],
                 roi_masks: dict | None = None) -> Evaluation:
    """Score a ridge fit on held-out stories, one voxel block at a time.

    Parameters
    ----------
    fit : RidgeFit
    X : array of shape (n_held_out_trs, n_features), the stories' features, stacked.
    stories : the held-out stories, in the order of X's rows.
    roi_masks : dict of str -> bool array of shape (n_voxels,); the subject's by default.

    Returns
    -------
    Evaluation
        With the ceiling where every story has repeats, the fit's alphas, and
        ``alpha_edge_fraction`` in the summary.
    """
    responses = StoryResponses(dataset, subject, stories)
    if X.shape[0] != responses.shape[0]:
        raise ValueError(f"{subject}: features of {', '.join(stories)} have {X.shape[0]} rows, "
                         f"their responses {responses.shape[0]}")
    r = np.empty(responses.shape[1])
    for block in _voxel_blocks(responses.shape[1], responses.shape[0]):
        r[block] = metrics.pearson_r(fit.predict(X, voxels=block), responses.block(block.start, block.stop))
    ceiling = held_out_ceiling(dataset, subject, stories)
    roi_masks = dataset.roi_masks(subject) if roi_masks is None else roi_masks
    summary = {**encoding_summary(r, roi_masks, ceiling), "alpha_edge_fraction": fit.edge_fraction}
    return Evaluation(r=r, ceiling=ceiling, summary=summary, alphas=fit.alphas)


def ridge_evaluation(
    features: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
    dataset,
    subject: str,
    train: Sequence[str],
    held_out: Mapping[str, Sequence[str]],
    *,
    alphas=ALPHAS,
    chunk_len: int = 40,
    seed: int = 0,
    backend: str = "numpy",
    voxel_block: int | None = None,
    block_bytes: int = BLOCK_BYTES,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[RidgeFit, dict[str, Evaluation]]:
    """Fit ridge on the training stories' features and score it on each held-out set.

    Parameters
    ----------
    features : mapping or callable, story -> array of shape (n_trs(story), n_features)
    train : training story names.
    held_out : mapping of set name (e.g. "val", "test") -> story names; sets with no
        stories are skipped.
    alphas, chunk_len, seed, backend, voxel_block, block_bytes : see
        :func:`core.encoding.ridge.fit_ridge`.
    progress : callable receiving one-line messages.

    Returns
    -------
    fit : RidgeFit
    evaluations : dict of set name -> Evaluation
    """
    story_features = features.__getitem__ if isinstance(features, Mapping) else features
    X = np.concatenate([np.asarray(story_features(story), dtype=np.float32) for story in train])
    Y = StoryResponses(dataset, subject, train)
    progress(f"ridge: {X.shape[0]} TRs x {X.shape[1]} features -> {Y.shape[1]} voxels, "
             f"{len(np.atleast_1d(alphas))} alphas")
    fit = fit_ridge(X, Y, alphas=alphas, chunk_len=chunk_len, seed=seed, backend=backend,
                    voxel_block=voxel_block, block_bytes=block_bytes)
    del X
    roi_masks = dataset.roi_masks(subject)
    evaluations = {}
    for name, stories in held_out.items():
        if not stories:
            continue
        X_held = np.concatenate([np.asarray(story_features(story), dtype=np.float32) for story in stories])
        evaluations[name] = evaluate_fit(fit, X_held, dataset, subject, stories, roi_masks)
    return fit, evaluations
