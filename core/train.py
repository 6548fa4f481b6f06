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
(gloo on CPU, NCCL with one GPU per process; see :mod:`core.trainer`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .cli import progress, run
from .config import TrainConfig
from .errors import StudyError

if TYPE_CHECKING:  # torch and the trainer load in seconds: imported where used, so --help is instant
    import torch

    from .trainer import Trainer


def write_results(out: Path, trainer: Trainer, summary: dict) -> None:
    """Results files, each written to a temporary name first so none is ever half-written."""
    from .outputs import atomic_write, write_json, write_voxel_results

    results = trainer.results
    arrays = {"baseline_r": results["baseline"].r, "tuned_r": results["tuned"].r,
              "tuned_readout_r": results["tuned_readout"].r}
    if results["tuned"].ceiling is not None:
        arrays["ceiling"] = results["tuned"].ceiling
    for name, write in [
        ("voxel_r.hf5", lambda p: write_voxel_results(p, arrays, {"config": summary["config"], "subject": summary["subject"]})),
        ("config.yaml", lambda p: p.write_text(yaml.safe_dump(summary["config"], sort_keys=False))),
        ("summary.json", lambda p: write_json(p, summary)),
    ]:
        atomic_write(out / name, write)


def raise_failed_studies(summary: dict, out: Path) -> None:
    """After the results are written: a StudyError naming the studies that failed, if any."""
    failed = summary.get("failed_studies") or {}
    if failed:
        reasons = "; ".join(f"{name}: {message}" for name, message in failed.items())
        raise StudyError(f"{', '.join(failed)} failed after training ({reasons}). The trained model's results are in "
                         f"{out}/summary.json and voxel_r.hf5; fix the cause and run again (a sweep: --resume): "
                         "the run resumes from its checkpoints and repeats only the evaluation")


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

    from .dataset import Dataset
    from .trainer import Trainer

    config = TrainConfig.load(args.config, args.set)
    dataset = Dataset(args.data)
    device = _join_torchrun(config)
    trainer = Trainer(config, dataset, args.subject, args.out, progress=progress, device=device)
    summary = trainer.fit()
    if summary is None:  # another data-parallel worker: rank 0 writes the results
        return 0
    out = Path(args.out)
    write_results(out, trainer, summary)
    for name in ("baseline", "tuned", "tuned_readout"):
        s = summary[name]
        rois = ", ".join(f"{k} {v:.3f}" for k, v in s["roi_mean_r"].items())
        print(f"{name:>13}: mean r {s['mean_r']:.3f} ({rois})")
    print(f"best epoch {summary['best_epoch']}; wrote {out}/summary.json")
    raise_failed_studies(summary, out)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
