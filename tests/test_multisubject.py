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
    # Trained together, the backbone moved: the second subject's tuned features differ from its baseline.
    tuned, baseline = (summary["cotrained"]["UTS02"][k]["mean_r"] for k in ("tuned", "baseline"))
    assert summary["best_epoch"] == 0 or tuned != baseline
    state = torch.load(tmp_path / "joint/checkpoints/last.pt", weights_only=False)["model"]
    assert {"readout.up.weight", "cotrained.UTS02.up.weight"} <= set(state)


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
