"""A model's story features, current or frozen: window vectors, per-layer window features, ridge TR features."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.extract import FrozenFeatures, all_window_features
from core.encoding.features import WindowSpec
from core.tuning.batches import InputCache
from core.tuning.model import BrainModel


class StoryFeatures:
    """Features of stories under the model as it is now (``tuned``), or under the pretrained model (``pretrained``).

    What the per-epoch protocol and the studies (:mod:`core.studies`) read of a model: they
    need features over stories, not the training loop. The pretrained model's window
    features come from the disk cache (:class:`core.encoding.extract.FrozenFeatures`,
    shared by every trial of a sweep).

    Attributes
    ----------
    model, dataset, config, spec : the model, its dataset, the run's settings and window spec.
    cnn_cache : whether the story-level CNN cache is used (see :func:`core.encoding.extract.resolve_cnn_cache`).
    device : where the model runs.
    progress : callable taking a message.
    """

    def __init__(self, model: BrainModel, dataset: Dataset, config: TrainConfig, spec: WindowSpec, cnn_cache,
                 model_name: str, inputs: InputCache, device: torch.device,
                 progress: Callable[[str], None] = lambda m: None):
        self.model, self.dataset, self.config, self.spec = model, dataset, config, spec
        self.cnn_cache, self.model_name, self.inputs, self.device = cnn_cache, model_name, inputs, device
        self.progress = progress

    def frozen(self) -> FrozenFeatures:
        """The pretrained model's window features, cached on disk (shared by every trial of a sweep)."""
        return FrozenFeatures(self.model_name, self.spec, device=str(self.device), cnn_cache=self.cnn_cache,
                              batch_windows=self.config.batch_windows)

    @contextmanager
    def eval_mode(self):
        """The model in eval mode inside the block (no adapter dropout, no layer drop), restored after."""
        training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(training)

    def window_vectors(self, stories, frozen: FrozenFeatures | None = None) -> dict[str, torch.Tensor]:
        """Window vectors (n_windows, hidden_size) of ``stories``: the current model's, or ``frozen``'s (on the CPU).

        Always in float32, whatever ``precision`` trains with: ``frozen``'s (epoch 0's, and
        the pretrained side of the studies) come from the fp32 disk cache that every trial
        and :mod:`core.encoding.baseline` share, so the current model's are computed in fp32
        too; ``best_epoch`` and the gain then compare models, not precisions. Evaluation is
        forward-only, so fp32 costs little next to training.
        """
        out = {}
        with self.eval_mode():
            for story in stories:
                if frozen is not None:
                    _, layers = frozen.window_features(self.dataset, story, self.model.readout_layers)
                    # Mixed by the learned layer weights, on the model's device.
                    layers = {k: torch.from_numpy(v).to(self.model.device) for k, v in layers.items()}
                    with torch.no_grad():
                        out[story] = self.model.mix_layers(layers).cpu()
                else:
                    out[story] = self.model.all_window_features(self.inputs.story_input(story, targets=False),
                                                                self.config.batch_windows).cpu()
        return out

    def tr_features(self, story: str, tr_times: np.ndarray, vectors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The ridge protocol's TR features of one story on ``tr_times`` (a subject's), for each set of window vectors.

        ``vectors``: name -> window vectors of the story (n_windows, hidden_size). The
        story's audio is read once for every set. Returns name -> array of shape
        (n_trs, len(delays) * hidden_size).
        """
        inp = self.model.prepare(story, self.dataset.audio(story), tr_times)
        return {name: self.model.ridge_features(inp, v) for name, v in vectors.items()}

    def layer_features(self, story: str, layers: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The current model's window times (n_windows,) and features {layer: (n_windows, hidden_size)} of a story."""
        with self.eval_mode():  # no adapter dropout in the features
            return all_window_features(self.model.wavlm, self.dataset.audio(story), self.spec, layers,
                                       batch_windows=self.config.batch_windows, cnn_cache=self.cnn_cache,
                                       device=self.device)
