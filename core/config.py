"""Every setting of a training run, in one validated object: :class:`TrainConfig`.

The same names are used in YAML config files, in ``--set name=value`` overrides, in the
MLflow params of a run (:meth:`TrainConfig.flat_params`) and in its summary
(:meth:`TrainConfig.to_dict`). Every construction is validated; checks that need the
model or the subject's data are in :meth:`TrainConfig.check_against`.

=================  =============================  ==========================================
setting            default                        meaning
=================  =============================  ==========================================
model              null                           WavLM, HuBERT, wav2vec2 or Whisper checkpoint folder
                                                  or hub id; null = the dataset's
                                                  ``pretrained/`` folder
readout_layer      9                              transformer layer read out, 1-based as
                                                  transformers' ``hidden_states[k]``
readout_layers     null                           >= 2 layers whose learned softmax-weighted
                                                  sum is read out instead; readout_layer must
                                                  then be their maximum (set for you when
                                                  only readout_layers is given)
lora_layers        null                           transformer layers that are trained; null =
                                                  every layer 1..readout_layer
lora_rank          4                              LoRA rank; 0 = full fine-tuning of the
                                                  lora_layers (no adapters)
lora_alpha         4.0                            LoRA scale numerator (scale = alpha / rank)
lora_dropout       0.1                            dropout on the adapters' input, in [0, 1)
lora_targets       [q_proj, k_proj, v_proj]       modules of each layer that get adapters:
                                                  q_proj, k_proj, v_proj, out_proj,
                                                  intermediate_dense, output_dense (Whisper:
                                                  fc1, fc2)
lr                 1.0e-4                         learning rate of the adapters (or of the
                                                  fine-tuned layers); 0 holds them fixed
                                                  (only the readout trains: the control)
readout_lr         1.0e-4                         learning rate of the readout
weight_decay       0.0                            AdamW weight decay
epochs             20                             passes over the training stories; 0 = the
                                                  ridge readout only
block_trs          10                             TRs per block; one block's loss is one
                                                  term of an optimiser step's mean loss
blocks_per_step    null                           blocks per optimiser step, over all
                                                  data-parallel workers together (a multiple
                                                  of their number); null = one per worker.
                                                  The same value gives the same numbers on 1
                                                  worker or several
bottleneck         100                            readout rank; 0 = one full linear map
loss               spatial                        spatial (correlation across voxels per TR),
                                                  temporal (per voxel across TRs) or mse
roi_weights        {}                             ROI name -> loss weight; ``rest`` = voxels in
                                                  no named ROI; {} = whole cortex, equally
readout_init       ridge                          ridge (from the epoch-0 ridge fit) or random
readout_refit      never                          never, or epoch: the readout is set again
                                                  from every epoch's ridge fit (readout_init
                                                  ridge), so it weighs the feature directions
                                                  training has moved (core.tuning.readout_init)
readout_refit_steps 0                             > 0: also set the readout again every this
                                                  many optimiser steps within an epoch, from a
                                                  ridge on the training stories' current
                                                  features (needs readout_refit: epoch; costs
                                                  a forward pass over them each time)
readout_whiten     0.0                            > 0: the ridge readout is fitted on whitened
                                                  features (this shrinkage; smaller whitens
                                                  more), so low-variance feature directions
                                                  get weight and gradient
                                                  (core.tuning.readout_init); 0 = the plain
                                                  ridge map
seed               0                              seed of every random choice of the run
delays             [1, 2, 3, 4]                   FIR delays in TRs
context            3.75                           seconds of audio before each window's chunk
chunk              0.25                           seconds of new audio per window
stride             0.25                           seconds between window ends
extraction         windows                        windows (the paper's: each window through
                                                  the network alone) or blocks (runs of
                                                  windows in one pass, each chunk attending to
                                                  its own window; core.encoding.blocks,
                                                  docs/extraction.md)
block_seconds      1.0                            blocks: seconds of window ends per pass. At
                                                  the paper's windows 1 s keeps the frozen
                                                  features' ridge r within 0.006 of the
                                                  windows' for 3.3x fewer FLOPs; 4 s: 8x, 16 s:
                                                  12x, each a different representation
                                                  (-0.03, -0.05 r on planted synthetic data)
layerdrop          0.0                            layer drop probability in training
dropout            0.0                            the backbone's own dropout (attention, hidden,
                                                  activation, feature projection) in training;
                                                  checkpoints ship 0.1. Attention dropout
                                                  also makes CPU attention ~4x slower.
precision          fp32                           fp32, or bf16 (autocast) in training steps;
                                                  evaluation features are always fp32
device             auto                           auto, cpu, cuda or cuda:N
cnn_cache          auto                           run the frozen CNN once per story: auto, on,
                                                  off
batch_windows      64                             windows per forward pass in evaluation
                                                  (a memory knob; results do not change)
test_stories       null                           held-out test stories; null = paper split
val_stories        null                           validation stories; null = paper split
ridge_backend      numpy                          himalaya backend of the ridge fits: numpy,
                                                  torch, torch_cuda, torch_mps
norm_momentum      0.01                           momentum of the running feature
                                                  normalisation, in (0, 1]
transfer_to        []                             other subjects scored on this run's tuned
                                                  features: a new ridge readout each, vs the
                                                  same on pretrained features (the run's own
                                                  subject is skipped)
transfer_fractions [1.0]                          data efficiency: shares of each transfer
                                                  subject's training stories its new ridge
                                                  readouts see (nested subsets, >= 2
                                                  stories), tuned vs pretrained features
probes             []                             word-level probe targets scored at the end
                                                  (core.studies.probes): acoustic, semantic:<GloVe
                                                  file>, planted, unchanged (synthetic data)
probe_layers       null                           layers probed; null = 1..readout_layer
subjects           []                             several subjects, one backbone: the subjects
                                                  whose responses train the shared adapters
                                                  together with the run's own subject (listed
                                                  or not); each gets its own readout
subject_weights    {}                             subject -> weight of its loss in a step
                                                  (default 1 each); 0 = it trains only its
                                                  readout and does not choose the best epoch
subject_steps      joint                          several subjects: joint (one step per block,
                                                  every subject's loss from one backbone pass)
                                                  or interleaved (one step per subject on the
                                                  same block, in turn: S times the steps and
                                                  backbone passes)
=================  =============================  ==========================================

A config file is a YAML mapping of some of these settings; the rest keep their defaults.
Numbers may be written ``1e-4`` (YAML reads that as a string; it is parsed here), lists
may be written ``1,2,3`` or given as a single item, ``on``/``off`` work for cnn_cache.

.. code-block:: yaml

    model: microsoft/wavlm-base-plus
    readout_layer: 9
    lora_layers: [5, 6, 7, 8, 9]
    lora_rank: 8
    lora_alpha: 16
    lr: 3.0e-4
    loss: spatial
    roi_weights: {AC: 1.0, rest: 0.25}
    epochs: 10

and on the command line, later settings win::

    --config run.yaml --set lr=1e-4 --set lora_layers=[8,9] --set model=null

Example
-------
>>> config = TrainConfig.load(None, ["lora_rank=8", "readout_layers=[6,9]"])
>>> config.readout_layer, config.lora_layer_list()
(9, [1, 2, 3, 4, 5, 6, 7, 8, 9])
>>> config.flat_params()["readout_layers"]
'6,9'
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")
LOSSES = ("spatial", "temporal", "mse")
READOUT_INITS = ("ridge", "random")
READOUT_REFITS = ("never", "epoch")
PRECISIONS = ("fp32", "bf16")
CNN_CACHE = ("auto", "on", "off")
#: How window vectors are computed (:mod:`core.encoding.blocks`).
EXTRACTIONS = ("windows", "blocks")
SUBJECT_STEPS = ("joint", "interleaved")
# The backends core.encoding.ridge computes on (its torch_device); cupy is himalaya's but not ours.
RIDGE_BACKENDS = ("numpy", "torch", "torch_cuda", "torch_mps")
# Word-level probe target families (core.studies.probes), and the prefix of the semantic one.
PROBE_FAMILIES = ("acoustic", "planted", "unchanged")
SEMANTIC_PROBE = "semantic:"
REST = "rest"  # the roi_weights key for voxels in no named ROI
_WHERE_IT_RUNS = ("device",)  # settings that do not change a run's numbers (TrainConfig.identity)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; the module docstring says what each one means.

    Values are coerced on construction (ints to floats for float settings, ``"1,2,3"``
    or a single int to a list of ints) and then checked by :meth:`validate`, so an
    existing instance is always valid. Change one with :meth:`replace`.
    """

    model: str | None = None
    readout_layer: int = 9
    readout_layers: list[int] | None = None
    lora_layers: list[int] | None = None
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    lr: float = 1e-4
    readout_lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 20
    block_trs: int = 10
    blocks_per_step: int | None = None
    bottleneck: int = 100
    loss: str = "spatial"
    roi_weights: dict[str, float] = field(default_factory=dict)
    readout_init: str = "ridge"
    readout_refit: str = "never"
    readout_refit_steps: int = 0
    readout_whiten: float = 0.0
    seed: int = 0
    delays: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    context: float = 3.75
    chunk: float = 0.25
    stride: float = 0.25
    extraction: str = "windows"
    block_seconds: float = 1.0
    layerdrop: float = 0.0
    dropout: float = 0.0
    precision: str = "fp32"
    device: str = "auto"
    cnn_cache: str = "auto"
    batch_windows: int = 64
    test_stories: list[str] | None = None
    val_stories: list[str] | None = None
    ridge_backend: str = "numpy"
    norm_momentum: float = 0.01
    transfer_to: list[str] = field(default_factory=list)
    transfer_fractions: list[float] = field(default_factory=lambda: [1.0])
    probes: list[str] = field(default_factory=list)
    probe_layers: list[int] | None = None
    subjects: list[str] = field(default_factory=list)
    subject_weights: dict[str, float] = field(default_factory=dict)
    subject_steps: str = "joint"

    def __post_init__(self):
        # YAML 1.1 reads the words on/off as booleans.
        if isinstance(self.cnn_cache, bool):
            object.__setattr__(self, "cnn_cache", "on" if self.cnn_cache else "off")
        for name, hint in _SETTINGS.items():
            object.__setattr__(self, name, _coerce(name, getattr(self, name), hint))
        self.validate()

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> TrainConfig:
        """Build a config from a mapping of setting name -> value.

        Parameters
        ----------
        values : dict
            Some of the settings; the others keep their defaults. When ``readout_layers``
            is given and ``readout_layer`` is not, ``readout_layer`` becomes its maximum.
        source : str
            Where the values came from (a file path), for error messages.

        Raises
        ------
        ConfigError
            Naming ``source``, the setting and what was expected; an unknown name comes
            with the closest valid one.
        """
        return cls._build(values, {name: source for name in values})

    @classmethod
    def load(cls, path=None, overrides: typing.Iterable[str] = ()) -> TrainConfig:
        """Read a YAML config file (or start from the defaults), then apply overrides.

        Parameters
        ----------
        path : str or Path or None
            A YAML file holding a mapping of settings; None = the defaults.
        overrides : iterable of str
            ``"name=value"`` strings applied in order after the file; each value is read
            with ``yaml.safe_load`` (``lr=3e-4``, ``lora_layers=[1,2]``,
            ``roi_weights={AC: 1, rest: 0.25}``, ``model=null``).
        """
        values, origins = {}, {}
        if path is not None:
            values = _read_yaml(Path(path))
            origins = {name: str(path) for name in values}
        for text in overrides:
            source = f"override {text!r}"
            name, equals, value_text = text.partition("=")
            name = name.strip()
            if not equals or not name:
                raise ConfigError(f"{source}: expected name=value, such as lr=3e-4")
            try:
                values[name] = yaml.safe_load(value_text)
            except yaml.YAMLError as error:
                raise ConfigError(f"{source}: the value is not valid YAML ({_one_line(error)})") from None
            origins[name] = source
        return cls._build(values, origins)

    @classmethod
    def _build(cls, values: dict, origins: dict[str, str]) -> TrainConfig:
        for name in values:
            _check_known(name, origins[name])
        values = dict(values)
        if values.get("readout_layers") is not None and "readout_layer" not in values:
            try:
                layers = _coerce("readout_layers", values["readout_layers"], _SETTINGS["readout_layers"])
            except ConfigError as error:
                raise ConfigError(f"{origins['readout_layers']}: {error}") from None
            if layers:
                values["readout_layer"] = max(layers)
                origins = {**origins, "readout_layer": origins["readout_layers"]}
        try:
            return cls(**values)
        except ConfigError as error:
            everywhere = ", ".join(dict.fromkeys(origins.values())) or "config"
            source = origins.get(getattr(error, "setting", None), everywhere)
            raise ConfigError(f"{source}: {error}") from None

    def to_dict(self) -> dict:
        """Every setting as plain lists, dicts, strings and numbers (JSON and YAML safe)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def identity(self) -> dict:
        """The settings that make a run what it is: :meth:`to_dict` without where it runs (``device``).

        A checkpoint or a finished trial matches a configuration by its identity, so a run
        resumes on another GPU, node or ``cuda:N`` than it started on.
        """
        return {name: value for name, value in self.to_dict().items() if name not in _WHERE_IT_RUNS}

    def flat_params(self) -> dict[str, str | int | float]:
        """Every setting as one flat, readable value, for MLflow params.

        Lists become ``"1,2,3"`` (``"[]"`` when empty), None becomes ``"none"``, and each ROI weight its own
        ``"roi_weight.<ROI>"`` entry (no such entry = whole cortex).
        """
        params = {}
        for name, value in self.to_dict().items():
            if name == "roi_weights":
                params.update({f"roi_weight.{roi}": weight for roi, weight in value.items()})
            elif name == "subject_weights":
                params.update({f"subject_weight.{subject}": weight for subject, weight in value.items()})
            elif value is None:
                params[name] = "none"
            elif isinstance(value, list):
                params[name] = ",".join(str(item) for item in value) if value else "[]"
            else:
                params[name] = value
        return params

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with ``changes`` applied (``config.replace(lr=3e-4)``)."""
        for name in changes:
            _check_known(name, "replace()")
        return dataclasses.replace(self, **changes)

    def lora_layer_list(self) -> list[int]:
        """The layers that are trained: ``lora_layers``, or every layer 1..readout_layer."""
        if self.lora_layers is None:
            return list(range(1, self.readout_layer + 1))
        return list(self.lora_layers)

    def validate(self) -> None:
        """Check every value that needs no model or data; raise ConfigError on the first bad one."""

        def require(ok: bool, name: str, problem: str, expected: str):
            if not ok:
                raise _error(name, problem, getattr(self, name), expected)

        require(self.model is None or self.model.strip() != "", "model", "is empty",
                "a checkpoint folder or hub id, or null for the dataset's pretrained/ folder")
        require(self.readout_layer >= 1, "readout_layer", "is not a layer", "a layer number >= 1")
        if self.readout_layers is not None:
            require(len(self.readout_layers) >= 2, "readout_layers", "needs at least 2 layers",
                    "2 or more layers, or null and readout_layer for one layer")
            require(_increasing_from_one(self.readout_layers), "readout_layers", "is not sorted unique layers",
                    "increasing layer numbers >= 1")
            require(self.readout_layer == max(self.readout_layers), "readout_layer",
                    f"differs from max(readout_layers) = {max(self.readout_layers)}",
                    "readout_layer equal to the highest of readout_layers")
        if self.lora_layers is not None:
            require(len(self.lora_layers) >= 1, "lora_layers", "is empty",
                    "at least one layer, or null for every layer up to readout_layer")
            require(_increasing_from_one(self.lora_layers), "lora_layers", "is not sorted unique layers",
                    "increasing layer numbers >= 1")
        require(self.lora_rank >= 0, "lora_rank", "is negative", "an integer >= 0; 0 = full fine-tuning")
        require(self.lora_alpha > 0, "lora_alpha", "is not positive", "a number > 0")
        require(0 <= self.lora_dropout < 1, "lora_dropout", "is not a probability below 1",
                "0 <= lora_dropout < 1")
        require(len(self.lora_targets) >= 1, "lora_targets", "is empty", f"some of {', '.join(LORA_TARGETS)}")
        unknown = [target for target in self.lora_targets if target not in LORA_TARGETS]
        require(not unknown, "lora_targets", f"has unknown modules {unknown}",
                f"some of {', '.join(LORA_TARGETS)}")
        require(len(set(self.lora_targets)) == len(self.lora_targets), "lora_targets", "has repeats",
                "each module at most once")
        require(self.lr >= 0, "lr", "is negative", "a learning rate >= 0; 0 holds the backbone at the pretrained weights")
        require(self.readout_lr > 0, "readout_lr", "is not positive", "a learning rate > 0")
        require(self.weight_decay >= 0, "weight_decay", "is negative", "a number >= 0")
        require(self.epochs >= 0, "epochs", "is negative", "an integer >= 0; 0 = the ridge readout only")
        require(self.block_trs >= 1, "block_trs", "is below 1", "an integer >= 1")
        require(self.blocks_per_step is None or self.blocks_per_step >= 1, "blocks_per_step", "is below 1",
                "an integer >= 1, or null for one block per worker")
        require(self.bottleneck >= 0, "bottleneck", "is negative", "an integer >= 0; 0 = one full linear map")
        require(self.loss in LOSSES, "loss", "is not a known loss", " or ".join(LOSSES))
        for roi, weight in self.roi_weights.items():
            require(roi.strip() != "", "roi_weights", "has an empty ROI name",
                    "ROI names from the subject's masks or 'rest'")
            require(weight >= 0, "roi_weights", f"weight of {roi} is negative", "weights >= 0")
        require(not self.roi_weights or max(self.roi_weights.values()) > 0, "roi_weights",
                "has no positive weight", "at least one weight > 0, or {} for the whole cortex")
        require(self.readout_init in READOUT_INITS, "readout_init", "is not a known initialisation",
                " or ".join(READOUT_INITS))
        require(self.readout_refit in READOUT_REFITS, "readout_refit", "is not a known choice",
                " or ".join(READOUT_REFITS))
        require(self.readout_refit_steps >= 0, "readout_refit_steps", "is negative",
                "an integer >= 0; 0 = the readout is set only after epochs")
        require(self.readout_refit_steps == 0 or self.readout_refit == "epoch", "readout_refit_steps",
                "is set, but readout_refit is not epoch", "readout_refit: epoch with readout_refit_steps > 0")
        require(self.readout_whiten >= 0, "readout_whiten", "is negative",
                "a shrinkage > 0 (such as 0.1), or 0 for the plain ridge map")
        require(self.readout_init == "ridge" or (self.readout_refit == "never" and self.readout_whiten == 0),
                "readout_init", "is not ridge, but readout_refit or readout_whiten sets the ridge readout",
                "readout_init: ridge, or readout_refit: never and readout_whiten: 0")
        require(self.seed >= 0, "seed", "is negative", "an integer >= 0")
        require(len(self.delays) >= 1, "delays", "is empty", "delays in TRs such as [1, 2, 3, 4]")
        require(min(self.delays) >= 0 and len(set(self.delays)) == len(self.delays), "delays",
                "has negative or repeated delays", "unique delays in TRs >= 0")
        for name in ("context", "chunk", "stride", "block_seconds"):
            require(getattr(self, name) > 0, name, "is not positive", "seconds > 0")
        require(self.extraction in EXTRACTIONS, "extraction", "is not a known choice", " or ".join(EXTRACTIONS))
        require(0 <= self.layerdrop < 1, "layerdrop", "is not a probability below 1", "0 <= layerdrop < 1")
        require(0 <= self.dropout < 1, "dropout", "is not a probability below 1", "0 <= dropout < 1")
        require(self.precision in PRECISIONS, "precision", "is not a known precision", " or ".join(PRECISIONS))
        require(_DEVICE.fullmatch(self.device) is not None, "device", "is not a known device",
                "auto, cpu, cuda or cuda:N")
        require(self.cnn_cache in CNN_CACHE, "cnn_cache", "is not a known choice", " or ".join(CNN_CACHE))
        require(self.batch_windows >= 1, "batch_windows", "is below 1", "an integer >= 1")
        for name in ("test_stories", "val_stories"):
            stories = getattr(self, name)
            if stories is not None:
                require(len(stories) >= 1 and all(story.strip() for story in stories), name,
                        "is empty or has an empty name", "story names, or null for the paper split")
                require(len(set(stories)) == len(stories), name, "has repeats", "each story at most once")
        if self.test_stories is not None and self.val_stories is not None:
            both = sorted(set(self.test_stories) & set(self.val_stories))
            require(not both, "val_stories", f"shares {both} with test_stories",
                    "validation stories that are not test stories")
        require(self.ridge_backend in RIDGE_BACKENDS, "ridge_backend", "is not a himalaya backend",
                ", ".join(RIDGE_BACKENDS))
        require(0 < self.norm_momentum <= 1, "norm_momentum", "is not in (0, 1]", "0 < norm_momentum <= 1")
        require(all(subject.strip() for subject in self.transfer_to) and len(set(self.transfer_to)) == len(self.transfer_to),
                "transfer_to", "has an empty name or repeats", "subject names, each at most once")
        require(len(self.transfer_fractions) >= 1 and all(0 < f <= 1 for f in self.transfer_fractions)
                and list(self.transfer_fractions) == sorted(set(self.transfer_fractions)),
                "transfer_fractions", "is not increasing shares in (0, 1]", "e.g. [0.1, 0.25, 0.5, 1.0]")
        for family in self.probes:
            require(family in PROBE_FAMILIES or (family.startswith(SEMANTIC_PROBE) and len(family) > len(SEMANTIC_PROBE)),
                    "probes", f"{family!r} is not a target family",
                    ", ".join([*PROBE_FAMILIES, f"{SEMANTIC_PROBE}<GloVe file>"]))
        if self.probe_layers is not None:
            require(len(self.probe_layers) >= 1 and _increasing_from_one(self.probe_layers), "probe_layers",
                    "is not sorted unique layers", "increasing layer numbers >= 1, or null")
        require(all(subject.strip() for subject in self.subjects) and len(set(self.subjects)) == len(self.subjects),
                "subjects", "has an empty name or repeats", "subject names, each at most once")
        for subject, weight in self.subject_weights.items():
            require(weight >= 0, "subject_weights", f"weight of {subject} is negative", "weights >= 0")
        require(self.subject_steps in SUBJECT_STEPS, "subject_steps", "is not a known choice", " or ".join(SUBJECT_STEPS))

    def training_subjects(self, subject: str) -> list[str]:
        """The subjects whose responses train the backbone in a run for ``subject``: it first, then ``subjects``."""
        return [subject, *(other for other in self.subjects if other != subject)]

    def subject_weight_list(self, subject: str) -> list[float]:
        """Loss weight of each of :meth:`training_subjects`; raises ConfigError for a weight of a subject not trained."""
        subjects = self.training_subjects(subject)
        unknown = [name for name in self.subject_weights if name not in subjects]
        if unknown:
            raise _error("subject_weights", f"{unknown[0]!r} is not a trained subject", self.subject_weights,
                         f"keys among {', '.join(subjects)} (the run's subject and subjects)")
        weights = [self.subject_weights.get(name, 1.0) for name in subjects]
        if not max(weights) > 0:
            raise _error("subject_weights", "has no positive weight", self.subject_weights,
                         "at least one trained subject with a weight > 0")
        return weights

    def check_against(self, *, n_layers: int, roi_names: list[str], story_trs: dict[str, int]) -> None:
        """Check the settings that depend on the model and the subject.

        Parameters
        ----------
        n_layers : int
            Transformer layers of the model.
        roi_names : list of str
            The subject's named ROIs (``rest`` is always allowed too).
        story_trs : dict of str to int
            TRs of each training story.
        """
        if self.readout_layer > n_layers:
            raise _error("readout_layer", f"is above the model's {n_layers} layers", self.readout_layer,
                         f"a layer between 1 and {n_layers}")
        if self.probe_layers and max(self.probe_layers) > n_layers:
            raise _error("probe_layers", f"is above the model's {n_layers} layers", self.probe_layers,
                         f"layers between 1 and {n_layers}")
        above = [layer for layer in self.lora_layer_list() if layer > self.readout_layer]
        if above:
            raise _error("lora_layers", f"layer {above[0]} is above readout_layer {self.readout_layer}: "
                         "its output would never be read", self.lora_layers,
                         f"layers <= {self.readout_layer}")
        allowed = [*roi_names, REST]
        unknown = [roi for roi in self.roi_weights if roi not in allowed]
        if unknown:
            raise _error("roi_weights", f"{unknown[0]!r} is not one of the subject's ROIs", self.roi_weights,
                         f"keys among {', '.join(allowed)}")
        if story_trs:
            shortest = min(story_trs, key=story_trs.get)
            if self.block_trs > story_trs[shortest]:
                raise _error("block_trs", f"is longer than story {shortest!r} ({story_trs[shortest]} TRs)",
                             self.block_trs, f"at most {story_trs[shortest]} TRs")


# Setting name -> its type, in declaration order: the one list of valid names.
_SETTINGS = {f.name: typing.get_type_hints(TrainConfig)[f.name] for f in dataclasses.fields(TrainConfig)}


def _error(name: str, problem: str, value, expected: str) -> ConfigError:
    error = ConfigError(f"{name}: {problem} (got {value!r}; expected {expected})")
    error.setting = name  # lets the loaders name the file or override the value came from
    return error


def _check_known(name, source: str) -> None:
    if name not in _SETTINGS:
        close = difflib.get_close_matches(str(name), _SETTINGS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; the settings are {', '.join(_SETTINGS)}"
        raise ConfigError(f"{source}: unknown setting {name!r}{hint}")


def _increasing_from_one(layers: list[int]) -> bool:
    return layers[0] >= 1 and all(a < b for a, b in zip(layers, layers[1:]))


def _coerce(name: str, value, hint):
    """``value`` as the type ``hint`` names, or a ConfigError naming the setting."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        expected_suffix = ", or null"
    else:
        expected_suffix = ""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        items = value
        if isinstance(value, str):
            items = [piece.strip() for piece in value.split(",")]
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            items = [value]
        result = None
        if isinstance(items, (list, tuple)):
            result = [_scalar(item, element, parse=True) for element in items]
    elif origin is dict:
        result = None
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            result = {key: _scalar(float, weight) for key, weight in value.items()}
            result = None if None in result.values() else result
    else:
        result = _scalar(hint, value)
    if result is None or (isinstance(result, list) and None in result):
        raise _error(name, "has the wrong type", value, _DESCRIPTIONS[origin or hint] + expected_suffix)
    return result


_DESCRIPTIONS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list such as [1, 2] or the string '1,2'",
    dict: "a mapping of name to weight such as {AC: 1, rest: 0.25}",
}


def _scalar(kind, value, parse: bool = False):
    """``value`` as ``kind`` (int, float or str), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if parse and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value):
            return int(value)
        return None
    if kind is float:
        # YAML 1.1 reads 1e-4 (no dot) as a string, so numeric strings are accepted.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        if isinstance(value, numbers.Real) and math.isfinite(value):
            return float(value)
        return None
    return value if isinstance(value, str) else None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(error)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value at the top level, "
                          f"got {type(values).__name__}")
    return values


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
