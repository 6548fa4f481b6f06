"""Which adapted layer closes the planted gap: single trainer runs on a planted-teacher dataset.

For each subject and each layer, one ``core.tuning.trainer.Trainer`` run with LoRA on that layer
only, the default sweep's fixed settings (search_spaces/demo.yaml) plus ``--set``
overrides. Prints the whole-cortex and planted-voxel validation r per epoch, and the
planted voxels' test r of the frozen and the tuned model against the teacher's ridge (the
truth), with the share of the gap closed. docs/planted_recovery.md has the table it made.

    python -m benchmarks.demo_layers --data DIR [--layers 2 3] [--subjects UTS01 UTS02]
                                     [--set epochs=5 ...] [--out /tmp/demo_layers]

DIR is a ``core.synth`` dataset (``python -m core.synth --size demo --out DIR``). One
thread per run; not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from core.config import TrainConfig
from core.data.dataset import Dataset
from core.tuning.trainer import Trainer
from sweeper.launch import teacher_ridge

DEMO = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--subjects", nargs="+", default=["UTS01", "UTS02"])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", default="/tmp/demo_layers")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = [f"{k}={json.dumps(v)}" for k, v in yaml.safe_load(DEMO.read_text())["fixed"].items()] + args.set
    data = Path(args.data)
    for subject in args.subjects:
        teacher = teacher_ridge(data, subject, TrainConfig.load(None, settings).to_dict(), progress=lambda m: None)
        for layer in args.layers:
            config = TrainConfig.load(None, [*settings, f"lora_layers=[{layer}]"])
            out = Path(args.out) / f"{subject}_L{layer}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.time()
            summary = Trainer(config, Dataset(data), subject, out).fit()
            frozen, tuned = (summary[k]["roi_mean_r"]["planted"] for k in ("baseline", "tuned"))
            val = " ".join(f"{h['val_r']:.4f}" for h in summary["history"])
            planted = " ".join(f"{h['val_roi_r']['planted']:.4f}" for h in summary["history"])
            print(f"{subject} layer {layer}: val r [{val}], planted [{planted}]; best epoch {summary['best_epoch']}; "
                  f"planted test r {frozen:.3f} -> {tuned:.3f} (teacher {teacher:.3f}): "
                  f"{(tuned - frozen) / (teacher - frozen):.0%} of the gap; {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
