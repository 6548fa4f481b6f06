"""``extraction: windows`` against ``blocks``, side by side in one run: FLOPs, epoch time, features, ridge r, gap closed.

    python -m benchmarks.bench_extraction [--parts flops,epochs,features,real] [--epochs 3]
        [--out bench-extraction] [--real-data DIR] [--json FILE]

Parts (each prints its own lines; everything goes to ``--json``, default
``benchmarks/results/extraction_cpu.json``):

- ``flops``: transformer and front-end forward FLOPs, counted by ``torch.utils.flop_counter``
  on the ``meta`` device (nothing is computed), of wavlm-base-plus' geometry (random
  weights, read out at layer 9) at the paper's windows (3.75 s + 0.25 s every 0.25 s): one
  10-TR training block, and the evaluation pass over a minute of audio; then per ds003020
  subject epoch (28,700 training TRs in 10-TR blocks, and the feature pass over the same
  audio). Backward FLOPs are about twice the forward's in both modes.
- ``epochs``: ``core.train`` in both modes on the same planted-teacher data made at the
  paper's windows (``core.synth`` sizes ``tiny``: 420 training TRs, a 4-layer 64-wide model,
  and ``demo``: 1,000 TRs, 32 wide; the truth is made through windows, as the brain does
  not care how we compute features), with the demo sweep's training settings on the
  planted layer, one thread each, one after the other: seconds per epoch (training steps
  and the epoch's feature pass and ridge), the frozen ridge r on the planted voxels of the
  test story (epoch 0), the tuned one (best epoch), and the share of the planted gap
  closed against the teacher's ridge (windows, the truth).
- ``features``: per layer, the correlation between the two modes' frozen window features
  (each feature over a story's windows, averaged over features) of a real network on
  real speech: the pretrained model of ``--real-data`` (a planted-teacher dataset made on
  Whisper tiny.en and Festival speech, ``benchmarks.real_speech_recovery``) on its first story.
- ``real``: the frozen ridge r on the planted voxels of ``--real-data`` (a planted-teacher
  dataset on Whisper tiny.en, docs/real_speech.md) in both modes, with that data's windows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.bench_trainer import machine
from benchmarks.planted_recovery import reference
from core import backbones
from core.data.dataset import Dataset
from core.encoding.baseline import run_baseline
from core.encoding.extract import StoryWindows, all_window_features, window_vectors
from core.encoding.features import LanczosOperator, WindowSpec, extended_tr_times
from core.synthetic import GROUPS, SIZES, generate

PAPER = WindowSpec()
EPOCH_TRS, TR, BLOCK_TRS, DELAYS = 28_700, 2.0, 10, 4


def both(spec: WindowSpec) -> dict[str, WindowSpec]:
    return {"windows": spec, "blocks": replace(spec, extraction="blocks")}


def counted(fn) -> tuple[float, float]:
    """Forward FLOPs of ``fn()`` on a WavLM: (total, everything after the CNN: the transformer's share)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    total = counter.get_total_flops()
    front = sum(counter.get_flop_counts().get("WavLMFeatureEncoder", {}).values())
    return float(total), float(total - front)


def flops() -> dict:
    """Per ds003020 epoch at wavlm-base-plus size (module docstring)."""
    from transformers import WavLMConfig, WavLMModel

    with torch.device("meta"):
        model = WavLMModel(WavLMConfig()).eval()
    seconds = 120.0
    audio = np.zeros(int(seconds * 16000), np.float32)
    out = {}
    for name, spec in both(PAPER).items():
        windows = StoryWindows.for_audio(len(audio), spec)
        padded = torch.from_numpy(windows.pad(audio)).to("meta")
        trs = np.arange(10, int(seconds / TR) - 5) * TR + TR / 2
        lanczos = LanczosOperator(windows.times, extended_tr_times(trs, DELAYS))
        ids = lanczos.windows_for(slice(20, 20 + BLOCK_TRS + DELAYS))  # an interior 10-TR block
        with torch.no_grad():
            block, block_transformer = counted(lambda: window_vectors(model, padded, windows, ids, [9]))
            minute = windows.ends <= 60 * 16000
            every = np.flatnonzero(minute)
            pass_, pass_transformer = counted(lambda: [window_vectors(model, padded, windows, every[i:i + 64], [9])
                                                       for i in range(0, len(every), 64)])
        blocks_per_epoch = EPOCH_TRS / BLOCK_TRS
        minutes = EPOCH_TRS * TR / 60
        out[name] = {"windows_per_block": int(len(ids)), "block_tflops": block / 1e12,
                     "block_transformer_tflops": block_transformer / 1e12,
                     "feature_pass_tflops_per_minute": pass_ / 1e12,
                     "epoch_transformer_tflops_forward": (block_transformer * blocks_per_epoch
                                                          + pass_transformer * minutes) / 1e12,
                     "epoch_tflops_forward": (block * blocks_per_epoch + pass_ * minutes) / 1e12}
        print(f"flops {name}: {len(ids)} windows per 10-TR block, {block / 1e12:.2f} TFLOP forward "
              f"({block_transformer / 1e12:.2f} in the transformer); per ds003020 epoch "
              f"{out[name]['epoch_tflops_forward']:.0f} TFLOP forward "
              f"({out[name]['epoch_transformer_tflops_forward']:.0f} transformer)", flush=True)
    out["transformer_ratio"] = (out["windows"]["epoch_transformer_tflops_forward"]
                                / out["blocks"]["epoch_transformer_tflops_forward"])
    out["total_ratio"] = out["windows"]["epoch_tflops_forward"] / out["blocks"]["epoch_tflops_forward"]
    print(f"flops: windows / blocks = {out['transformer_ratio']:.1f}x (transformer), "
          f"{out['total_ratio']:.1f}x (with the CNN)", flush=True)
    return out


def planted_high(data: Path, r: np.ndarray, subject: str = "UTS01") -> float:
    with h5py.File(data / "truth" / f"{subject}.hf5") as f:
        high = f["group"][:] == GROUPS.index("high")
    return float(np.nanmean(r[high]))


#: The demo sweep's training settings (search_spaces/demo.yaml), adapting the planted layer.
TRAINING = {"block_trs": 5, "bottleneck": 32, "loss": "temporal", "lr": 1e-2, "readout_lr": 1e-3, "lora_rank": 4,
            "lora_alpha": 4, "dropout": 0.0, "lora_dropout": 0.0, "device": "cpu"}


def epochs(out: Path, sizes: list[str], n_epochs: int) -> dict:
    """``core.train`` in both modes on planted data made at the paper's windows (module docstring)."""
    from benchmarks import planted_recovery

    result = {"settings": {**TRAINING, "epochs": n_epochs}}
    for size in sizes:
        data = generate(out / f"data_{size}", replace(SIZES[size], window=PAPER.as_dict()),
                        progress=lambda m: print(m, file=sys.stderr))
        truth = json.loads((data / "truth" / "truth.json").read_text())["spec"]
        layer = truth["high_layer"]
        teacher = planted_high(data, reference(data, "UTS01", layer, PAPER)["teacher"])
        common = {**TRAINING, "readout_layer": layer, "lora_layers": truth["planted_layers"], "epochs": n_epochs}
        runs = {"data": f"core.synth size {size} at the paper's windows", "teacher_high": teacher}
        for name in ("windows", "blocks"):
            items = [f"{k}={json.dumps(v)}" for k, v in {**common, "extraction": name}.items()]
            arrays, wall = planted_recovery.train(data, "UTS01", out / f"run_{size}_{name}", items, threads=1)
            summary = json.loads((out / f"run_{size}_{name}" / "summary.json").read_text())
            frozen, tuned = planted_high(data, arrays["baseline_r"]), planted_high(data, arrays["tuned_r"])
            seconds = [h["seconds"] for h in summary["history"]]
            runs[name] = {"wall_s": wall, "epoch_seconds": seconds, "frozen_high": frozen, "tuned_high": tuned,
                          "best_epoch": arrays["best_epoch"], "gap_closed": (tuned - frozen) / (teacher - frozen),
                          "val_r": [h["val_r"] for h in arrays["history"]]}
            print(f"epochs {size} {name}: {np.mean(seconds[1:]):.0f} s per epoch (epoch 0: {seconds[0]:.0f} s); "
                  f"planted r frozen {frozen:.4f} -> tuned {tuned:.4f} (teacher {teacher:.4f}): "
                  f"{runs[name]['gap_closed']:.0%} of the gap (best epoch {arrays['best_epoch']})", flush=True)
        w, b = runs["windows"], runs["blocks"]
        runs["epoch_speedup"] = float(np.mean(w["epoch_seconds"][1:]) / np.mean(b["epoch_seconds"][1:]))
        runs["frozen_difference"] = b["frozen_high"] - w["frozen_high"]
        runs["gap_points_difference"] = 100 * (b["gap_closed"] - w["gap_closed"])
        print(f"epochs {size}: blocks {runs['epoch_speedup']:.1f}x faster per epoch; frozen r "
              f"{runs['frozen_difference']:+.4f}; gap closed {runs['gap_points_difference']:+.1f} points", flush=True)
        result[size] = runs
    return result


def features(real_data: Path, block_seconds: list[float]) -> dict:
    """Per-layer correlation of the two modes' frozen features, Whisper tiny.en on real speech (module docstring)."""
    model = backbones.load_backbone(str(real_data / "pretrained")).eval()
    dataset = Dataset(real_data)
    story = sorted(dataset.stories("UTS01"))[0]
    audio = dataset.audio(story)
    layers = list(range(model.config.num_hidden_layers + 1))
    specs = {"windows": PAPER, **{f"blocks_{s:g}s": replace(PAPER, extraction="blocks", block_seconds=s)
                                  for s in block_seconds}}
    out = {"story": story, "seconds": len(audio) / 16000, "extraction_seconds": {}, "correlation_by_layer": {}}
    feats = {}
    for name, spec in specs.items():
        started = time.time()
        _, feats[name] = all_window_features(model, audio, spec, layers)
        out["extraction_seconds"][name] = time.time() - started
        print(f"features {name}: {out['extraction_seconds'][name]:.1f} s for {len(audio) / 16000:.0f} s of audio",
              flush=True)
    for name in specs:
        if name != "windows":
            out["correlation_by_layer"][name] = {k: correlation(feats["windows"][k], feats[name][k]) for k in layers}
            print(f"features {name}: correlation with windows per layer "
                  + ", ".join(f"{k}: {r:.3f}" for k, r in out["correlation_by_layer"][name].items()), flush=True)
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over features of the correlation across windows of ``a`` and ``b`` (n_windows, n_features)."""
    a, b = (a - a.mean(0)) / (a.std(0) + 1e-8), (b - b.mean(0)) / (b.std(0) + 1e-8)
    return float((a * b).mean(0).mean())


def real(real_data: Path) -> dict:
    """The frozen ridge r on the planted voxels of the Whisper planted data, both modes, with its windows."""
    truth = json.loads((real_data / "truth" / "truth.json").read_text())["spec"]
    window = WindowSpec(**truth["window"])
    layer = truth["high_layer"]
    out = {"window": window.as_dict()}
    for name, spec in both(window).items():
        r = run_baseline(Dataset(real_data), "UTS01", layer, str(real_data / "pretrained"), spec=spec,
                         cache_dir=real_data / "cache", progress=lambda m: None)[0].r
        out[name] = planted_high(real_data, r)
        print(f"real {name}: frozen planted r {out[name]:.4f}", flush=True)
    out["difference"] = out["blocks"] - out["windows"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="flops,epochs,features,real")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sizes", default="tiny,demo", help="part epochs: core.synth sizes, made at the paper's windows")
    parser.add_argument("--out", type=Path, default=Path("bench-extraction"))
    parser.add_argument("--real-data", type=Path, help="a planted-teacher dataset on Whisper tiny.en (parts features, real)")
    parser.add_argument("--block-seconds", type=float, nargs="+", default=[16.0], help="part features: pass lengths")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/extraction_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.update({"command": "python -m benchmarks.bench_extraction " + " ".join(argv or sys.argv[1:]),
                    "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    for part in parts:
        if part == "flops":
            results["flops"] = flops()
        elif part == "epochs":
            results["epochs"] = epochs(args.out, args.sizes.split(","), args.epochs)
        elif part in ("features", "real"):
            if args.real_data is None:
                parser.error(f"part {part} needs --real-data")
            results[part] = (features(args.real_data, args.block_seconds) if part == "features"
                             else real(args.real_data))
        else:
            parser.error(f"unknown part {part!r}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
