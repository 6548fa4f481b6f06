"""Fine-tune WavLM on one subject: ``python -m core.train``.

``python -m core.train --data DIR --subject UTS01 --out OUT [--config FILE.yaml] [--set name=value ...]``

Writes, when the run completes:

- ``OUT/summary.json``: ``baseline`` (epoch 0, ridge), ``tuned`` (ridge refit on the best
  epoch's features: the paper's protocol) and ``tuned_readout`` (the model's own readout),
  each with ``mean_r``, ``roi_mean_r`` (and ``ceiling_fraction`` where the test story has
  repeats); ``best_epoch``; the per-epoch history; the full configuration; the study
  measures (``transfer``, ``probes``) and ``failed_studies`` (study -> error message).
- ``OUT/voxel_r.hf5``: per-voxel ``baseline_r``, ``tuned_r``, ``tuned_readout_r`` and
  ``ceiling``, each of shape (n_voxels,).
- ``OUT/config.yaml``: the configuration, loadable with ``--config``.

A study that fails after training (say, a TextGrid the probes need went missing) loses
nothing: the files above are written first, then the run ends with a one-line error
naming the study (exit status 2). Running the same command again, once the cause is
fixed, repeats only the evaluation.

``OUT/checkpoints/`` holds ``last.pt`` and ``best.pt``; running the same command again
resumes an interrupted run where it stopped. Settings are documented in
:mod:`core.config`.

Data-parallel on one machine without Ray: ``torchrun --nproc-per-node N -m core.train ...``
(gloo on CPU, NCCL with one GPU per process; see :mod:`core.tuning.trainer`). The run itself is
:func:`core.run.run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli import progress, run
from core.config import TrainConfig

if TYPE_CHECKING:  # torch loads in seconds: imported where used, so --help is instant
    import torch


def _join_torchrun(config: TrainConfig) -> torch.device | None:
    """Under torchrun (``WORLD_SIZE`` > 1): join its process group; returns this worker's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    gpu = config.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    return device


def main(argv=None) -> int:
    settings = ", ".join(field.name for field in dataclasses.fields(TrainConfig))
    parser = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.splitlines()[0],
                                     epilog=f"settings (core/config.py TrainConfig): {settings}")
    parser.add_argument("--data", required=True, help="dataset root (ds003020 layout)")
    parser.add_argument("--subject", required=True, help="subject to tune on, as named in the dataset, e.g. UTS01")
    parser.add_argument("--out", required=True, help="output folder; an interrupted run there is resumed")
    parser.add_argument("--config", help="YAML file of settings (see core/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one setting, e.g. --set lr=3e-4 --set lora_layers=[2,3] (settings listed below)")
    args = parser.parse_args(argv)

    from core.data.dataset import Dataset
    from core.run import raise_failed_studies
    from core.run import run as run_training

    config = TrainConfig.load(args.config, args.set)
    dataset = Dataset(args.data)
    device = _join_torchrun(config)
    result = run_training(config, dataset, args.subject, args.out, progress=progress, device=device)
    if result is None:  # another data-parallel worker: rank 0 writes the results
        return 0
    summary, out = result.summary, Path(args.out)
    for name in ("baseline", "tuned", "tuned_readout"):
        s = summary[name]
        rois = ", ".join(f"{k} {v:.3f}" for k, v in s["roi_mean_r"].items())
        print(f"{name:>13}: mean r {s['mean_r']:.3f} ({rois})")
    print(f"best epoch {summary['best_epoch']}; wrote {out}/summary.json")
    raise_failed_studies(summary, out)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
