"""Time and peak memory of the epoch-0 readout initialisation from a ridge map (issue 19, defect 6).

A trial with ``readout_init: ridge`` sets its rank-k readout from the ridge map of shape
(3,072 features, ~95,000 voxels): :func:`core.tuning.model.ridge_as_linear` then
:meth:`core.tuning.model.Readout.set_linear`. This runs, side by side, the current path
(``new``: rank-k factors from the eigendecomposition of ``W W^T``, float32 throughout)
and the one it replaced (``old``, kept here only as the reference: a float64 copy of the
map, then a full SVD of it), each in its own subprocess on the same random ridge fit, and
reports wall time and peak resident memory above what the process held before the step
(Linux ``VmHWM``, reset just before), and the process' CPU time (less noisy than the wall
time on a shared machine). The two readouts' rank-k maps are compared on the
first voxels.

    python -m benchmarks.bench_readout_init [--voxels 95000] [--features 3072] [--bottleneck 100]
                                            [--threads 2] [--methods old new] [--device cpu] [--json PATH]

Target: ``new`` under 60 s on 2 CPU cores. ``old`` takes ~1,000 s there. Not run by the
test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.encoding.ridge import RidgeFit
from core.tuning.model import Readout, ridge_as_linear

COMPARED_VOXELS = 2000


def old_init(readout: Readout, fit: RidgeFit, outputs: np.ndarray) -> None:
    """The replaced path, for reference: float64 map, then the SVD of the whole map."""
    scale = np.divide(1.0, fit.x_std, out=np.zeros_like(fit.x_std), where=fit.x_std > 0)
    weight = fit.weights[:, outputs] * scale[:, None]
    bias = fit.y_mean[outputs] - (fit.x_mean * scale) @ fit.weights[:, outputs]
    w = torch.as_tensor(weight, dtype=torch.float32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    k = min(readout.bottleneck, len(s))
    root = s[:k].sqrt()
    with torch.no_grad():
        readout.down.weight.zero_()
        readout.up.weight.zero_()
        readout.down.weight[:k] = (u[:, :k] * root).T
        readout.up.weight[:, :k] = vh[:k].T * root
        readout.up.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def new_init(readout: Readout, fit: RidgeFit, outputs: np.ndarray) -> None:
    readout.set_linear(*ridge_as_linear(fit, outputs))


def random_fit(n_features: int, n_voxels: int, seed: int = 0) -> RidgeFit:
    """A ridge fit of the real one's shapes and dtypes (float32 weights, float64 standardisation)."""
    gen = np.random.default_rng(seed)
    return RidgeFit(weights=gen.standard_normal((n_features, n_voxels), dtype=np.float32),
                    alphas=np.ones(n_voxels), cv_scores=np.zeros(n_voxels), x_mean=gen.standard_normal(n_features),
                    x_std=gen.uniform(0.5, 2.0, n_features), y_mean=gen.standard_normal(n_voxels))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_one(method: str, args, out: Path) -> dict:
    """One method in this process: time and peak RSS rise of the initialisation alone."""
    torch.set_num_threads(args.threads)
    fit = random_fit(args.features, args.voxels)
    readout = Readout(args.features, args.voxels, args.bottleneck).to(args.device)
    outputs = np.arange(args.voxels)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start, cpu_start = time.perf_counter(), time.process_time()
    (old_init if method == "old" else new_init)(readout, fit, outputs)
    if readout.up.weight.is_cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_rise = _status_kib("VmHWM") - before
    with torch.no_grad():
        np.save(out / f"{method}.npy", (readout.up.weight[:COMPARED_VOXELS] @ readout.down.weight).T.cpu().numpy())
    device_peak = {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if readout.up.weight.is_cuda else {}
    return {**device_peak, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_rise_mib": peak_rise / 1024, "rss_before_mib": before / 1024,
            "map_mib": fit.weights.nbytes / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=95_000)
    parser.add_argument("--features", type=int, default=3072)
    parser.add_argument("--bottleneck", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the readout lives (the new path computes there)")
    parser.add_argument("--methods", nargs="+", default=["old", "new"], choices=["old", "new"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: METHOD DIR, in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], args, Path(args.one[1]))))
        return 0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            cmd = [sys.executable, "-m", "benchmarks.bench_readout_init", "--one", method, tmp,
                   "--voxels", str(args.voxels), "--features", str(args.features),
                   "--bottleneck", str(args.bottleneck), "--threads", str(args.threads), "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[method]
            print(f"{method:4s} {r['seconds']:8.1f} s ({r['cpu_seconds']:.1f} CPU s)  peak RSS +{r['peak_rss_rise_mib']:7.0f} MiB "
                  f"(map {r['map_mib']:.0f} MiB float32)", flush=True)
        if {"old", "new"} <= results.keys():
            old, new = (np.load(Path(tmp) / f"{m}.npy") for m in ("old", "new"))
            results["new_vs_old_map_rel_diff"] = float(np.linalg.norm(new - old) / np.linalg.norm(old))
            print(f"rank-{args.bottleneck} maps on the first {COMPARED_VOXELS} voxels: relative difference "
                  f"{results['new_vs_old_map_rel_diff']:.2e}")
    if args.json:
        from benchmarks.bench_trainer import machine

        torch.set_num_threads(args.threads)
        record = {"benchmark": "readout_init", "device": args.device, "features": args.features, "voxels": args.voxels,
                  "bottleneck": args.bottleneck, "threads": args.threads, "machine": machine(),
                  "command": "python -m benchmarks.bench_readout_init " + " ".join(argv or sys.argv[1:]),
                  "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
