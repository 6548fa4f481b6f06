"""Several subjects on one backbone vs one: gap closed on the planted voxels, and data efficiency for a new subject.

On a planted-teacher dataset (``core.synth`` size ``multi``: the default sweep's ``demo``
with a third subject) every subject's responses come from one teacher, so each subject is more
evidence about the same planted change. Four runs (``core.run.run``) with the
fixed settings of search_spaces/multi_subject.yaml (the demo's, LoRA on the planted layer,
4 epochs):

- ``UTS01`` alone and ``UTS02`` alone;
- ``UTS01+UTS02``: one backbone, one readout each (``subjects: [UTS02]`` on UTS01's run),
  the same stories per subject as alone; each step has both subjects' losses on one block;
- ``UTS01+UTS02 interleaved``: the same with one step per subject on each block, in turn
  (``subject_steps: interleaved``: twice the steps).

For each trained subject, on its planted voxels: frozen ridge (epoch 0), tuned ridge (the
best epoch's refit), the teacher's ridge (the truth) and the share of the gap closed.

Data efficiency: every run also fits ridge readouts for the held-out ``UTS03`` on its
tuned backbone and on the pretrained one, from 10%, 25%, 50% and 100% of UTS03's training
stories (``transfer_fractions``): a backbone tuned on 1 subject vs on 2.

    python -m benchmarks.multi_subject [--out /tmp/multi_subject] [--jobs 2] [--set epochs=3 ...]

Writes ``benchmarks/results/multi_subject_cpu.json`` (``--results``). One torch thread per
run; not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "multi_subject.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "multi_subject_cpu.json"
RUNS = {"UTS01": ("UTS01", ["subjects=[]"]), "UTS02": ("UTS02", ["subjects=[]"]),
        "UTS01+UTS02": ("UTS01", ["subjects=[UTS02]"]),
        "UTS01+UTS02 interleaved": ("UTS01", ["subjects=[UTS02]", "subject_steps=interleaved"])}
NEW_SUBJECT = "UTS03"
FRACTIONS = [0.1, 0.25, 0.5, 1.0]


def settings(overrides: list[str]) -> list[str]:
    """The sweep's fixed settings (search_spaces/multi_subject.yaml), then ``overrides``."""
    fixed = yaml.safe_load(SPACE.read_text())["fixed"]
    return [f"{k}={json.dumps(v)}" for k, v in fixed.items()] + list(overrides)


def one_run(name: str, data: str, out: str, overrides: list[str]) -> dict:
    import torch

    from core.cli import quiet_libraries
    from core.config import TrainConfig
    from core.data.dataset import Dataset
    from core.run import run

    quiet_libraries()
    torch.set_num_threads(1)
    subject, changes = RUNS[name]
    config = TrainConfig.load(None, settings([*changes, *overrides]))
    folder = Path(out) / name
    shutil.rmtree(folder, ignore_errors=True)
    started = time.time()
    summary = run(config, Dataset(data), subject, folder).summary
    per_subject = {subject: {k: summary[k] for k in ("baseline", "tuned")}, **summary["cotrained"]}
    transfer = summary["transfer"][NEW_SUBJECT]
    return {"seconds": round(time.time() - started, 1), "best_epoch": summary["best_epoch"],
            "planted": {s: {k: v["roi_mean_r"]["planted"] for k, v in pair.items()} for s, pair in per_subject.items()},
            "new_subject": {key: {"all": v["mean_r"], "planted": v["roi_mean_r"]["planted"]} for key, v in transfer.items()}}


def main(argv=None) -> None:
    from core.config import TrainConfig
    from core.synthetic import SIZES, generate
    from sweeper.launch import teacher_ridge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/multi_subject")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    data = generate(Path(args.out) / "data", SIZES["multi"], progress=lambda m: None)
    started = time.time()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(one_run, name, str(data), args.out, args.set) for name in RUNS}
        runs = {name: future.result() for name, future in futures.items()}
    config = TrainConfig.load(None, settings(args.set)).to_dict()
    teacher = {s: teacher_ridge(data, s, config, progress=lambda m: None) for s in ("UTS01", "UTS02")}

    print(f"planted voxels, test r: frozen -> tuned (teacher), share of the gap closed; {time.time() - started:.0f} s")
    for name, run in runs.items():
        for subject, r in run["planted"].items():
            r["teacher"] = teacher[subject]
            r["gap_closed"] = (r["tuned"] - r["baseline"]) / (teacher[subject] - r["baseline"])
            print(f"  {name:<24} {subject}: {r['baseline']:.3f} -> {r['tuned']:.3f} ({teacher[subject]:.3f}): "
                  f"{r['gap_closed']:.0%}  (best epoch {run['best_epoch']}, {run['seconds']:.0f} s)")
    print(f"new subject {NEW_SUBJECT}, ridge readout from a share of its training stories: planted-voxel r, "
          "pretrained / tuned backbone")
    print(f"  {'backbone tuned on':<24}" + "".join(f"{f:>16.0%}" for f in FRACTIONS))
    for name, run in runs.items():
        cells = []
        for f in FRACTIONS:
            suffix = "" if f == 1 else f"@{f:g}"
            cells.append(f"{run['new_subject']['baseline' + suffix]['planted']:.3f} / "
                         f"{run['new_subject']['tuned' + suffix]['planted']:.3f}")
        print(f"  {name:<24}" + "".join(f"{c:>16}" for c in cells))
    Path(args.results).write_text(json.dumps({"data": "core.synth size multi (the demo with UTS03)",
                                              "settings": settings(args.set), "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
