"""Where the trainable readout starts: the ridge map of an epoch's features, plain or whitened.

The backbone only gets error through the readout (gradient on the features =
``readout_weight^T error``). Started as the ridge map of the frozen features, the readout
gives almost no weight to feature directions of low variance, since the ridge shrinks a
direction of variance ``s`` by ``s / (s + alpha)``; so a change that moves the features
along such directions (the planted change on Whisper tiny.en: docs/real_speech.md) gets
almost no gradient. A ridge fitted on *whitened* features shrinks every direction alike;
folded back into the feature space its weights on low-variance directions are larger
(``readout_whiten``, the shrinkage of the whitening: smaller whitens more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.encoding.evaluation import ridge_evaluation
from core.tuning.model import ridge_as_linear

__all__ = ["whitening", "whitened_ridge_map"]


def whitening(X: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation and shrunk whitening of ``X``: ``((X - mean) / std) @ P`` has about unit covariance.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    shrinkage : added to the eigenvalues of the standardised features' correlation matrix
        (whose mean eigenvalue is 1) before the inverse square root, so directions of
        variance well below ``shrinkage`` are not blown up by noise.

    Returns
    -------
    mean, std : arrays of shape (n_features,) (std 1 where a feature is constant)
    P : array of shape (n_features, n_features), symmetric.
    """
    mean = X.mean(0)
    std = X.std(0)
    std[std == 0] = 1.0
    Xs = (X - mean) / std
    values, vectors = np.linalg.eigh(Xs.T @ Xs / len(Xs))
    P = (vectors / np.sqrt(np.clip(values, 0, None) + shrinkage)) @ vectors.T
    return mean, std, P.astype(np.float32)


def whitened_ridge_map(features: Mapping[str, np.ndarray], dataset, subject: str, train: Sequence[str],
                       outputs: np.ndarray, shrinkage: float, *, seed: int = 0,
                       backend: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """The ridge map fitted on whitened training features, folded back to a map of the features.

    Parameters
    ----------
    features : story -> array of shape (n_trs, n_features)
    train : the training stories the whitening and the ridge are fitted on.
    outputs : int array of shape (n_outputs,), the voxels of the map.
    shrinkage : of :func:`whitening`.

    Returns
    -------
    weight : array of shape (n_features, n_outputs)
    bias : array of shape (n_outputs,), so that the prediction is ``x @ weight + bias``.
    """
    X = np.concatenate([features[s] for s in train]).astype(np.float64)
    mean, std, P = whitening(X, shrinkage)
    del X
    whitened = {s: (((features[s] - mean) / std) @ P).astype(np.float32) for s in train}
    fit, _ = ridge_evaluation(whitened, dataset, subject, train, {}, seed=seed, backend=backend)
    w, b = ridge_as_linear(fit, outputs)
    # x -> ((x - mean) / std) @ P @ w + b
    weight = (P @ w) / std[:, None]
    return weight.astype(np.float32), (b - (mean / std) @ (P @ w)).astype(np.float32)
