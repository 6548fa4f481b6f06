"""The GPU path on the CPU: the device of every tensor, the RNG state of each GPU and rank, and the precision
of evaluation features (issue 19). The ``meta`` device stands for a GPU: a CPU tensor mixed with it raises."""

from __future__ import annotations

import pytest
import torch

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.tuning.trainer import Trainer

FAST = dict(readout_layer=3, lora_layers=[3], epochs=1, bottleneck=8, device="cpu")


def test_frozen_layers_are_mixed_on_the_model_device(small_data, tmp_path):
    """Epoch 0 (and transfer) with several read-out layers: the frozen features meet ``layer_logits`` on its device."""
    trainer = Trainer(TrainConfig(**{**FAST, "readout_layers": [2, 3]}), Dataset(small_data), "UTS01", tmp_path)
    frozen = trainer.features.frozen()
    story = trainer.split.train[0]
    expected = trainer.features.window_vectors([story], frozen)[story]
    # The read-out head on ``meta`` stands for a GPU (the backbone does not run on this path).
    trainer.model.norm.to("meta")
    trainer.model.layer_logits = torch.nn.Parameter(trainer.model.layer_logits.detach().to("meta"))
    mix = trainer.model.mix_layers
    mixed_on = []

    def mix_on_meta(vectors):
        mixed_on.append(mix(vectors).device)  # raises where a vector is not on the model's device
        return torch.zeros(expected.shape)  # a meta tensor holds no data to copy back

    trainer.model.mix_layers = mix_on_meta
    assert trainer.features.window_vectors([story], frozen)[story].shape == expected.shape
    assert mixed_on == [torch.device("meta")]


def test_evaluation_features_have_one_precision_at_every_epoch(small_data, tmp_path, monkeypatch):
    """bf16 trains, but epoch 0's features (the frozen model's) and a later epoch's (the current model's)
    are computed at one precision: before training the two are the same model, so they must agree."""
    monkeypatch.setenv("BRAINSWEEP_CACHE", str(tmp_path / "cache"))  # epoch 0's features computed, not read
    trainer = Trainer(TrainConfig(**{**FAST, "precision": "bf16"}), Dataset(small_data), "UTS01", tmp_path / "run")
    story = trainer.split.val[0]
    autocast = []  # whether bf16 autocast was on, at each call of a backbone projection
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: autocast.append(torch.is_autocast_enabled("cpu"))
        if isinstance(module, torch.nn.Linear) else None)
    try:
        baseline = trainer.features.window_vectors([story], trainer.features.frozen())[story]
        at_epoch0 = set(autocast)
        autocast.clear()
        tuned = trainer.features.window_vectors([story])[story]
    finally:
        hook.remove()
    assert at_epoch0 == set(autocast) == {False}
    assert tuned.dtype == baseline.dtype == torch.float32
    torch.testing.assert_close(tuned, baseline, rtol=1e-4, atol=1e-5)


class FakeCuda:
    """``torch.cuda``'s RNG functions for ``n`` visible GPUs: GPU i's state is ``[i, i, i, i]``; restores recorded."""

    def __init__(self, monkeypatch, n: int):
        self.n, self.restored = n, []
        for name in ("is_available", "device_count", "get_rng_state", "set_rng_state", "get_rng_state_all",
                     "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def is_available(self):
        return True

    def device_count(self):
        return self.n

    def _index(self, device):
        index = torch.device(device).index if not isinstance(device, int) else device
        index = 0 if index is None else index
        if index >= self.n:
            raise IndexError(f"no GPU {index} among {self.n}")
        return index

    def get_rng_state(self, device="cuda"):
        return torch.full((4,), self._index(device), dtype=torch.uint8)

    def set_rng_state(self, state, device="cuda"):
        self.restored.append((self._index(device), state.tolist()))

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(self.n)]

    def set_rng_state_all(self, states):
        for i, state in enumerate(states):
            self.set_rng_state(state, i)


def test_a_worker_saves_and_restores_its_own_gpus_rng_under_fewer_gpus(small_data, tmp_path, monkeypatch):
    """Saved by a worker on cuda:2 of 4 visible GPUs, resumed on cuda:0 as the only one: its own GPU's state
    comes back (not every GPU's, which raised IndexError under one)."""
    trainer = Trainer(TrainConfig(**FAST), Dataset(small_data), "UTS01", tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    cuda = FakeCuda(monkeypatch, 4)
    trainer.device = torch.device("cuda", 2)  # the model stays on the CPU: only the RNG is asked of the GPU
    trainer._save(path)
    cuda.n = 1
    trainer.device = torch.device("cuda", 0)
    trainer._load(path, restore_rng=True)
    assert cuda.restored == [(0, [2, 2, 2, 2])]


RESUME_RNG = """
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.tuning.distributed import barrier
from core.tuning.trainer import Trainer

dist.init_process_group("gloo")
data, out = Path(sys.argv[1]), Path(sys.argv[2])
trainer = Trainer(TrainConfig(**json.loads(sys.argv[3])), Dataset(data), "UTS01", out)
torch.manual_seed(100 + trainer.rank)
trainer._save(out / "last.pt")
barrier()  # written before any worker reads it
expected = torch.rand(3).tolist()
torch.manual_seed(0)
trainer._load(out / "last.pt", restore_rng=True)
(out / f"rank{trainer.rank}.json").write_text(json.dumps({"expected": expected, "got": torch.rand(3).tolist()}))
dist.destroy_process_group()
"""


def test_two_gloo_workers_resume_each_its_own_rng(small_data, tmp_path):
    """Each worker of a 2-worker run draws after resuming what it would have drawn without stopping."""
    import json
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "resume_rng.py"
    script.write_text(RESUME_RNG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}",
                          "--master-addr=127.0.0.1", str(script), str(small_data), str(tmp_path), json.dumps(FAST)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["expected"] != ranks[1]["expected"]
    for rank in ranks:
        assert rank["got"] == rank["expected"]


@pytest.fixture
def gpu_host(monkeypatch):
    """A host with GPUs (``torch.cuda`` says so) where Ray reserves ``reserved`` (GPU ids) for the worker.

    ``ray.train.torch.get_device`` answers as Ray's does: the first reserved GPU's index among the
    visible ones (here GPU ``3`` visible as ``cuda:1``), ``cuda:0`` when none is reserved.
    """
    import ray
    import ray.train.torch

    host = type("Host", (), {"reserved": [], "current": []})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", host.current.append)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: host.reserved)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 1 if host.reserved else 0))
    return host


def _devices_given_to_the_trainer(monkeypatch, tmp_path, settings: dict, workers: int) -> list:
    """Run a trial's Ray side (in-process for 1 worker, a Train worker's loop for more); the device it passed on."""
    from ray import train as ray_train
    from ray import tune

    from sweeper import trial

    given = []
    monkeypatch.setattr(trial, "train", lambda *args, **kwargs: given.append(args[5]) or ({}, 0.0))
    monkeypatch.setattr(trial, "final_metrics", lambda summary, seconds: {})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(tune, "report", lambda metrics: None)
    monkeypatch.setattr(tune, "get_context", lambda: type("Context", (), {"get_trial_id": lambda self: "t0"})())
    monkeypatch.setattr(ray_train, "report", lambda metrics: None)
    if workers == 1:
        trial.run_trial({"subject": "UTS01", "settings": {}}, trial.TrialPlan("data", settings, str(tmp_path)))
    else:
        trial._worker_loop({"config": TrainConfig.from_dict(settings).to_dict(), "data": "data", "subject": "UTS01",
                            "out": str(tmp_path), "cpus": 1})
    return given


@pytest.mark.parametrize("workers", [1, 2])
def test_auto_device_is_the_gpu_ray_reserved_else_the_cpu(workers, gpu_host, monkeypatch, tmp_path):
    auto = {"device": "auto"}
    # No GPU reserved (gpus_per_worker: 0) on a GPU host: the CPU, not cuda:0 (another trial's, or nobody's).
    assert _devices_given_to_the_trainer(monkeypatch, tmp_path, auto, workers) == [torch.device("cpu")]
    assert gpu_host.current == []
    gpu_host.reserved = [3]
    assert _devices_given_to_the_trainer(monkeypatch, tmp_path, auto, workers) == [torch.device("cuda", 1)]
    assert gpu_host.current == [torch.device("cuda", 1)]


@pytest.mark.parametrize("device, resources, expected", [
    ("cuda:1", {"workers": 2, "gpus_per_worker": 1}, "device: cuda:1 with 2 workers"),
    ("auto", {"workers": 2, "gpus_per_worker": 0.5}, "resources.gpus_per_worker: 0.5 with 2 workers"),
    ("cuda", {"workers": 1, "gpus_per_worker": 0}, "device: cuda with resources.gpus_per_worker: 0"),
])
def test_devices_the_resources_cannot_give_fail_before_the_sweep(device, resources, expected, tiny_data, tmp_path):
    from core.errors import ConfigError
    from sweeper.launch import check_trials
    from sweeper.space import parse_spec

    spec = parse_spec({"data": str(tiny_data), "fixed": {"readout_layer": 3, "device": device}, "resources": resources},
                      "space.yaml")
    with pytest.raises(ConfigError, match=rf"^space\.yaml: {expected}"):
        check_trials(spec, tiny_data, ["UTS01"])
    ok = parse_spec({"data": str(tiny_data), "fixed": {"readout_layer": 3, "device": "auto"},
                     "resources": {"workers": 2, "gpus_per_worker": 1}}, "space.yaml")
    check_trials(ok, tiny_data, ["UTS01"])
