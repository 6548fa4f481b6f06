"""Cross-subject transfer: other subjects' readouts on a tuned model's story features and on the pretrained model's.

The tuned model's features (:class:`core.tuning.story_features.StoryFeatures`, the best
epoch's in :func:`core.run.run`) are compared with the pretrained model's through the same
pipeline, so only the backbone differs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core.encoding.evaluation import Evaluation, ridge_evaluation, score_prediction
from core.studies.readouts import fit_bottleneck_readouts, ridge_readout
from core.tuning.loss import voxel_weights
from core.tuning.model import readout_prediction

__all__ = ["transfer", "story_subsets"]


def story_subsets(stories, fractions, seed: int) -> dict[float, list[str]]:
    """Nested subsets of ``stories`` for each share below 1: the first ``ceil(f * n)`` (>= 2) in a seeded order."""
    order = [stories[i] for i in np.random.default_rng([seed, 13]).permutation(len(stories))]
    return {f: sorted(order[:max(2, math.ceil(f * len(order)))]) for f in fractions if f < 1}


def transfer(features, subjects: list[str]) -> dict[str, dict[str, Evaluation]]:
    """Other subjects' readouts on ``features``' current model and on the pretrained model.

    The cross-subject transfer of the paper: the backbone is kept fixed and a new ridge
    readout is fitted on each subject's training stories, then scored on its test
    stories; the same on the pretrained model's features is the reference. Each also
    gets a bottleneck readout trained on those fixed features
    (:func:`fit_bottleneck_readouts`), the paper's readout. A story's window vectors do
    not depend on the subject: they are computed once for every subject.

    Data efficiency (``config.transfer_fractions``): for each share ``f`` below 1, the two
    ridge readouts are fitted again on the first ``ceil(f * n)`` (at least 2) of the
    subject's ``n`` training stories in a seeded order, so that the subsets are nested,
    and scored on the same test stories: ``baseline@f`` and ``tuned@f``. Share 1 is
    ``baseline`` and ``tuned``.

    Returns ``{subject: {"baseline", "tuned", "baseline_readout", "tuned_readout",
    "baseline@f", "tuned@f", ...}}`` -> Evaluation.
    """
    if not subjects:
        return {}
    config, dataset, device = features.config, features.dataset, features.device
    splits = {s: dataset.split(s, test=config.test_stories, val=config.val_stories) for s in subjects}
    stories = sorted({story for split in splits.values() for story in (*split.train, *split.test)})
    features.progress(f"transfer to {', '.join(subjects)}: window vectors of {len(stories)} stories")
    vectors = {"baseline": features.window_vectors(stories, features.frozen()),
               "tuned": features.window_vectors(stories)}
    results = {}
    for subject, split in splits.items():
        weights = voxel_weights(config.roi_weights, dataset.roi_masks(subject), dataset.nan_voxels(subject))
        outputs = np.flatnonzero(weights > 0)
        results[subject] = {}
        by_model = {name: {} for name in vectors}
        for story in (*split.train, *split.test):  # each story's audio read once for both models
            tr = features.tr_features(story, dataset.tr_times(subject, story), {n: v[story] for n, v in vectors.items()})
            for name, x in tr.items():
                by_model[name][story] = x
        readouts = {}
        for name, tr_x in by_model.items():
            fit, scored = ridge_evaluation(tr_x, dataset, subject, split.train, {"test": split.test},
                                           seed=config.seed, backend=config.ridge_backend)
            results[subject][name] = scored["test"]
            readouts[name] = ridge_readout(fit, outputs, config, device)
            del fit
            for fraction, stories in story_subsets(split.train, config.transfer_fractions, config.seed).items():
                _, scored = ridge_evaluation(tr_x, dataset, subject, stories, {"test": split.test},
                                             seed=config.seed, backend=config.ridge_backend)
                results[subject][f"{name}@{fraction:g}"] = scored["test"]
        fit_bottleneck_readouts({name: {s: f[s] for s in split.train} for name, f in by_model.items()},
                                lambda story: dataset.responses(subject, story, voxels=outputs),
                                readouts, weights[outputs], config, device)
        for name, readout in readouts.items():
            test_x = torch.as_tensor(np.concatenate([by_model[name][s] for s in split.test]), device=device)
            predict = readout_prediction(readout, test_x, outputs, len(weights))
            results[subject][f"{name}_readout"] = score_prediction(predict, dataset, subject, split.test)
    return results


