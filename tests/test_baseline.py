"""The frozen-feature ridge baseline, end to end, and its answers to bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from core import synthetic as synth
from core.cli import run
from core.data.dataset import write_responses, write_roi_masks, write_wav
from core.encoding import baseline


def test_baseline_explains_ac_near_ceiling_and_planted_voxels_less(tiny_data, tmp_path):
    out = tmp_path / "out"
    assert run(baseline.main, ["--data", str(tiny_data), "--subject", "UTS01", "--layer", "1", "--out", str(out)]) == 0
    low = json.loads((out / "summary.json").read_text())
    assert run(baseline.main, ["--data", str(tiny_data), "--subject", "UTS01", "--layer", "3", "--out", str(out)]) == 0
    high = json.loads((out / "summary.json").read_text())
    for summary in (low, high):
        assert {"AC", "left", "right"} <= set(summary["roi_mean_r"])
        assert 0 < summary["ceiling_fraction"] < 1
        # Silent voxels take the grid's largest alpha; the fraction is recorded, not hidden.
        assert 0 < summary["alpha_edge_fraction"] < 1
    with h5py.File(out / "voxel_r.hf5") as f:
        r, ceiling = f["r"][:], f["ceiling"][:]
    with h5py.File(tiny_data / "truth" / "UTS01.hf5") as f:
        group, true_ceiling = f["group"][:], f["noise_ceiling"][:]
    # The ceiling estimated from repeats matches the exact one the generator knows.
    responsive = group != synth.GROUPS.index("silent")
    ok = responsive & np.isfinite(true_ceiling)
    assert np.nanmean(np.abs(ceiling[ok] - true_ceiling[ok])) < 0.05
    assert np.isnan(r[~np.isfinite(true_ceiling)]).all()
    # Done means (issue 2): AC at a large fraction of its ceiling, planted voxels clearly less.
    assert low["roi_ceiling_fraction"]["AC"] > 0.9
    high_voxels = group == synth.GROUPS.index("high")
    planted_fraction = np.nanmean(r[high_voxels]) / np.nanmean(true_ceiling[high_voxels])
    assert planted_fraction < low["roi_ceiling_fraction"]["AC"] - 0.15
    assert high["settings"]["alpha_convention"].startswith("himalaya")


def _copy(tiny_data, tmp_path):
    """A writable copy of the dataset, without the models and the truth."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("truth", "pretrained"))
    return root


def _missing_audio(root):
    (root / "stimuli" / "avatar.wav").unlink()
    return "avatar.wav"


def _voxel_count(root):
    path = root / "derivative/preprocessed_data/UTS01/avatar.hf5"
    write_responses(path, np.zeros((70, 17), np.float32))
    return "avatar.hf5"


def _short_audio(root):
    write_wav(root / "stimuli" / "legacy.wav", np.zeros(16000 * 20, np.float32))
    return "legacy"


def _roi_length(root):
    write_roi_masks(root / "derivative/rois/UTS01.hf5", {"AC": np.ones(7, bool)})
    return "UTS01.hf5"


def _unreadable(root):
    (root / "derivative/preprocessed_data/UTS01/life.hf5").write_text("not hdf5")
    return "life.hf5"


BAD_DATA = [_missing_audio, _voxel_count, _short_audio, _roi_length, _unreadable]


@pytest.mark.parametrize("corrupt", BAD_DATA, ids=lambda f: f.__name__.strip("_"))
def test_bad_dataset_gets_one_line_and_writes_nothing(corrupt, tiny_data, tmp_path, capsys):
    root = _copy(tiny_data, tmp_path)
    expected = corrupt(root)
    out = tmp_path / "out"
    argv = ["--data", str(root), "--subject", "UTS01", "--layer", "1", "--out", str(out),
            "--model", str(tiny_data / "pretrained")]
    assert run(baseline.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("argv, expected", [
    (["--subject", "UTS09"], "UTS09"),
    (["--test", "nosuchstory"], "nosuchstory"),
    (["--layer", "9"], "--layer 9"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
])
def test_bad_arguments_get_one_line(argv, expected, tiny_data, tmp_path, capsys):
    base = {"--data": str(tiny_data), "--subject": "UTS01", "--layer": "1", "--out": str(tmp_path / "out")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    args = [x for pair in base.items() for x in pair]
    assert run(baseline.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not (tmp_path / "out").exists()


def test_command_line_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core.baseline", "--data", str(tmp_path / "nothing"),
                           "--subject", "UTS01", "--layer", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nothing") in proc.stderr
