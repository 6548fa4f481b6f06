"""An epoch's batches: blocks of TRs in a seeded order, each worker's share of a step, and the prepared-input cache."""

from __future__ import annotations

import numpy as np
import torch

from core.data.dataset import Dataset
from core.tuning.members import Cohort
from core.tuning.model import BrainModel, StoryInput

#: Prepared story inputs (audio, frozen CNN output, targets) kept between uses, in bytes.
INPUT_CACHE_BYTES = 2**30


def epoch_blocks(stories: dict[str, int], block_trs: int, seed: int, epoch: int) -> list[tuple[str, int, int]]:
    """The epoch's blocks: (story, first TR, stop TR), stories in a seeded order.

    A story's last block may be shorter; one of fewer than 2 TRs is dropped (a temporal
    correlation needs two).
    """
    order = np.random.default_rng([seed, epoch]).permutation(sorted(stories))
    blocks = []
    for story in order:
        n = stories[story]
        blocks += [(story, a, min(a + block_trs, n)) for a in range(0, n, block_trs) if min(a + block_trs, n) - a >= 2]
    return blocks


def cohort_blocks(cohort: Cohort, block_trs: int, seed: int, epoch: int, interleaved: bool) -> list[tuple]:
    """The epoch's blocks over the cohort's training stories.

    With ``interleaved``, each subject takes its own step on the same block in turn
    (subjects of weight 0 take none): the blocks are (story, first TR, stop TR, subject).
    """
    blocks = epoch_blocks({s: cohort.story_trs[s] for s in cohort.train_stories}, block_trs, seed, epoch)
    if interleaved:
        blocks = [(story, start, stop, m.name) for story, start, stop in blocks for m in cohort.members
                  if m.weight > 0 and story in m.split.train]
    return blocks


def worker_steps(blocks: list[tuple], per_step: int, rank: int, world: int) -> list[list[tuple]]:
    """This worker's blocks of each step: ``per_step`` blocks a step, shared by ``world`` workers.

    Every worker takes the same number of steps; blocks left over after the last full step are skipped.
    """
    share = per_step // world
    return [blocks[step * per_step + rank * share:step * per_step + (rank + 1) * share]
            for step in range(len(blocks) // per_step)]


class InputCache:
    """Prepared story inputs with the trained subjects' targets, the most recently used kept.

    Prepared inputs (audio, frozen CNN output, targets) are kept, the most recently used
    first, up to ``INPUT_CACHE_BYTES``: a small dataset is prepared once per run, and on a
    large one a story's CNN runs once per visit.
    """

    def __init__(self, model: BrainModel, dataset: Dataset, cohort: Cohort, device: torch.device):
        self.model, self.dataset, self.cohort, self.device = model, dataset, cohort, device
        self._inputs: dict[str, StoryInput] = {}  # least recently used first

    def story_input(self, story: str, targets: bool = True) -> StoryInput:
        """The story's prepared input, with the trained subjects' targets (for training) if asked."""
        inp = self._inputs.pop(story, None)
        if inp is None:
            inp = self.model.prepare(story, self.dataset.audio(story),
                                     self.dataset.tr_times(self.cohort.story_subject[story], story))
        if targets and not inp.responses:
            for m in self.cohort.members:
                if story in m.split.train:
                    responses = self.dataset.responses(m.name, story, voxels=m.outputs)
                    inp.responses[m.name] = torch.as_tensor(responses, dtype=torch.float32, device=self.device)
        self._inputs[story] = inp
        held = sum(kept.nbytes for kept in self._inputs.values())
        while len(self._inputs) > 1 and held > INPUT_CACHE_BYTES:
            held -= self._inputs.pop(next(iter(self._inputs))).nbytes
        return inp
