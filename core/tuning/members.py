"""Which subjects a run trains and on which stories: each subject's split, voxels and weights, and the stories' TRs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.config import TrainConfig
from core.data.dataset import Dataset, Split
from core.errors import ConfigError
from core.tuning.loss import voxel_weights


@dataclass
class Member:
    """One subject trained by a run: its split, voxels and weights.

    Attributes
    ----------
    name : the subject.
    weight : its loss weight in a step (``subject_weights``), and its weight in the best-epoch choice.
    split : its train / validation / test stories.
    roi_masks : ROI name -> bool array of shape (n_voxels,).
    voxel_weights : array of shape (n_voxels,), the ROI weighting (0 = not predicted).
    outputs : int array, the voxels its readout predicts.
    """

    name: str
    weight: float
    split: Split
    roi_masks: dict[str, np.ndarray]
    voxel_weights: np.ndarray
    outputs: np.ndarray


@dataclass
class Cohort:
    """The subjects a run trains on one backbone (the run's own first) and the stories they bring.

    Attributes
    ----------
    members : the trained subjects, the run's own first.
    train_stories : every trained subject's training stories, sorted.
    stories : the training stories, then each held-out (validation or test) story once.
    story_trs : story -> its number of TRs.
    story_subject : story -> the first subject that has it (whose TR times its input uses).
    """

    members: list[Member]
    train_stories: list[str]
    stories: list[str]
    story_trs: dict[str, int]
    story_subject: dict[str, str]

    @classmethod
    def load(cls, config: TrainConfig, dataset: Dataset, subject: str) -> Cohort:
        """The subjects ``config`` trains with ``subject`` (each checked against ``dataset``), and their stories."""
        members = []
        for name, weight in zip(config.training_subjects(subject), config.subject_weight_list(subject)):
            dataset.validate(name)
            masks = dataset.roi_masks(name)
            try:
                weights = voxel_weights(config.roi_weights, masks, dataset.nan_voxels(name))
            except ConfigError as error:
                raise ConfigError(f"{name}: {error}") from None
            members.append(Member(name, weight, dataset.split(name, test=config.test_stories, val=config.val_stories),
                                  masks, weights, np.flatnonzero(weights > 0)))
        train_stories = sorted({s for m in members for s in m.split.train})
        held_out = [s for m in members for s in (*m.split.val, *m.split.test)]
        return cls(members, train_stories, [*train_stories, *dict.fromkeys(held_out)], *_story_trs(members, dataset))

    @property
    def subjects(self) -> list[str]:
        """The trained subjects, the run's own first."""
        return [m.name for m in self.members]

    def interleaved(self, config: TrainConfig) -> bool:
        """Whether each subject takes its own steps (``subject_steps: interleaved`` with several subjects)."""
        return len(self.members) > 1 and config.subject_steps == "interleaved"


def _story_trs(members: list[Member], dataset: Dataset) -> tuple[dict[str, int], dict[str, str]]:
    """TRs of every story, and the first subject that has it.

    Co-trained subjects must agree on each story they share: one backbone pass serves all.
    """
    trs, first = {}, {}
    for m in members:
        for story in (*m.split.train, *m.split.val, *m.split.test):
            n = dataset.n_trs(m.name, story)
            if story in trs and trs[story] != n:
                raise ConfigError(f"subjects: story {story!r} has {trs[story]} TRs for {first[story]} and {n} for "
                                  f"{m.name}; subjects trained together need the same TRs of each shared story")
            trs.setdefault(story, n)
            first.setdefault(story, m.name)
    return trs, first
