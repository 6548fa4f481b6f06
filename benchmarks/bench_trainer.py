"""Trainer step time vs a bare forward+backward of the same model; CNN-cache speedup; peak memory.

    python -m benchmarks.bench_trainer [--sizes tiny base] [--device cpu|cuda] [--precision fp32 bf16]
                                       [--steps 5] [--json FILE]

For each model size it writes a small ds003020-layout dataset (one story of speech-like
audio, random responses) and a randomly initialised WavLM of that size, builds a real
:class:`core.tuning.trainer.Trainer`, and times on the same block of TRs:

- ``trainer``: ``Trainer.train_step`` (model forward, loss, backward, optimiser step);
- ``bare``: the same windows' CNN features through ``core.backbones.encode`` to the read-out
  layer, chunk pooling, a dense Lanczos matrix, delays, the readout and the loss, then
  backward: the least any implementation has to compute (no optimiser step);
- ``trainer (no CNN cache)``: the trainer step running the CNN on every window.

Ratios are measured side by side in one run. Peak memory is the process's peak RSS on
CPU (each size runs in its own process) or ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer"),
    # wavlm-base-plus geometry (768 x 12, 512-channel CNN), with a layer-norm CNN so the cache is exact.
    "base": dict(feat_extract_norm="layer"),
}
STORY = "benchstory"


def make_dataset(root: Path, size: str, n_voxels: int, n_trs: int) -> None:
    from transformers import WavLMConfig, WavLMModel

    from core.data import dataset as ds
    from core.synthetic import speechlike_audio, story_duration

    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**SIZES[size])).save_pretrained(root / "pretrained")
    rng = np.random.default_rng(0)
    names = [STORY, "benchval", "benchtest"]
    for name in names:
        audio, words, phones = speechlike_audio(story_duration(n_trs), rng)
        ds.write_wav(root / "stimuli" / f"{name}.wav", audio)
        ds.write_responses(root / "derivative/preprocessed_data/S1" / f"{name}.hf5",
                           rng.standard_normal((n_trs, n_voxels)).astype(np.float32))


def bare_step(trainer, inp, start: int, stop: int) -> None:
    """The minimal computation of one step (see the module docstring), forward and backward."""
    from core.backbones import conv_output_length, encode, frame_hop
    from core.encoding.features import delay_features
    from core.tuning.loss import loss_fn

    model = trainer.model
    delays = model.delays
    rows = slice(start, stop + max(delays))
    ids = inp.lanczos.windows_for(rows)
    # Dense Lanczos block and the windows' CNN frames, prepared outside the timed region.
    dense = torch.zeros(rows.stop - rows.start, len(ids), device=model.device)
    pos = {w: j for j, w in enumerate(ids)}
    for i, (idx, wt) in enumerate(zip(inp.lanczos.index[rows], inp.lanczos.weight[rows])):
        for w, v in zip(idx.tolist(), wt.tolist()):
            if v:
                dense[i, pos[w]] += v
    frames = torch.from_numpy(inp.windows.ends[ids] // frame_hop(model.wavlm.config))[:, None]
    per_window = conv_output_length(model.spec.window_samples, model.wavlm.config)
    feats = inp.cnn[(frames + torch.arange(per_window)[None]).to(inp.cnn.device)]
    layer = model.readout_layers[0]

    def step():
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=trainer.config.precision == "bf16"):
            hidden = encode(model.wavlm, feats, layer)[layer][:, -model.spec.chunk_frames:].mean(1)
            x = model.norm(dense @ hidden.float())
            pred = model.readout(delay_features(x, delays))
        loss = loss_fn(trainer.config.loss, pred, inp.responses[trainer.subject][start:stop], trainer.loss_weights)
        loss.backward()

    return step


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def run_size(size: str, device: str, precision: str, steps: int, n_voxels: int, block_trs: int) -> dict:
    from core.cli import quiet_libraries
    from core.config import TrainConfig
    from core.data.dataset import Dataset
    from core.tuning.trainer import Trainer

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, size, n_voxels, n_trs=3 * block_trs)
        layers = SIZES[size].get("num_hidden_layers", 12)
        readout_layer = min(9, layers)
        results = {}
        for cache in ("on", "off"):
            config = TrainConfig(readout_layer=readout_layer, lora_layers=None, epochs=1, block_trs=block_trs,
                                 device=device, precision=precision, cnn_cache=cache, bottleneck=100,
                                 test_stories=["benchtest"], val_stories=["benchval"])
            trainer = Trainer(config, Dataset(root), "S1", root / f"out-{cache}")
            trainer.model.train()
            inp = trainer.story_input(STORY)
            start, stop = block_trs, 2 * block_trs
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            results[f"trainer_cnn_{cache}"] = timed(lambda: trainer.train_step(inp, start, stop), steps, trainer.device)
            if cache == "on":
                results["bare"] = timed(bare_step(trainer, inp, start, stop), steps, trainer.device)
                results["windows_per_block"] = int(len(inp.lanczos.windows_for(slice(start, stop + 4))))
            if device.startswith("cuda"):
                results[f"peak_gpu_mib_cnn_{cache}"] = torch.cuda.max_memory_allocated() / 2**20
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results["block_trs"] = block_trs
        results["readout_layer"] = readout_layer
        results["n_voxels"] = n_voxels
        return results


def machine() -> dict:
    """What a result was measured on: platform, versions, threads, GPU and the commit."""
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "commit": commit or None}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--block-trs", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size in this process
    args = parser.parse_args(argv)

    if args.one:
        size, precision = args.one.split(":")
        print(json.dumps(run_size(size, args.device, precision, args.steps, args.voxels, args.block_trs)))
        return 0
    rows = []
    print(json.dumps(machine()))
    print(f"{'size':<6}{'prec':<6}{'windows':>8}{'trainer s':>11}{'bare s':>9}{'ratio':>7}{'no-cache s':>12}"
          f"{'cache x':>9}{'peak MiB':>10}")
    for size in args.sizes:
        for precision in args.precision:
            # Each size in its own process, so peak RSS is its own.
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_trainer", "--one", f"{size}:{precision}",
                                  "--device", args.device, "--steps", str(args.steps), "--voxels", str(args.voxels),
                                  "--block-trs", str(args.block_trs)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peak = r.get("peak_gpu_mib_cnn_on", r["peak_rss_mib"])
            print(f"{size:<6}{precision:<6}{r['windows_per_block']:>8}{r['trainer_cnn_on']:>11.3f}{r['bare']:>9.3f}"
                  f"{r['trainer_cnn_on'] / r['bare']:>7.2f}{r['trainer_cnn_off']:>12.3f}"
                  f"{r['trainer_cnn_off'] / r['trainer_cnn_on']:>9.2f}{peak:>10.0f}", flush=True)
            rows.append({"size": size, "precision": precision, **r})
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
