"""Gap closed per epoch, by method, on one planted-teacher dataset: the issue-22 screening and curve.

Each call trains one method (:data:`METHODS`, on top of :data:`benchmarks.real_speech_recovery.SETTINGS`
and planted_recovery's common settings) in this process, one torch thread, and after every
epoch records the validation r (whole cortex, planted ROI, the model's own readout) and the
**gap closed** on the planted ("high") voxels of the test story by the best epoch so far
(the project's protocol: ridge refit on that epoch's features, the epoch chosen by
validation r), ``(tuned - frozen) / (teacher - frozen)`` as :mod:`benchmarks.planted_recovery`
reports it. The record goes into ``--json`` (one entry per ``--label``) after every epoch,
so a run cut short keeps what it measured.

    python -m benchmarks.recovery_curve --data DATA --out OUT --method lora --label 1000/lora [--stop-after 2]

A run stopped with ``--stop-after`` resumes from its checkpoint when called again with the
same method and data (the epochs are part of the run's identity, so all runs are set up for
``SETTINGS['epochs']`` and stopped early).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.bench_trainer import machine
from benchmarks.planted_recovery import RUNS, group_means, reference
from benchmarks.real_speech_recovery import SETTINGS
from core.cli import quiet_libraries
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.features import WindowSpec
from core.synthetic import GROUPS
from core.tuning.trainer import Trainer

#: method -> settings on top of SETTINGS: planted_recovery's runs and issue 22's other candidates (docs/real_speech.md).
METHODS = {
    **RUNS,  # lora is the default: a rank-32 readout from the epoch-0 ridge map, trained at readout_lr 1e-3
    "refit_steps": {"readout_refit": "epoch", "readout_refit_steps": 50},
    "two_scales": {"lr": 3e-3, "readout_lr": 1e-4},
    "random_head": {"readout_init": "random", "readout_lr": 1e-2},
    "full_slow": {"bottleneck": 0, "readout_lr": 1e-5},
}


class _Stop(Exception):
    pass


def references(data: Path, out: Path, subject: str, config: TrainConfig) -> dict:
    """Group means (AC, high) of the frozen and the teacher ridge, computed once into ``out/references.json``."""
    path = out / "references.json"
    if not path.exists():
        window = WindowSpec(context=config.context, chunk=config.chunk, stride=config.stride)
        voxel = reference(data, subject, config.readout_layer, window)
        with h5py.File(data / "truth" / f"{subject}.hf5") as f:
            group = f["group"][:]
        path.write_text(json.dumps({k: group_means(r, group) for k, r in voxel.items()}, indent=1))
    return json.loads(path.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (OUT/<method>) and references")
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--label", required=True, help="the run's key in --json")
    parser.add_argument("--subject", default="UTS01")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this epoch (resumable)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/real_speech_recovery_curve_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quiet_libraries()

    spec = json.loads((args.data / "truth" / "truth.json").read_text())["spec"]
    settings = {"readout_layer": spec["high_layer"], "lora_layers": spec["planted_layers"], "dropout": 0.0,
                "lora_dropout": 0.0, **SETTINGS, **METHODS[args.method]}
    items = [f"{k}={json.dumps(v)}" for k, v in settings.items()] + args.set
    config = TrainConfig.load(overrides=items)
    args.out.mkdir(parents=True, exist_ok=True)
    ref = references(args.data, args.out, args.subject, config)
    frozen, teacher = ref["frozen"]["high"], ref["teacher"]["high"]
    with h5py.File(args.data / "truth" / f"{args.subject}.hf5") as f:
        high = f["group"][:] == GROUPS.index("high")

    results = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    results.update(what="issue 22: gap closed per epoch by method, Whisper tiny.en + Festival speech, UTS01",
                   machine=machine())
    run = results["runs"].setdefault(args.label, {})
    run.update(command="python -m benchmarks.recovery_curve " + " ".join(argv or sys.argv[1:]), data=str(args.data),
               settings=items, frozen_high=frozen, teacher_high=teacher, reference=ref)
    epochs = {e["epoch"]: e for e in run.get("epochs", [])}
    trainer = None

    def on_epoch(record: dict) -> None:
        tuned = float(np.nanmean(trainer.evaluations["tuned"].r[high]))
        epochs[record["epoch"]] = {
            "epoch": record["epoch"], "val_r": record["val_r"], "val_planted_r": record["val_roi_r"].get("planted"),
            "val_readout_r": record["val_readout_r"], "best_epoch": record["best_epoch"], "tuned_high": tuned,
            "gap_closed": (tuned - frozen) / (teacher - frozen), "seconds": record["seconds"],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        run["epochs"] = [epochs[k] for k in sorted(epochs)]
        args.json.write_text(json.dumps(results, indent=1))
        print(f"{args.label} epoch {record['epoch']}: val r {record['val_r']:.4f}, planted val r "
              f"{epochs[record['epoch']]['val_planted_r']:.4f}, gap closed {epochs[record['epoch']]['gap_closed']:.1%}"
              f" ({record['seconds']:.0f} s)", flush=True)
        if args.stop_after is not None and record["epoch"] >= args.stop_after:
            raise _Stop

    trainer = Trainer(config, Dataset(args.data), args.subject, args.out / args.method,
                      progress=lambda m: print(m, file=sys.stderr, flush=True), on_epoch=on_epoch)
    try:
        trainer.fit()
    except _Stop:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
