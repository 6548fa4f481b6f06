"""Does brain-tuning recover the planted change? Frozen vs teacher vs tuned, on the planted-teacher data.

On the planted-teacher dataset (``core.synth``) the truth gives two reference points for
the voxels driven by the teacher's high layer ("high" voxels):

- **frozen**: ridge on the pretrained model's features of the read-out layer (the baseline);
- **teacher**: ridge on the teacher's features of that layer (what a perfect recovery of
  the planted change would give).

Each run below is a real ``python -m core.train`` on that data; its **tuned** number is the
paper's protocol (ridge refit on the tuned model's features). ``gap closed`` is
``(tuned - frozen) / (teacher - frozen)`` on the high voxels. All three numbers come from
one pipeline: the trainer's ridge (epoch 0 and the tuned refit) z-scores each story's
features like :func:`core.encoding.baseline.run_baseline`, so its epoch-0 ridge *is* the frozen
reference; the table's ``offset`` column (trainer's epoch 0 minus frozen, high voxels)
shows it, and a non-zero offset means the two pipelines have drifted apart. The runs:

- ``lora``: LoRA on the planted layers, whole-cortex weighting;
- ``no_adapters``: the same with the adapters held at zero (lr 0: only the readout trains): the control.
  Its backbone features never change, so the ridge measure (``val_r`` in ``history``) is
  the same at every epoch while its readout's own ``val_readout_r`` moves; a control
  whose ``val_r`` moves leaks training into the backbone;
- ``ac_only``: LoRA as ``lora`` with AC-only weighting: compare its AC r with ``lora``'s.

- ``refit``, ``whiten``, ``whiten_refit``: LoRA as ``lora`` with the readout set again from
  every epoch's ridge (``readout_refit: epoch``), fitted on whitened features
  (``readout_whiten``), or both (:mod:`core.tuning.readout_init`);
- ``full_rank``, ``full_refit``: LoRA as ``lora`` with a full-rank readout (``bottleneck: 0``, the
  whole ridge map rather than its rank-k part), without or with ``readout_refit: epoch``: on
  Whisper tiny.en the best of issue 22's methods (docs/real_speech.md).

Before training it prints two checks (:mod:`core.studies.recovery_checks`; ``--no-checks`` skips
them): the **oracle adapters** (the teacher's change written into the adapters must close
~100% of the gap, else the trainer's pipeline and the reference differ) and, for each run,
the **alignment cosine** of its readout as it starts (descent direction on the window
vectors vs the direction to the teacher's: near 0, the backbone gets little gradient
towards the change).

    python -m benchmarks.planted_recovery --size recovery --jobs 3 [--set lr=3e-3 ...]

Runs go in parallel (``--jobs``), each with ``--threads`` torch threads; on a GPU machine
add ``--set device=cuda``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from core.cli import quiet_libraries
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.encoding.baseline import run_baseline
from core.encoding.features import WindowSpec
from core.studies.recovery_checks import alignment_cosine, ridge_test_r, teacher_window_vectors, write_oracle_adapters
from core.synthetic import GROUPS, SIZES, generate
from core.tuning.trainer import Trainer

RUNS = {
    "lora": {},
    "no_adapters": {"lr": 0.0},
    "ac_only": {"roi_weights": {"AC": 1.0}},
    "refit": {"readout_refit": "epoch"},
    "whiten": {"readout_whiten": 0.1},
    "whiten_refit": {"readout_whiten": 0.1, "readout_refit": "epoch"},
    "full_rank": {"bottleneck": 0},
    "full_refit": {"bottleneck": 0, "readout_refit": "epoch"},
}


def reference(data: Path, subject: str, layer: int, window: WindowSpec) -> dict:
    """Ridge test r per voxel of the frozen and the teacher model's features (the core baseline),
    with the runs' ``window`` settings."""
    dataset = Dataset(data)
    truth = json.loads((data / "truth" / "truth.json").read_text())
    return {name: run_baseline(dataset, subject, layer, str(model), spec=window, cache_dir=data / "cache",
                               progress=lambda m: None)[0].r
            for name, model in (("frozen", data / "pretrained"), ("teacher", data / truth["teacher"]))}


def checks(data: Path, subject: str, settings: dict[str, list[str]], out: Path, high: np.ndarray,
           ref: dict) -> dict:
    """The oracle adapters' share of the gap closed (high voxels), and each run's alignment cosine at the start.

    ``settings``: run name -> its ``--set`` items; ``high``: bool array of the high voxels;
    ``ref``: :func:`reference`'s per-voxel r. The oracle runs with the first run's settings.
    """
    teacher = str(data / json.loads((data / "truth" / "truth.json").read_text())["teacher"])
    result = {"alignment_cosine": {}}
    frozen = taught = None
    for name, items in settings.items():
        trainer = Trainer(TrainConfig.load(overrides=items + ["epochs=0"]), Dataset(data), subject, out / name)
        trainer.fit()  # epoch 0: the normalisation statistics and the readout as training starts
        if frozen is None:
            frozen = trainer.features.window_vectors(trainer.split.train, trainer.features.frozen())
            taught = teacher_window_vectors(trainer, teacher, trainer.split.train)
        result["alignment_cosine"][name] = alignment_cosine(trainer, frozen, taught)
    result["oracle_rank_loss"] = write_oracle_adapters(trainer, teacher)
    r = ridge_test_r(trainer, trainer.features.window_vectors(trainer.cohort.stories))
    oracle = float(np.nanmean(r[high]))
    frozen_r, teacher_r = (float(np.nanmean(ref[k][high])) for k in ("frozen", "teacher"))
    result.update(oracle_high=oracle, oracle_gap_closed=(oracle - frozen_r) / (teacher_r - frozen_r))
    return result


def group_means(r: np.ndarray, group: np.ndarray) -> dict:
    """Mean r of the AC and high voxels (NaN where a run predicts none of a group)."""
    out = {}
    for i, name in enumerate(GROUPS):
        values = r[(group == i) & np.isfinite(r)]
        if name != "silent":
            out[name] = float(values.mean()) if values.size else float("nan")
    return out


def train(data: Path, subject: str, out: Path, overrides: list[str], threads: int) -> tuple[dict, float]:
    """One ``python -m core.train --set ...`` run; returns its per-voxel r arrays, best epoch and
    per-epoch ``history`` (validation ridge r ``val_r``, own readout's ``val_readout_r``), and its wall time."""
    args = [sys.executable, "-m", "core.train", "--data", str(data), "--subject", subject, "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.time()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    with h5py.File(out / "voxel_r.hf5") as f:
        arrays = {k: f[k][:] for k in ("baseline_r", "tuned_r", "tuned_readout_r")}
    summary = json.loads((out / "summary.json").read_text())
    arrays["best_epoch"] = summary["best_epoch"]
    arrays["history"] = [{k: h[k] for k in ("epoch", "val_r", "val_readout_r")} for h in summary["history"]]
    return arrays, time.time() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a planted-teacher dataset (default: generate one under --out)")
    parser.add_argument("--size", default="recovery", choices=sorted(SIZES))
    parser.add_argument("--out", type=Path, default=Path("planted-recovery"))
    parser.add_argument("--subject", default="UTS01")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a training setting for every run, as core.train takes it, e.g. --set lr=3e-3")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--no-checks", dest="checks", action="store_false",
                        help="skip the oracle-adapter and alignment checks before training")
    args = parser.parse_args(argv)
    quiet_libraries()

    data = args.data
    if data is None:
        data = args.out / "data"
        if not (data / "truth" / "truth.json").exists():
            generate(data, SIZES[args.size], progress=lambda m: print(m, file=sys.stderr))
    truth = json.loads((data / "truth" / "truth.json").read_text())["spec"]
    with h5py.File(data / "truth" / f"{args.subject}.hf5") as f:
        group = f["group"][:]
    layer, planted = truth["high_layer"], truth["planted_layers"]
    common = [f"{k}={json.dumps(v)}" for k, v in
              {"readout_layer": layer, "lora_layers": planted, "dropout": 0.0, "lora_dropout": 0.0}.items()]
    common += args.set

    config = TrainConfig.load(overrides=common)
    window = WindowSpec.of(config)
    started = time.time()
    voxel_ref = reference(data, args.subject, layer, window)
    ref = {name: group_means(r, group) for name, r in voxel_ref.items()}
    print(f"data {data}: {args.subject}, read-out layer {layer}, planted layers {planted}; "
          f"references in {time.time() - started:.0f} s", flush=True)

    names = args.runs.split(",")
    run_settings = {n: common + [f"{k}={json.dumps(v)}" for k, v in RUNS[n].items()] for n in names}
    checked = {}
    if args.checks:
        started = time.time()
        checked = checks(data, args.subject, run_settings, args.out / "checks", group == GROUPS.index("high"), voxel_ref)
        print(f"oracle adapters (the teacher's change written into them): high r {checked['oracle_high']:.3f}, "
              f"{checked['oracle_gap_closed']:.0%} of the gap closed (should be ~100%; rank lost "
              f"{checked['oracle_rank_loss']:.1e})", flush=True)
        for n, cosine in checked["alignment_cosine"].items():
            print(f"alignment cosine at the start, {n}: {cosine:.4f}", flush=True)
        print(f"checks in {time.time() - started:.0f} s", flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {n: pool.submit(train, data, args.subject, args.out / n, run_settings[n], args.threads)
                   for n in names}
        results = {n: f.result() for n, f in futures.items()}

    frozen, teacher = ref["frozen"]["high"], ref["teacher"]["high"]
    print(f"\nsettings for every run: {' '.join(common)}")
    print(f"high voxels, ridge on frozen features {frozen:.3f}, on teacher features {teacher:.3f}; "
          f"AC voxels frozen {ref['frozen']['AC']:.3f}, teacher {ref['teacher']['AC']:.3f}\n")
    print(f"{'run':<12} {'best ep':>7} {'offset':>7} {'high:base':>9} {'tuned':>7} {'readout':>8} {'gap closed':>10} "
          f"{'AC:base':>8} {'tuned':>7} {'readout':>8} {'seconds':>8}")
    report = {"data": str(data), "settings": common, "reference": ref, "checks": checked, "runs": {}}
    for n, (arrays, seconds) in results.items():
        m = {k: group_means(arrays[k], group) for k in ("baseline_r", "tuned_r", "tuned_readout_r")}
        closed = (m["tuned_r"]["high"] - frozen) / (teacher - frozen)
        offset = m["baseline_r"]["high"] - frozen
        print(f"{n:<12} {arrays['best_epoch']:>7} {offset:>7.3f} {m['baseline_r']['high']:>9.3f} {m['tuned_r']['high']:>7.3f} "
              f"{m['tuned_readout_r']['high']:>8.3f} {closed:>10.2f} {m['baseline_r']['AC']:>8.3f} "
              f"{m['tuned_r']['AC']:>7.3f} {m['tuned_readout_r']['AC']:>8.3f} {seconds:>8.0f}")
        report["runs"][n] = {**m, "gap_closed": closed, "offset": offset, "best_epoch": int(arrays["best_epoch"]),
                             "history": arrays["history"], "seconds": seconds}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
