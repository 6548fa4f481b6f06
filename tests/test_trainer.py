"""The model and the trainer: consistency of the training and evaluation paths, exact resume, CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
import socket
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest
import torch

from core import train
from core.backbones import adapt
from core.backbones import load_backbone
from core.cli import run
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.ridge import RidgeFit
from core.synthetic import SIZES, generate
from core.tuning.batches import epoch_blocks
from core.tuning.model import Readout, readout_prediction, ridge_as_linear
from core.tuning.trainer import Trainer

FAST = dict(readout_layer=3, lora_layers=[3], epochs=2, lr=3e-3, readout_lr=1e-3, bottleneck=16, device="cpu")


def test_readout_reproduces_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    low_rank = (torch.randn(12, 3, generator=gen) @ torch.randn(3, 7, generator=gen)).numpy()
    bias = np.arange(7, dtype=np.float32)
    x = torch.randn(5, 12, generator=gen)
    for bottleneck in (0, 3, 5):
        readout = Readout(12, 7, bottleneck)
        readout.set_linear(low_rank, bias)
        np.testing.assert_allclose(readout(x).detach().numpy(), x.numpy() @ low_rank + bias, atol=1e-4)


def test_readout_from_the_gram_eigendecomposition_is_the_svd_truncation():
    # A ridge-like map: more voxels than features, singular values decaying over three decades.
    gen = torch.Generator().manual_seed(2)
    n_in, n_out, k = 48, 900, 10
    left, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=gen))
    right, _ = torch.linalg.qr(torch.randn(n_out, n_in, generator=gen))
    weight = (left * torch.logspace(0, -3, n_in) @ right.T).numpy()
    u, s, vh = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vh[:k]
    readout = Readout(n_in, n_out, k)
    readout.set_linear(weight, np.zeros(n_out, np.float32))
    got = (readout.up.weight @ readout.down.weight).T.detach().numpy()
    assert np.linalg.norm(got - best) <= 1e-5 * np.linalg.norm(best)


def test_ridge_readout_init_makes_no_float64_copy_of_the_map():
    # numpy's allocations are traced: the old path's float64 copy of the map (twice the
    # float32 map's bytes) exceeds the budget of one float32 copy plus small vectors.
    n_in, n_out = 256, 20_000
    gen = np.random.default_rng(3)
    fit = RidgeFit(weights=gen.standard_normal((n_in, n_out), dtype=np.float32), alphas=np.ones(n_out),
                   cv_scores=np.zeros(n_out), x_mean=gen.standard_normal(n_in), x_std=gen.uniform(0.5, 2, n_in),
                   y_mean=gen.standard_normal(n_out))
    readout = Readout(n_in, n_out, 16)
    tracemalloc.start()
    try:
        weight, bias = ridge_as_linear(fit, np.arange(n_out))
        readout.set_linear(weight, bias)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.1 * fit.weights.nbytes, f"peak {peak / 2**20:.0f} MiB for a {fit.weights.nbytes / 2**20:.0f} MiB map"
    assert weight.dtype == np.float32


def test_readout_prediction_by_voxel_block_equals_the_whole_prediction():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 12, generator=gen)
    outputs = np.array([0, 2, 3, 7, 8])  # voxels 1, 4, 5, 6 are not predicted
    for bottleneck in (0, 4):
        readout = Readout(12, len(outputs), bottleneck)
        whole = np.full((9, 10), np.nan, np.float32)
        whole[:, outputs] = readout(x).detach().numpy()
        predict = readout_prediction(readout, x, outputs, n_voxels=10)
        for block in (slice(0, 10), slice(0, 3), slice(4, 7), slice(8, 10)):
            np.testing.assert_allclose(predict(block), whole[:, block], rtol=1e-6, atol=1e-6)


def test_adapt_trains_only_what_it_should(small_data):
    model = load_backbone(str(small_data / "pretrained"))
    lora = adapt(model, [2, 3], ["q_proj", "v_proj"], rank=2, alpha=2.0, dropout=0.0)
    assert len(lora) == 2 * 2 * 2  # layers x targets x (A, B)
    model = load_backbone(str(small_data / "pretrained"))
    full = adapt(model, [3], ["q_proj"], rank=0, alpha=1.0, dropout=0.0)
    assert sum(p.numel() for p in full) == sum(p.numel() for p in model.encoder.layers[2].parameters())


def test_epoch_blocks_are_seeded_and_cover_every_story():
    stories = {"a": 25, "b": 30, "c": 11}
    blocks = epoch_blocks(stories, 10, seed=0, epoch=1)
    assert blocks == epoch_blocks(stories, 10, seed=0, epoch=1)
    covered = {s: sum(stop - start for t, start, stop in blocks if t == s) for s in stories}
    assert covered == {"a": 25, "b": 30, "c": 10}  # c's last single TR is dropped
    assert all(stop - start >= 2 for _, start, stop in blocks)


def test_training_path_equals_evaluation_path(small_data, tmp_path):
    """A block's prediction equals the same rows of the whole-story features (eval mode)."""
    trainer = Trainer(TrainConfig(**FAST), Dataset(small_data), "UTS01", tmp_path)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    trainer.model.eval()
    inp = trainer.story_input(trainer.split.train[0])
    whole = trainer.model.readout(trainer.model.story_features(inp))
    with torch.no_grad():
        for start, stop in [(0, 10), (10, 20), (24, 30)]:
            np.testing.assert_allclose(trainer.model(inp, start, stop).numpy(), whole[start:stop].numpy(), atol=1e-4)


def _fit(data, out, interrupt_after=None, **changes):
    def stop(metrics):
        if metrics["epoch"] == interrupt_after:
            raise KeyboardInterrupt

    trainer = Trainer(TrainConfig(**{**FAST, **changes}), Dataset(data), "UTS01", out, on_epoch=stop)
    return trainer.fit(), trainer


def test_resume_gives_the_same_numbers(small_data, tmp_path):
    full, _ = _fit(small_data, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _fit(small_data, tmp_path / "resumed", interrupt_after=1)
    resumed, trainer = _fit(small_data, tmp_path / "resumed")
    # Two identical CPU runs in one process agree to ~1e-8 (oneDNN picks kernels per call
    # site); resuming adds nothing to that.
    same = pytest.approx
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert [h["val_r"] for h in resumed["history"]] == same([h["val_r"] for h in full["history"]], rel=1e-6)
    assert [h["train_loss"] for h in resumed["history"][1:]] == same([h["train_loss"] for h in full["history"][1:]], rel=1e-6)
    for part in ("tuned", "tuned_readout"):
        assert resumed[part]["mean_r"] == same(full[part]["mean_r"], rel=1e-6)
        assert resumed[part]["roi_mean_r"] == same(full[part]["roi_mean_r"], rel=1e-6)
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    # The checkpoint holds only what training changes, not the frozen backbone.
    assert all("lora_" in k or k.startswith(("readout.", "norm.")) for k in a)


def test_resume_refuses_other_settings_but_not_another_device(small_data, tmp_path):
    first, _ = _fit(small_data, tmp_path, epochs=1)
    with pytest.raises(Exception, match="other settings"):
        _fit(small_data, tmp_path, epochs=1, lr=1e-2)
    # Where a run trains is not part of its identity: a run moved to another device (or
    # another worker's cuda:N) resumes instead of refusing.
    again, _ = _fit(small_data, tmp_path, epochs=1, device="auto")
    assert [h["val_r"] for h in again["history"]] == [h["val_r"] for h in first["history"]]
    assert again["tuned"] == first["tuned"]


def test_two_torchrun_workers_hold_the_parameters_of_one_worker_on_the_same_blocks(small_data, tmp_path):
    """Data parallelism is exact: 2 gloo workers, 1 block each per step, end an epoch with the
    parameters and normalisation statistics of 1 worker taking both blocks per step.

    A missing gradient all-reduce, unsynchronised normalisation statistics or a worker that
    starts from other weights than rank 0's each break this by orders of magnitude more than 1e-5.
    """
    sets = [f"--set={k}={v}" for k, v in {**FAST, "epochs": 1, "lora_dropout": 0, "blocks_per_step": 2}.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["-m", "core.train", "--data", str(small_data), "--subject", "UTS01", *sets]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}",
                          "--master-addr=127.0.0.1", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=False)
    b = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1 and a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, atol=1e-5, rtol=1e-5, msg=name)
    moved = [v.abs().max() for k, v in a["model"].items() if "lora_B" in k]  # zero before training
    assert moved and min(moved) > 1e-4
    assert b["history"][1]["train_loss"] == pytest.approx(a["history"][1]["train_loss"], abs=1e-5)


def test_train_command_writes_summary_and_voxel_results(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data", str(small_data), "--subject", "UTS02", "--out", str(out)]
    for key, value in {**FAST, "epochs": 1, "lora_layers": "[2,3]", "roi_weights": "{AC: 1, rest: 0.5}"}.items():
        argv += ["--set", f"{key}={value}"]
    assert run(train.main, argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    for part in ("baseline", "tuned", "tuned_readout"):
        assert set(summary[part]["roi_mean_r"]) == {"AC", "left", "right", "planted"}
        assert 0 < summary[part]["mean_r"] < 1 and "ceiling_fraction" in summary[part]
    assert summary["best_epoch"] in (0, 1)
    assert summary["config"]["lora_layers"] == [2, 3] and summary["config"]["roi_weights"] == {"AC": 1.0, "rest": 0.5}
    with h5py.File(out / "voxel_r.hf5") as f:
        assert {"baseline_r", "tuned_r", "tuned_readout_r", "ceiling"} <= set(f)
        assert f["tuned_r"].shape == (Dataset(small_data).n_voxels("UTS02"),)
    assert TrainConfig.load(out / "config.yaml") == TrainConfig.from_dict(summary["config"])
    assert "tuned" in capsys.readouterr().out


@pytest.mark.parametrize("setting, expected", [
    ("lora_layers=[4]", "above readout_layer"),
    ("roi_weights={STG: 1}", "STG"),
    ("block_trs=500", "block_trs"),
    ("lora_rank=-1", "lora_rank"),
    ("readout_layer=7", "readout_layer"),
])
def test_impossible_settings_get_one_line(setting, expected, small_data, tmp_path, capsys):
    argv = ["--data", str(small_data), "--subject", "UTS01", "--out", str(tmp_path / "run"),
            "--set", "readout_layer=3", "--set", setting]
    assert run(train.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def hrf_data(tmp_path_factory):
    """Tiny planted-teacher data whose responses come from TR averaging + a canonical HRF,
    not from our Lanczos + FIR pipeline (core.synth's second response model)."""
    return generate(tmp_path_factory.mktemp("data") / "hrf", replace(SIZES["tiny"], response_model="hrf"),
                    progress=lambda message: None)


def test_the_best_epoch_keeps_a_gain_the_features_have_while_the_readout_drifts(hrf_data, tmp_path):
    """After epoch 0 the backbone gets what perfect tuning would give (the teacher's planted
    layer; lr=0 keeps it) and the readout is scrambled (a drift). The features then predict
    the planted voxels better, the readout worse: the best epoch must be 1, and the tuned
    score must carry the gain. Choosing by the readout's validation r would keep epoch 0."""
    teacher = load_backbone(str(hrf_data / "truth" / "teacher"))
    config = TrainConfig(readout_layer=3, lora_layers=[3], lora_rank=0, lr=0, readout_lr=1e-5, epochs=1,
                         bottleneck=8, device="cpu", roi_weights={"planted": 1})
    trainer = None

    def after(record):
        if record["epoch"] == 0:
            with torch.no_grad():
                trainer.model.wavlm.encoder.layers[2].load_state_dict(teacher.encoder.layers[2].state_dict())
                for p in trainer.model.readout.parameters():
                    p.copy_(torch.randn_like(p))

    trainer = Trainer(config, Dataset(hrf_data), "UTS01", tmp_path, on_epoch=after)
    summary = trainer.fit()
    epoch0, epoch1 = summary["history"]
    assert epoch1["val_r"] > epoch0["val_r"] + 0.02  # the ridge sees the better features
    assert epoch1["val_readout_r"] < epoch0["val_readout_r"] - 0.2  # the readout drifted
    assert summary["best_epoch"] == 1
    planted = summary["tuned"]["roi_mean_r"]["planted"]
    assert planted > summary["baseline"]["roi_mean_r"]["planted"] + 0.02
