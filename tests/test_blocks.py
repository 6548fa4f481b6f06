"""``extraction: blocks``: equal to the windows where equal by construction, and the mask is what it claims."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from core.cli import run
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding import baseline
from core.encoding.blocks import passes
from core.encoding.extract import StoryWindows, story_cnn, window_vectors
from core.encoding.features import WindowSpec
from core.run import run as run_training
from tests.test_backbones import audio, tiny
from tests.test_wavlm import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

LAYERS = [0, 1, 2, 3]
#: Windows of 1.25 s every 0.25 s: five windows share each second, as at the paper's settings.
SPEC = WindowSpec(context=1.0, chunk=0.25, stride=0.25)


def vectors(model, sound: np.ndarray, spec: WindowSpec, ids=None, cnn: bool = False) -> dict[int, torch.Tensor]:
    windows = StoryWindows.for_audio(len(sound), spec)
    padded = torch.from_numpy(windows.pad(sound))
    ids = np.arange(len(windows)) if ids is None else ids
    with torch.no_grad():
        return window_vectors(model, padded, windows, ids, LAYERS, story_cnn(model, padded) if cnn else None)


def blocks(seconds: float, spec: WindowSpec = SPEC) -> WindowSpec:
    return replace(spec, extraction="blocks", block_seconds=seconds)


MODELS = {"wavlm-layer": lambda: tiny_model(feat_extract_norm="layer"),
          "wavlm-group": lambda: tiny_model(feat_extract_norm="group"),
          "hubert": lambda: tiny("hubert", feat_extract_norm="layer"),
          "wav2vec2-stable": lambda: tiny("wav2vec2", do_stable_layer_norm=True, feat_extract_norm="layer"),
          "whisper": lambda: tiny("whisper")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_window_per_pass_is_the_windowed_forward(name):
    """A pass of one window is that window's forward pass, at every layer, for every family."""
    model = MODELS[name]()
    sound = audio(4.0, seed=1).numpy()
    windowed = vectors(model, sound, SPEC)
    one = vectors(model, sound, blocks(SPEC.stride))
    for k in LAYERS:
        torch.testing.assert_close(one[k], windowed[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cnn", [False, True])
def test_chunks_enter_the_transformer_as_their_windows_do(cnn):
    """Before the first attention layer every chunk's frames are its window's: CNN slices and position
    embedding (which must not read past the chunk). Above it they differ, with passes of many windows."""
    model = tiny_model(feat_extract_norm="layer")
    sound = audio(6.0, seed=2).numpy()
    windowed = vectors(model, sound, SPEC, cnn=cnn)
    block = vectors(model, sound, blocks(3.0), cnn=cnn)
    torch.testing.assert_close(block[0], windowed[0], rtol=0, atol=1e-5)
    assert (block[3] - windowed[3]).abs().max() > 1e-4  # a different representation, not the same one


def test_a_chunk_never_sees_audio_after_its_end_nor_before_its_reach():
    """Window i's vector at every layer is unchanged by any audio after its end, or before its pass; at
    layer 1, by audio before its window (less the position embedding's reach); audio inside changes it."""
    model = tiny_model(feat_extract_norm="layer")
    spec = blocks(2.0)
    sound = audio(6.0, seed=3).numpy()
    windows = StoryWindows.for_audio(len(sound), spec)
    groups = passes(np.arange(len(windows)), spec.block_windows)
    assert len(groups) >= 2 and len(groups[1]) == spec.block_windows
    i = groups[1][5]  # a window inside the second pass
    end = windows.ends[i]  # story sample where window i ends
    window_start = end - spec.window_samples
    pass_start = windows.ends[groups[1][0]] - spec.window_samples
    reach = model.config.num_conv_pos_embeddings // 2 * 320  # the position embedding reads this far back
    base = vectors(model, sound, spec)

    def changed(lo: int, hi: int) -> list[float]:
        other = sound.copy()
        other[max(lo, 0):hi] = audio((hi - max(lo, 0)) / 16000, seed=9).numpy()
        new = vectors(model, other, spec)
        return [float((new[k][i] - base[k][i]).abs().max()) for k in LAYERS]

    assert changed(end, len(sound)) == [0.0] * len(LAYERS)  # the future
    assert changed(0, pass_start) == [0.0] * len(LAYERS)  # before its pass
    assert changed(0, window_start - reach - 400)[1] == 0.0  # layer 1: its window (+ the embedding's reach)
    assert min(changed(end - 1600, end)) > 1e-4  # its own chunk does change it
    assert changed(pass_start, window_start - reach - 400)[3] > 1e-6  # layer 3 reaches further back (exact 0 above)


def test_passes_cut_runs_of_consecutive_windows():
    got = passes(np.array([0, 1, 2, 3, 4, 7, 8, 20]), 2)
    assert [g.tolist() for g in got] == [[0, 1], [2, 3], [4], [7, 8], [20]]


def test_block_vectors_keep_the_order_of_any_ids():
    """Windows asked for out of pass order (passes of two lengths batched apart) come back in ``ids`` order."""
    model = tiny_model(feat_extract_norm="layer")
    sound = audio(5.0, seed=4).numpy()
    spec = blocks(1.0)
    every = vectors(model, sound, spec)
    ids = np.array([0, 1, 2, 3, 9, 10, 11])  # a pass of 4 and one of 3
    some = vectors(model, sound, spec, ids=ids)
    first = vectors(model, sound, spec, ids=ids[:4])
    torch.testing.assert_close(some[2][:4], first[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(some[2][:4], every[2][:4], rtol=0, atol=1e-6)


def test_a_blocks_run_trains_and_scores_its_baseline_as_core_baseline_does_in_blocks(tiny_data, tmp_path):
    """Training, the epoch's features and the frozen baseline all use the run's extraction."""
    config = TrainConfig(readout_layer=3, lora_layers=[3], epochs=1, block_trs=35, bottleneck=8, lr=1e-2,
                         extraction="blocks", block_seconds=4.0, device="cpu")
    trainer = run_training(config, Dataset(tiny_data), "UTS01", tmp_path / "run").trainer
    moved = [p.abs().max() for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert moved and min(moved) > 1e-4  # gradients reach the adapters through the chunked attention
    out = tmp_path / "baseline"
    assert run(baseline.main, ["--data", str(tiny_data), "--subject", "UTS01", "--layer", "3", "--out", str(out),
                               "--extraction", "blocks", "--block-seconds", "4"]) == 0
    with h5py.File(out / "voxel_r.hf5") as f, h5py.File(tmp_path / "run" / "voxel_r.hf5") as g:
        np.testing.assert_allclose(g["baseline_r"][:], f["r"][:], atol=1e-5)


def test_windows_that_do_not_overlap_are_the_windows_at_every_layer():
    """1-s windows every 1 s (the demo's): each chunk is its whole window, so a pass of many is the windows."""
    model = tiny_model(feat_extract_norm="layer")
    spec = WindowSpec(context=0.75, chunk=0.25, stride=1.0)
    sound = audio(8.0, seed=5).numpy()
    windowed = vectors(model, sound, spec, cnn=True)
    block = vectors(model, sound, blocks(8.0, spec), cnn=True)
    for k in LAYERS:
        torch.testing.assert_close(block[k], windowed[k], rtol=0, atol=1e-5)
