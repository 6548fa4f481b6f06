"""Memory of the ridge evaluation does not grow with the voxel count (issue 10).

A subprocess fits and scores ridge through :func:`core.encoding.evaluation.ridge_evaluation` on
response files written here with h5py, and reports how far its resident memory rose
above what it held before the fit (Linux peak RSS, reset just before). The rise must
stay below one float32 copy of the training responses (it is mostly fixed costs and
block buffers), and doubling the voxels must not double it: a full copy of Y (float64
or float32) anywhere on the path fails both. Scoring a prediction (the trainer's
validation and test r) reads the responses one voxel block at a time, and a readout's
prediction made per voxel block (:func:`core.tuning.model.readout_prediction`) is never held
whole either: each of those rises stays below half a float32 copy of the responses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

SUBJECT = "UTS01"
N_STORIES = 13  # one test story with repeats, twelve training stories
N_ROWS = 200
N_FEATURES = 32
BLOCK_BYTES = 16 * 2**20  # the ridge's voxel-block budget in the measured run

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="peak RSS is reset through Linux /proc")

MEASURE = r"""
import json, sys
import numpy as np
from core.data.dataset import Dataset
from core.encoding.evaluation import ridge_evaluation
from core.encoding.ridge import fit_ridge

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)

root, subject, block_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
dataset = Dataset(root)
stories = dataset.stories(subject)
features = {s: np.load(f"{root}/features/{s}.npy") for s in stories}
test = ("story0",)
train = [s for s in stories if s not in test]
# Warm up: one-time allocations (thread pools, HDF5) are not what we measure.
rng = np.random.default_rng(0)
fit_ridge(rng.standard_normal((300, 8)), rng.standard_normal((300, 20)))
dataset.responses(subject, stories[0], voxels=slice(0, 10))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS to the current RSS
before = status("VmRSS")
fit, evaluations = ridge_evaluation(features, dataset, subject, train, {"test": test}, block_bytes=block_bytes)
rise = status("VmHWM") - before
# The trainer's scoring of its own readout (every epoch's validation r, the test r): a
# prediction for every voxel is held, the responses are read one voxel block at a time.
from core.encoding.evaluation import prediction_r
prediction = np.stack([fit.predict(features[s]) for s in train]).reshape(-1, fit.weights.shape[1]).astype(np.float32)
prediction[~np.isfinite(prediction)] = 0
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
r = prediction_r(prediction, dataset, subject, train, block_bytes=block_bytes)
scoring_rise = status("VmHWM") - before
del prediction
# The same scoring of a readout's prediction made per voxel block (core.tuning.model.readout_prediction):
# then the prediction is not held either.
import torch
from core.tuning.model import Readout, readout_prediction
n_voxels = fit.weights.shape[1]
outputs = np.arange(50, n_voxels)  # the first 50 voxels are NaN
torch.manual_seed(0)
readout = Readout(features[train[0]].shape[1], len(outputs), 8)
x = torch.as_tensor(np.concatenate([features[s] for s in train]))
readout_prediction(readout, x, outputs, n_voxels)(slice(0, 100))  # warm up torch's one-time allocations
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
readout_r = prediction_r(readout_prediction(readout, x, outputs, n_voxels), dataset, subject, train,
                         block_bytes=block_bytes)
readout_rise = status("VmHWM") - before
print(json.dumps({"rise": rise, "readout_rise": readout_rise, "readout_r_finite": int(np.isfinite(readout_r).sum()),
                  "mean_r": evaluations["test"].summary["mean_r"],
                  "ceiling": evaluations["test"].summary["mean_ceiling"],
                  "scoring_rise": scoring_rise, "train_r": float(np.nanmean(r))}))
"""


def _write_dataset(root: Path, n_voxels: int) -> int:
    """Stories whose voxels read a linear map of random features, plus noise; returns Y's float32 bytes."""
    rng = np.random.default_rng(0)
    readout = rng.standard_normal((N_FEATURES, n_voxels)).astype(np.float32) / np.sqrt(N_FEATURES)
    (root / "stimuli").mkdir(parents=True)
    (root / "features").mkdir()
    folder = root / "derivative" / "preprocessed_data" / SUBJECT
    folder.mkdir(parents=True)
    for i in range(N_STORIES):
        X = rng.standard_normal((N_ROWS, N_FEATURES)).astype(np.float32)
        np.save(root / "features" / f"story{i}.npy", X)
        signal = X @ readout
        with h5py.File(folder / f"story{i}.hf5", "w") as f:
            data = signal + rng.standard_normal(signal.shape, dtype=np.float32)
            data[:, :50] = np.nan  # NaN voxels, as in real data
            f["data"] = data
            if i == 0:
                f["individual_repeats"] = signal + rng.standard_normal((3,) + signal.shape, dtype=np.float32)
    return (N_STORIES - 1) * N_ROWS * n_voxels * 4


def _measure(root: Path) -> dict:
    # One thread: OpenMP threads spinning on a busy CI machine only cost time here.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(root), SUBJECT, str(BLOCK_BYTES)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ridge_evaluation_memory_does_not_grow_with_voxels(tmp_path):
    rises = {}
    for n_voxels in (12_000, 24_000):
        root = tmp_path / f"v{n_voxels}"
        y_bytes = _write_dataset(root, n_voxels)
        result = _measure(root)
        # The fit is real: the voxels are predictable and their ceiling is high.
        assert result["mean_r"] > 0.5 and result["ceiling"] > 0.5
        rises[n_voxels] = result["rise"]
        # Scoring a prediction streams the responses: far below one float32 copy of them.
        assert result["train_r"] > 0.5
        assert result["scoring_rise"] < y_bytes / 2, (
            f"{n_voxels} voxels: memory rose {result['scoring_rise'] / 2**20:.0f} MiB while scoring a "
            f"prediction; the responses are {y_bytes / 2**20:.0f} MiB as float32"
        )
        # ... and so does scoring a readout's prediction made per voxel block: neither the
        # responses nor the (rows x voxels) prediction are ever held whole.
        assert result["readout_r_finite"] == n_voxels - 50
        assert result["readout_rise"] < y_bytes / 2, (
            f"{n_voxels} voxels: memory rose {result['readout_rise'] / 2**20:.0f} MiB while scoring a readout's "
            f"prediction; the prediction is {y_bytes / 2**20:.0f} MiB as float32"
        )
        assert result["rise"] < y_bytes, (
            f"{n_voxels} voxels: memory rose {result['rise'] / 2**20:.0f} MiB during the ridge "
            f"evaluation; training responses are {y_bytes / 2**20:.0f} MiB as float32"
        )
    assert rises[24_000] < 1.4 * rises[12_000], (
        f"doubling the voxels raised the memory rise from {rises[12_000] / 2**20:.0f} "
        f"to {rises[24_000] / 2**20:.0f} MiB"
    )
