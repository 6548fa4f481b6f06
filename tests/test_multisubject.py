"""Several subjects on one backbone: shared adapters, one readout per subject, weighted losses."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.errors import ConfigError
from core.tuning.trainer import Trainer

FAST = dict(readout_layer=3, lora_layers=[3], epochs=1, lr=3e-3, readout_lr=1e-3, bottleneck=16, lora_dropout=0.0,
            device="cpu")


def _after_epoch_0(data, out, subject, **changes) -> Trainer:
    """A trainer whose epoch 0 has run: normalisation statistics and ridge-initialised readouts set."""
    trainer = Trainer(TrainConfig(**{**FAST, **changes}), Dataset(data), subject, out)
    trainer._run_epoch(0, train_loss=float("nan"), started=time.time())
    return trainer


def _step_grads(trainer: Trainer, story: str) -> dict[str, torch.Tensor]:
    """The gradients of one optimiser step on TRs 0:10 of ``story`` (they stay on the parameters after the step)."""
    trainer.train_blocks([(trainer.story_input(story), 0, 10)])
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


def test_a_joint_step_adds_each_subjects_weighted_gradient(small_data, tmp_path):
    """One backbone pass, every subject's own responses and readout, losses weighted by subject_weights.

    The adapters' gradient of a two-subject step is the weighted mean of the gradients the
    same step gives each subject alone, and each readout's is its own subject's, scaled.
    Training one subject on another's responses, or dropping a subject's term, breaks it.
    """
    joint = _after_epoch_0(small_data, tmp_path / "joint", "UTS01", subjects=["UTS01", "UTS02"],
                           subject_weights={"UTS01": 1.0, "UTS02": 3.0})
    alone = {s: _after_epoch_0(small_data, tmp_path / s, s) for s in ("UTS01", "UTS02")}
    story = joint.train_stories[0]
    g = _step_grads(joint, story)
    g1, g2 = (_step_grads(alone[s], story) for s in ("UTS01", "UTS02"))
    adapters = [name for name in g if "lora_" in name]
    assert adapters and all(name in g1 and name in g2 for name in adapters)
    for name in adapters:
        torch.testing.assert_close(g[name], (g1[name] + 3 * g2[name]) / 4, rtol=1e-4, atol=1e-7)
    assert max(g[name].abs().max() for name in adapters) > 0  # lora_B's (lora_A's is 0 while B is)
    for name in ("up.weight", "up.bias", "down.weight"):
        torch.testing.assert_close(g[f"readout.{name}"], g1[f"readout.{name}"] / 4, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(g[f"cotrained.UTS02.{name}"], 3 * g2[f"readout.{name}"] / 4, rtol=1e-4, atol=1e-7)


def test_an_interleaved_step_is_one_subjects_step_on_the_shared_backbone(small_data, tmp_path):
    """``subject_steps: interleaved``: a block that names a subject trains on its loss alone, times w_s / mean(w)."""
    joint = _after_epoch_0(small_data, tmp_path / "joint", "UTS01", subjects=["UTS02"], subject_steps="interleaved",
                           subject_weights={"UTS01": 1.0, "UTS02": 3.0})
    alone = _after_epoch_0(small_data, tmp_path / "alone", "UTS02")
    story = joint.train_stories[0]
    joint.train_blocks([(joint.story_input(story), 0, 10, "UTS02")])
    g = {name: p.grad for name, p in joint.model.named_parameters() if p.grad is not None}
    g2 = _step_grads(alone, story)
    assert not any(name.startswith("readout.") for name in g)  # UTS01's readout took no part
    for name in [n for n in g2 if "lora_" in n]:
        torch.testing.assert_close(g[name], 1.5 * g2[name], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g["cotrained.UTS02.up.weight"], 1.5 * g2["readout.up.weight"], rtol=1e-4, atol=1e-7)


def test_two_subjects_train_one_backbone_and_each_is_scored(small_data, tmp_path):
    summary = Trainer(TrainConfig(**FAST, subjects=["UTS02"]), Dataset(small_data), "UTS01", tmp_path / "joint").fit()
    alone = Trainer(TrainConfig(**FAST), Dataset(small_data), "UTS02", tmp_path / "alone").fit()
    assert summary["subjects"] == ["UTS01", "UTS02"] and list(summary["cotrained"]) == ["UTS02"]
    # Epoch 0 is the pretrained model: the co-trained subject's baseline is its own baseline.
    assert summary["cotrained"]["UTS02"]["baseline"]["mean_r"] == pytest.approx(alone["baseline"]["mean_r"], rel=1e-6)
    for record in summary["history"]:
        by_subject = record["val_r_by_subject"]
        assert set(by_subject) == {"UTS01", "UTS02"}
        assert record["val_r"] == pytest.approx((by_subject["UTS01"] + by_subject["UTS02"]) / 2)
    # Trained together, the backbone moved: the second subject's validation r changed with epoch 1.
    val_r2 = [record["val_r_by_subject"]["UTS02"] for record in summary["history"]]
    assert val_r2[1] != val_r2[0]
    # Its tuned test r is the best epoch's: the baseline where that is epoch 0, another number otherwise.
    tuned, baseline = (summary["cotrained"]["UTS02"][k]["mean_r"] for k in ("tuned", "baseline"))
    assert (tuned == baseline) == (summary["best_epoch"] == 0)
    state = torch.load(tmp_path / "joint/checkpoints/last.pt", weights_only=False)["model"]
    assert {"readout.up.weight", "cotrained.UTS02.up.weight"} <= set(state)


def _recorded_steps(trainer: Trainer) -> list[list[tuple]]:
    """The blocks (story, first TR, stop TR[, subject]) of every optimiser step the trainer takes from now on."""
    steps, train_blocks = [], trainer.train_blocks

    def record(blocks, *args, **kwargs):
        steps.append([(inp.name, *rest) for inp, *rest in blocks])
        return train_blocks(blocks, *args, **kwargs)

    trainer.train_blocks = record
    return steps


def test_the_joint_validation_r_is_the_subject_weighted_mean(small_data, tmp_path):
    """``val_r`` (which chooses the best epoch) weighs each subject's validation r by its
    ``subject_weights``; a subject of weight 0 is still scored but has no say."""
    for weights in ({"UTS01": 1.0, "UTS02": 3.0}, {"UTS01": 1.0, "UTS02": 0.0}):
        config = TrainConfig(**{**FAST, "epochs": 0}, subjects=["UTS02"], subject_weights=weights)
        summary = Trainer(config, Dataset(small_data), "UTS01", tmp_path / str(weights["UTS02"])).fit()
        (record,) = summary["history"]
        r1, r2 = record["val_r_by_subject"]["UTS01"], record["val_r_by_subject"]["UTS02"]
        assert abs(r1 - r2) > 0.01  # else any mean of the two would pass
        assert record["val_r"] == pytest.approx((weights["UTS01"] * r1 + weights["UTS02"] * r2) / sum(weights.values()),
                                                rel=1e-9)
    assert record["val_r"] == pytest.approx(r1, rel=1e-9) and np.isfinite(r2)  # the weight-0 subject


def test_an_interleaved_epoch_steps_each_subject_alone_on_every_block(small_data, tmp_path):
    """``subject_steps: interleaved`` through a run: each block of the epoch is trained by UTS01,
    then by UTS02, a step each naming its subject; no joint steps."""
    config = TrainConfig(**FAST, subjects=["UTS02"], subject_steps="interleaved", block_trs=15)
    dataset = Dataset(small_data)
    trainer = Trainer(config, dataset, "UTS01", tmp_path)
    steps = _recorded_steps(trainer)
    trainer.fit()
    train = dataset.split("UTS01").train
    assert train == dataset.split("UTS02").train and len(train) == 2  # SMALL: 2 training stories of 30 TRs
    every_block = {(story, start, start + 15) for story in train for start in range(0, dataset.n_trs("UTS01", story), 15)}
    assert len(steps) == 2 * len(every_block) and all(len(step) == 1 for step in steps)
    blocks = [step[0] for step in steps]
    assert [block[3:] for block in blocks] == [("UTS01",), ("UTS02",)] * len(every_block)
    assert all(a[:3] == b[:3] for a, b in zip(blocks[::2], blocks[1::2]))  # the same block, in turn
    assert {block[:3] for block in blocks} == every_block


def test_the_sweep_summary_scores_each_subject_against_its_own_teacher(small_data, tmp_path):
    """On a planted-teacher dataset the summary adds, for the run's subject and each co-trained one:
    frozen, tuned and teacher ridge on its planted voxels and the share of the gap closed,
    (tuned - frozen) / (teacher - frozen). The teacher's r is computed here as well: ridge on
    the teacher's layer-3 features, mean test r over the truth's "high" voxels of that subject."""
    from types import SimpleNamespace

    import h5py

    from core import synthetic as synth
    from core.encoding.evaluation import ridge_evaluation
    from core.encoding.extract import FrozenFeatures
    from core.encoding.features import WindowSpec
    from sweeper.launch import summarize
    from sweeper.space import parse_spec

    # The dataset through links, with a truth folder of its own: the summary caches the teacher's r there.
    data = tmp_path / "data"
    data.mkdir()
    for entry in small_data.iterdir():
        (data / entry.name).symlink_to(entry) if entry.name != "truth" else (data / "truth").mkdir()
    for entry in (small_data / "truth").iterdir():
        if entry.name != "teacher_ridge.json":  # left by an earlier sweep on this dataset: computed again here
            (data / "truth" / entry.name).symlink_to(entry)
    window = {"context": 0.75, "chunk": 0.25, "stride": 1.0}
    dataset, extractor = Dataset(small_data), FrozenFeatures(str(small_data / "truth/teacher"), WindowSpec(**window))
    teacher = {}
    for subject in ("UTS01", "UTS02"):
        split = dataset.split(subject)
        _, scored = ridge_evaluation(lambda story: extractor.tr_features(dataset, subject, story, 3), dataset, subject,
                                     split.train, {"test": split.test})
        with h5py.File(small_data / "truth" / f"{subject}.hf5") as f:
            high = f["group"][:] == synth.GROUPS.index("high")
        teacher[subject] = float(np.nanmean(scored["test"].r[high]))
    assert f"{teacher['UTS01']:.3f}" != f"{teacher['UTS02']:.3f}"  # else a swap would pass
    # Frozen and tuned chosen to close 25% (UTS01) and 60% (UTS02) of the gap to each subject's teacher.
    frozen = {"UTS01": teacher["UTS01"] - 0.2, "UTS02": teacher["UTS02"] - 0.1}
    tuned = {"UTS01": frozen["UTS01"] + 0.05, "UTS02": frozen["UTS02"] + 0.06}
    metrics = {"done_training": 1, "best_val_r": 0.5, "test_r": 0.61, "baseline_r": 0.6,
               "test_r.planted": tuned["UTS01"], "baseline_r.planted": frozen["UTS01"],
               "cotrained_test_r.UTS02.planted": tuned["UTS02"], "cotrained_baseline_r.UTS02.planted": frozen["UTS02"]}
    spec = parse_spec({"name": "t", "data": str(data), "fixed": {"readout_layer": 3, "lora_layers": [3], **window},
                       "search": {"subjects": {"choice": [[], ["UTS02"]]}}}, "t.yaml")
    result = SimpleNamespace(config={"subject": "UTS01", "settings": {"subjects": ["UTS02"]}}, metrics=metrics)
    lines = summarize([result], spec, ["UTS01"], data).splitlines()
    assert lines[-3:] == [
        f"  planted voxels: frozen ridge {frozen['UTS01']:.3f}, tuned ridge {tuned['UTS01']:.3f}, "
        f"teacher ridge {teacher['UTS01']:.3f} (the truth): 25% of the gap closed",
        f"  UTS02 (trained with UTS01) planted voxels: frozen ridge {frozen['UTS02']:.3f}, tuned ridge "
        f"{tuned['UTS02']:.3f}, teacher ridge {teacher['UTS02']:.3f} (the truth): 60% of the gap closed",
        "  LoRA layers ranked by best_val_r: [3] 0.500; planted: [3]"]


def test_a_weight_for_a_subject_not_trained_is_one_clear_error(small_data, tmp_path):
    with pytest.raises(ConfigError, match="subject_weights: 'UTS03' is not a trained subject"):
        Trainer(TrainConfig(**FAST, subject_weights={"UTS03": 1.0}), Dataset(small_data), "UTS01", tmp_path)
    with pytest.raises(ConfigError, match="subject_weights: has no positive weight"):
        Trainer(TrainConfig(**FAST, subjects=["UTS02"], subject_weights={"UTS01": 0, "UTS02": 0}),
                Dataset(small_data), "UTS01", tmp_path)
    with pytest.raises(ConfigError, match="subjects: has an empty name or repeats"):
        TrainConfig(subjects=["UTS02", "UTS02"])
    assert TrainConfig(subjects="UTS01,UTS02").training_subjects("UTS02") == ["UTS02", "UTS01"]
    assert np.isclose(sum(TrainConfig(subjects=["UTS02"]).subject_weight_list("UTS01")), 2.0)


def test_the_sweep_summary_shows_the_cotrained_subjects_scores():
    from types import SimpleNamespace

    from sweeper.launch import summarize
    from sweeper.space import parse_spec

    spec = parse_spec({"name": "t", "data": "x", "search": {"subjects": {"choice": [[], ["UTS02"]]}}}, "t.yaml")
    metrics = {"done_training": 1, "best_val_r": 0.5, "test_r": 0.61, "baseline_r": 0.6, "test_r.AC": 0.71,
               "baseline_r.AC": 0.7, "cotrained_test_r.UTS02": 0.52, "cotrained_baseline_r.UTS02": 0.5,
               "cotrained_test_r.UTS02.AC": 0.42, "cotrained_baseline_r.UTS02.AC": 0.4,
               "cotrained_test_r.UTS02_ceiling_fraction": 0.8}
    result = SimpleNamespace(config={"subject": "UTS01", "settings": {"subjects": ["UTS02"]}}, metrics=metrics)
    lines = summarize([result], spec, ["UTS01"]).splitlines()
    assert lines[1:] == [" " * 24 + "all       AC",
                         "  baseline            0.600    0.700",
                         "  tuned               0.610    0.710",
                         "  UTS02 baseline      0.500    0.400",
                         "  UTS02 tuned         0.520    0.420"]
