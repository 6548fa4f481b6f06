"""Two checks to run before spending training time on a planted-teacher dataset (:mod:`core.synth`).

- **The oracle adapters** (:func:`write_oracle_adapters`): the teacher's weight change
  (teacher minus pretrained, on every adapted module) written into the LoRA adapters. A
  ridge on the adapted model's features, made by the trainer's own pipeline (windows,
  positions, normalisation, read-out layer), must then score as the teacher's ridge does:
  ~100% of the frozen-to-teacher gap. Less means the trainer's pipeline and the reference
  differ (a bug), or the adapters cannot hold the change (rank below the plant's).
- **The readout alignment** (:func:`alignment_cosine`): the cosine between the descent
  direction of the training loss on the read-out window vectors, through the readout as
  it starts, and the direction from the frozen to the teacher's window vectors. Near 0
  the backbone gets almost no gradient towards the change (docs/real_speech.md).
"""

from __future__ import annotations

import numpy as np
import torch

from core import backbones
from core.encoding.evaluation import ridge_evaluation
from core.encoding.extract import FrozenFeatures
from core.tuning.batches import epoch_blocks
from core.tuning.loss import loss_fn
from core.tuning.trainer import Trainer

__all__ = ["write_oracle_adapters", "teacher_window_vectors", "ridge_test_r", "alignment_cosine"]


@torch.no_grad()
def write_oracle_adapters(trainer: Trainer, teacher: str) -> float:
    """Write ``teacher``'s weight change into the trainer's LoRA adapters (best rank-``lora_rank`` fit).

    Returns the largest share of a change's norm the adapters cannot hold (0 when each
    change's rank is at most ``lora_rank``).
    """
    config = trainer.config
    if config.lora_rank == 0:
        raise ValueError("lora_rank: 0 trains the layers' weights, not adapters; the oracle check needs adapters")
    net = trainer.model.wavlm
    reference = backbones.load_backbone(teacher)
    lost = 0.0
    for layer in config.lora_layer_list():
        for target in config.lora_targets:
            name = backbones.target_module_name(net.config, layer, target)
            module = net.get_submodule(name)
            delta = reference.get_submodule(name).weight.float() - module.base_layer.weight.float()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            k = config.lora_rank
            root = (s[:k] / module.scaling["default"]).sqrt()
            module.lora_B["default"].weight.copy_(u[:, :k] * root)
            module.lora_A["default"].weight.copy_(root[:, None] * vh[:k])
            norm = float(s.norm())
            lost = max(lost, float(s[k:].norm()) / norm if norm > 0 else 0.0)
    return lost


def teacher_window_vectors(trainer: Trainer, teacher: str, stories) -> dict[str, torch.Tensor]:
    """The teacher's read-out window vectors (n_windows, hidden_size) of ``stories``, by the baseline's extractor."""
    extractor = FrozenFeatures(teacher, trainer.spec, device=str(trainer.device), cnn_cache=trainer.features.cnn_cache,
                               batch_windows=trainer.config.batch_windows)
    return trainer.features.window_vectors(stories, extractor)


def ridge_test_r(trainer: Trainer, vectors: dict[str, torch.Tensor]) -> np.ndarray:
    """Per-voxel test r (n_voxels,) of the trainer's ridge protocol on window vectors of every story of the run."""
    features = {s: trainer.model.ridge_features(trainer.story_input(s, targets=False), vectors[s]) for s in trainer.cohort.stories}
    _, scored = ridge_evaluation(features, trainer.dataset, trainer.subject, trainer.split.train,
                                 {"test": trainer.split.test}, seed=trainer.config.seed, backend=trainer.config.ridge_backend)
    return scored["test"].r


def alignment_cosine(trainer: Trainer, frozen: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> float:
    """Cosine between the training loss's descent direction on the window vectors and ``teacher - frozen``.

    The loss is one epoch's, over the trainer's blocks of its training stories, through
    the run's own readout as it stands (call after epoch 0 has set it up).

    Parameters
    ----------
    frozen, teacher : story -> window vectors (n_windows, hidden_size) of every training story.
    """
    model = trainer.model
    model.eval()  # the normalisation statistics stay as epoch 0 set them
    stories = trainer.split.train
    leaves = {s: frozen[s].to(trainer.device).clone().requires_grad_(True) for s in stories}
    blocks = epoch_blocks({s: trainer.cohort.story_trs[s] for s in stories}, trainer.config.block_trs, trainer.config.seed, 1)
    for story, start, stop in blocks:
        inp = trainer.story_input(story)
        pred = model.readout(model.head(leaves[story], inp, slice(start, stop)))
        loss = loss_fn(trainer.config.loss, pred, inp.responses[trainer.subject][start:stop], trainer.loss_weights)
        (loss / len(blocks)).backward()
    descent = torch.cat([-leaves[s].grad.flatten() for s in stories])
    towards = torch.cat([(teacher[s].to(trainer.device) - frozen[s].to(trainer.device)).flatten() for s in stories])
    return float(torch.nn.functional.cosine_similarity(descent.double(), towards.double(), dim=0))
