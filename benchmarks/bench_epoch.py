"""One ds003020 subject epoch at wavlm-base-plus size: time, TFLOP/s against the device's peak, memory.

    python -m benchmarks.bench_epoch [--size base|tiny] [--device cpu|cuda] [--precision fp32|bf16]
                                     [--block-trs 10] [--voxels 95000] [--steps 5] [--compile]
                                     [--sdpa auto|math|efficient|cudnn] [--peak-tflops X] [--json FILE]

The model is built as the trainer builds it (:func:`core.tuning.model.adapt`, :class:`core.tuning.model.BrainModel`,
:func:`core.backbones.load_backbone` on a checkpoint written with ``save_pretrained``), from random
weights: ``--size base`` is microsoft/wavlm-base-plus's geometry (``WavLMConfig()``'s
defaults: 12 layers x 768, 12 heads, feed-forward 3072, a 512-channel CNN with GroupNorm,
post-LN), read out at layer 9, LoRA rank 4 (alpha 4, dropout 0.1) on q/k/v of layers 1-9,
a 100-rank readout to 95,000 voxels, spatial loss, AdamW. With a GroupNorm CNN the
story-level CNN cache is off (``core.backbones.cnn_slicing_is_exact``), so every window runs
the CNN, as in the paper. ``--size tiny`` is a 2-layer, 32-wide model of the same kind
(read out at layer 2) that runs in well under a minute on a CPU.

Timed, side by side on the same blocks of ``--block-trs`` TRs of one synthetic story:

- ``trainer``: one optimiser step per block as ``Trainer.train_blocks`` takes it (forward
  of only the windows that feed the block, Lanczos, normalisation, delays, readout, loss,
  backward, AdamW step, normalisation update);
- ``bare``: the same windows through the same model (CNN, transformer to the read-out
  layer, chunk pooling) and a backward from a fixed random projection of their vectors:
  no Lanczos, readout, loss or optimiser. What any implementation of windowed
  fine-tuning has to compute.

Printed for each: seconds per block, seconds of training per hour of audio (a block
covers ``block_trs * TR`` seconds), the projected time of one ds003020 subject epoch
(28,700 TRs, ~16 h of audio; training steps only, no evaluation), the block's FLOPs
(:func:`block_flops`), achieved TFLOP/s and its share of the device's dense bf16 peak
(:data:`PEAK_BF16_TFLOPS`; n/a on a CPU), and peak memory (GPU: ``max_memory_allocated``
per mode; CPU: the process's peak RSS). Results and the machine's metadata go to
``benchmarks/results/epoch_<device>[_<precision>].json`` (or ``--json``).

Levers: ``--precision bf16`` (autocast, as ``precision: bf16``), ``--block-trs`` (more windows
per forward: a longer block shares its delay and Lanczos margins among more TRs, so it
computes fewer windows per TR, at the price of fewer optimiser steps per epoch and more
activation memory), ``--compile`` (``torch.compile`` of the model; it recompiles for each
new number of windows in a block, so the warm-up runs every timed block once and
compile time is not timed), ``--sdpa`` (which fused kernel ``scaled_dot_product_attention``
may use for WavLM's gated position bias, passed as a float mask; flash attention takes no
mask and is not offered).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_trainer import machine

RESULTS = Path(__file__).resolve().parent / "results"
DS003020_SUBJECT_TRS = 28_700  # UTS01-03: ~84 stories, ~16 h of audio
SIZES = {
    "base": {},  # WavLMConfig's defaults are wavlm-base-plus's geometry
    # Small enough for a busy CPU: the per-window GroupNorm CNN dominates tiny models.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
}
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched
# against torch.cuda.get_device_name() in this order.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def block_flops(config, n_windows: int, window_samples: int, readout_layer: int, lora_layers: list[int],
                rank: int, block_trs: int, n_delays: int, bottleneck: int, n_voxels: int) -> dict[str, float]:
    """FLOPs of one training step on a block, counted from the model's shapes (2 per multiply-add).

    Counted: every matrix product and convolution; not counted: norms, activations,
    softmax, the relative-position gate (a 64 -> 8 linear per head: <0.1%), Lanczos.

    - ``cnn``: the 7 convolutions over each window's ``window_samples`` samples, forward
      only (frozen, and its input needs no gradient).
    - ``frontend``: feature projection (512 -> hidden) and the convolutional position
      embedding (kernel 128, 16 groups), forward only (frozen, below every adapter).
    - ``transformer_forward``: layers 1..``readout_layer`` over ``T`` frames: q, k, v, out
      projections (``4 T d^2``), scores and weighted values (``2 T^2 d``), feed-forward
      (``2 T d f``), and the LoRA adapters (``2 T d r`` per adapted projection).
    - ``transformer_backward``: the gradient w.r.t. activations, from the first adapted
      layer up (nothing below it needs a gradient): each frozen projection's ``dX``
      (as many multiply-adds as its forward; not for the first adapted layer's q, k, v,
      whose input needs none), two products per attention product, and the adapters'
      ``dA``, ``dB`` and ``dX``. Frozen weights get no ``dW``.
    - ``readout``: Linear(delays * hidden -> bottleneck) -> Linear(bottleneck -> voxels)
      on ``block_trs`` TRs, forward and backward (``dX`` and ``dW``).

    Returns a dict of those parts, in FLOPs, and their ``total``.
    """
    mac = {}
    n, c_in = window_samples, 1
    cnn = 0
    for c_out, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
        cnn += n * c_out * c_in * k
        c_in = c_out
    t, d, f = n, config.hidden_size, config.intermediate_size
    mac["cnn"] = cnn
    mac["frontend"] = t * c_in * d + t * d * (d // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings
    proj, attn, ffn, lora = t * d * d, t * t * d, 2 * t * d * f, 2 * t * d * rank
    adapted = [layer for layer in lora_layers if layer <= readout_layer]
    n_adapters = 3  # q, k, v
    forward = backward = 0
    for layer in range(1, readout_layer + 1):
        n_lora = n_adapters if layer in adapted else 0
        forward += 4 * proj + 2 * attn + ffn + n_lora * lora
        if adapted and layer >= adapted[0]:
            frozen_dx = 4 * proj if layer > adapted[0] else proj  # first adapted layer: only out_proj's dX
            backward += frozen_dx + 2 * 2 * attn + ffn + n_lora * 2 * lora
    mac["transformer_forward"] = forward
    mac["transformer_backward"] = backward
    per_block = {k: v * n_windows for k, v in mac.items()}
    n_in = n_delays * d
    head = block_trs * (n_in * bottleneck + bottleneck * n_voxels) if bottleneck else block_trs * n_in * n_voxels
    per_block["readout"] = 3 * head  # forward, dX, dW
    flops = {k: 2.0 * v for k, v in per_block.items()}
    flops["total"] = sum(flops.values())
    return flops


def build(size: str, device: torch.device, readout_layer: int | None, n_voxels: int, block_trs: int,
          precision: str, n_blocks: int, root: Path, extraction: str = "windows", block_seconds: float = 1.0):
    """The model, its optimiser, a prepared synthetic story and the config, as the trainer has them."""
    from transformers import WavLMConfig, WavLMModel

    from core.backbones import adapt
    from core.backbones import load_backbone
    from core.config import TrainConfig
    from core.encoding.features import WindowSpec
    from core.synthetic import story_duration, tr_times
    from core.tuning.model import BrainModel

    torch.manual_seed(0)
    wavlm_config = WavLMConfig(**SIZES[size])
    WavLMModel(wavlm_config).save_pretrained(root / "pretrained")
    layer = readout_layer or min(9, wavlm_config.num_hidden_layers)
    config = TrainConfig(readout_layer=layer, block_trs=block_trs, precision=precision, device=str(device),
                         extraction=extraction, block_seconds=block_seconds)
    net = load_backbone(str(root / "pretrained"), layerdrop=config.layerdrop, dropout=config.dropout)
    trainable = adapt(net, config.lora_layer_list(), config.lora_targets, config.lora_rank, config.lora_alpha,
                      config.lora_dropout)
    spec = WindowSpec.of(config)
    model = BrainModel(net, [layer], spec, config.delays, config.bottleneck, n_voxels, cnn_cache=False,
                       norm_momentum=config.norm_momentum).to(device)
    optimizer = torch.optim.AdamW([{"params": trainable, "lr": config.lr},
                                   {"params": list(model.readout.parameters()), "lr": config.readout_lr}],
                                  weight_decay=config.weight_decay)
    n_trs = block_trs * (n_blocks + 2)  # a block of margin on each side
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(story_duration(n_trs) * spec.sample_rate))).astype(np.float32)
    responses = rng.standard_normal((n_trs, n_voxels), dtype=np.float32)
    story = model.prepare("benchstory", audio, tr_times(n_trs))
    story.responses["bench"] = torch.as_tensor(responses, device=device)
    return model, optimizer, story, config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_epoch", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="default bf16 on a GPU (paper.yaml's), fp32 on a CPU (bf16 is slow there)")
    parser.add_argument("--block-trs", type=int, default=10)
    parser.add_argument("--voxels", type=int, default=95_000)
    parser.add_argument("--readout-layer", type=int, help="default: 9, or the top layer of a smaller model")
    parser.add_argument("--steps", type=int, help="timed blocks per mode, after one warm-up block (default 5; tiny: 3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (and the bare step's)")
    parser.add_argument("--sdpa", choices=["auto", "math", "efficient", "cudnn"], default="auto",
                        help="restrict scaled_dot_product_attention to one kernel")
    parser.add_argument("--extraction", choices=["windows", "blocks"], default="windows",
                        help="blocks: one pass per run of windows (core.encoding.blocks); its FLOPs are counted")
    parser.add_argument("--block-seconds", type=float, default=1.0, help="with --extraction blocks (the default of block_seconds)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    parser.add_argument("--json", help="results file (default benchmarks/results/epoch_<device>_<precision>.json)")
    args = parser.parse_args(argv)

    from core.cli import quiet_libraries
    from core.data.dataset import TR
    from core.encoding.extract import window_vectors
    from core.tuning.loss import loss_fn

    quiet_libraries()
    args.steps = args.steps or (3 if args.size == "tiny" else 5)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        model, optimizer, story, config = build(args.size, device, args.readout_layer, args.voxels, args.block_trs,
                                                args.precision, args.steps + 1, Path(tmp), args.extraction,
                                                args.block_seconds)
    layer = config.readout_layer
    weights = torch.ones(args.voxels, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    network = torch.compile(model) if args.compile else model
    encode_windows = torch.compile(window_vectors) if args.compile else window_vectors
    blocks = [(b * args.block_trs, (b + 1) * args.block_trs) for b in range(1, args.steps + 2)]
    windows = [story.lanczos.windows_for(slice(start, stop + max(model.delays))) for start, stop in blocks]
    probe = torch.randn(model.wavlm.config.hidden_size, generator=torch.Generator().manual_seed(1)).to(device)

    def trainer_step(i: int) -> None:
        start, stop = blocks[i]
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            pred = network(story, start, stop)
        loss = loss_fn(config.loss, pred, story.responses["bench"][start:stop], weights)
        loss.backward()
        optimizer.step()
        model.norm.commit()

    def bare_step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            vectors = encode_windows(model.wavlm, story.padded, story.windows, windows[i], [layer])[layer]
        (vectors.float() @ probe).sum().backward()

    def run(step) -> dict:
        # Warm-up; a compiled model compiles again for each new number of windows, so it
        # sees every timed block once first.
        for i in range(len(blocks)) if args.compile else [0]:
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for i in range(1, len(blocks)):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out = {"seconds_per_block": (time.perf_counter() - started) / (len(blocks) - 1)}
        if device.type == "cuda":
            out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION}.get(args.sdpa)
    model.train()
    with sdpa_kernel(kernel) if kernel is not None else nullcontext():
        modes = {"trainer": run(trainer_step), "bare": run(bare_step)}

    cfg = model.wavlm.config
    flops = [block_flops(cfg, len(w), model.spec.window_samples, layer, config.lora_layer_list(), config.lora_rank,
                         args.block_trs, len(model.delays), config.bottleneck, args.voxels) for w in windows[1:]]
    mean_flops = {k: float(np.mean([f[k] for f in flops])) for k in flops[0]}
    if args.extraction == "blocks":  # the analytic count is of windows: count the backbone's forward + backward
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            bare_step(1)
        mean_flops = {"total": counter.get_total_flops() + mean_flops["readout"],
                      "backbone_counted": float(counter.get_total_flops()), "readout": mean_flops["readout"]}
    bare_flops = mean_flops["total"] - mean_flops["readout"]
    peak = args.peak_tflops or peak_tflops(device)
    for name, r in modes.items():
        seconds = r["seconds_per_block"]
        r["flops_per_block"] = mean_flops["total"] if name == "trainer" else bare_flops
        r["tflops_per_s"] = r["flops_per_block"] / seconds / 1e12
        r["fraction_of_peak"] = r["tflops_per_s"] / peak if peak else None
        r["seconds_per_hour_of_audio"] = seconds / (args.block_trs * TR) * 3600
        r["epoch_minutes"] = seconds * DS003020_SUBJECT_TRS / args.block_trs / 60
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"{args.size} ({cfg.num_hidden_layers} x {cfg.hidden_size}, CNN norm {cfg.feat_extract_norm}), read-out "
          f"layer {layer}, LoRA r{config.lora_rank} on {','.join(config.lora_targets)} of layers "
          f"{config.lora_layer_list()[0]}-{config.lora_layer_list()[-1]}, {args.voxels} voxels, "
          f"{args.block_trs}-TR blocks, {np.mean([len(w) for w in windows[1:]]):.0f} windows/block, "
          f"extraction {args.extraction}{f' ({args.block_seconds:g}-s passes)' if args.extraction == 'blocks' else ''}, "
          f"{args.precision}{', compiled' if args.compile else ''}, sdpa {args.sdpa}, on {machine().get('gpu', 'cpu')}")
    print(f"FLOPs per block: {mean_flops['total'] / 1e12:.3f} TFLOP (" + ", ".join(
        f"{k} {v / 1e12:.3f}" for k, v in mean_flops.items() if k != "total") + ")")
    print(f"{'mode':<9}{'s/block':>9}{'s/h audio':>11}{'epoch min':>11}{'TFLOP/s':>9}{'of peak':>9}{'peak MiB':>10}")
    for name, r in modes.items():
        share = f"{100 * r['fraction_of_peak']:.1f}%" if r["fraction_of_peak"] is not None else "n/a"
        memory = r.get("peak_gpu_mib", rss_mib)
        print(f"{name:<9}{r['seconds_per_block']:>9.3f}{r['seconds_per_hour_of_audio']:>11.1f}"
              f"{r['epoch_minutes']:>11.2f}{r['tflops_per_s']:>9.3f}{share:>9}{memory:>10.0f}")
    ratio = modes["trainer"]["seconds_per_block"] / modes["bare"]["seconds_per_block"]
    print(f"trainer / bare time: {ratio:.2f}; peak RSS {rss_mib:.0f} MiB"
          + ("" if peak else "; device peak: n/a (give --peak-tflops)"))

    path = Path(args.json) if args.json else RESULTS / f"epoch_{device.type}_{args.size}_{args.precision}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    path.write_text(json.dumps({
        "machine": machine(), "settings": dict(settings, readout_layer=layer), "device_peak_bf16_tflops": peak,
        "windows_per_block": [len(w) for w in windows[1:]], "flops_per_block": mean_flops,
        "modes": modes, "trainer_over_bare": ratio, "peak_rss_mib": rss_mib,
        "ds003020_subject_trs": DS003020_SUBJECT_TRS,
    }, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
