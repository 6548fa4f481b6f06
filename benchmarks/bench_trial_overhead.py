"""Per-trial overhead of a sweep: trial wall time minus time inside the training loop.

    python -m benchmarks.bench_trial_overhead [--data DIR]

Runs the same one-trial sweep twice on the small planted-teacher dataset: a one-worker
trial (the trainer runs inside the Tune trial's process) and a two-worker trial (Ray Train
``TorchTrainer``, gloo). Prints, side by side, Tune's wall time of the trial, the time the
trainer spent in ``fit()`` (``loop_seconds``), and their difference: the start-up and
reporting cost that a sweep pays per trial. Each trial has one Ray CPU in all (two workers
get 0.5 each). Measured 2026-11-25 on the 2-core CPU machine: one worker 16.2 s wall, 15.4 s
in the loop (0.8 s overhead); two workers 21.5 s wall, 8.5 s in the loop (13.0 s overhead:
the Train controller, worker group and process group starting).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="planted-teacher dataset (default: a small one made in a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from core.synthetic import SIZES, generate

            small = replace(SIZES["tiny"], n_train_stories=2, train_trs=30, val_trs=20, test_trs=25, n_voxels=40)
            data = str(generate(tmp / "data", small, progress=lambda m: None))
        print(json.dumps({"platform": platform.platform(), "python": platform.python_version()}))
        print(f"{'workers':>8}{'trial wall s':>14}{'in loop s':>11}{'overhead s':>12}")
        for workers in (1, 2):
            space = {"name": "overhead", "data": data, "subjects": ["UTS01"],
                     "fixed": {"readout_layer": 3, "epochs": 1, "block_trs": 15, "bottleneck": 8, "device": "cpu"},
                     "budget": {"trials": 1, "concurrency": 1},
                     "resources": {"workers": workers, "cpus_per_worker": 1 / workers}}
            path = tmp / f"space{workers}.yaml"
            path.write_text(yaml.safe_dump(space))
            storage = tmp / f"sweep{workers}"
            proc = subprocess.run([sys.executable, "-m", "sweeper.launch", "--config", str(path), "--storage",
                                   str(storage)], cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"the {workers}-worker sweep failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            result = _last_result(storage)
            wall, loop = result["time_total_s"], result["loop_seconds"]
            print(f"{workers:>8}{wall:>14.1f}{loop:>11.1f}{wall - loop:>12.1f}", flush=True)
    return 0


def _last_result(storage: Path) -> dict:
    (path,) = storage.glob("tune/overhead/*/result.json")
    return json.loads(path.read_text().strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
