"""Time ``core.ridge.fit_ridge`` on the numpy and torch (CPU) himalaya backends.

Default sizes are one subject-scale problem cut down to run in about a minute on a
laptop: X (2000 TRs x 3072 features = 4 delays x 768), Y (2000 TRs x 2000 voxels),
the reference grid of 10 alphas, 5 folds of 40-TR chunks.

    python -m benchmarks.bench_ridge [--n-trs 2000 --n-features 3072 --n-voxels 2000]
                                     [--backends numpy torch] [--json results.json]

Run from the repository root. Prints the machine's metadata, each backend's wall time
(after a small warm-up fit) and the ratio to the first backend; ``--json`` also writes them to a file. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from core.ridge import fit_ridge


def machine_info() -> dict:
    import himalaya
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "himalaya": himalaya.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def simulate(n_trs: int, n_features: int, n_voxels: int, seed: int = 0):
    """Features, and voxels driven by a random low-rank readout plus noise of varied level."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_trs, n_features)).astype(np.float32)
    readout = rng.standard_normal((n_features, 20)) @ rng.standard_normal((20, n_voxels))
    signal = X @ readout.astype(np.float32)
    noise = rng.standard_normal((n_trs, n_voxels)).astype(np.float32) * signal.std(0)
    Y = signal + noise * rng.uniform(0.5, 5.0, n_voxels).astype(np.float32)
    return X, Y


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trs", type=int, default=2000)
    parser.add_argument("--n-features", type=int, default=3072)
    parser.add_argument("--n-voxels", type=int, default=2000)
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    results = {"machine": machine_info(), "sizes": vars(args).copy(), "seconds": {}}
    results["sizes"].pop("json")
    print(json.dumps(results["machine"], indent=2))
    X, Y = simulate(args.n_trs, args.n_features, args.n_voxels)
    print(f"X {X.shape}, Y {Y.shape}, 10 alphas, 5 folds of 40-TR chunks")
    for backend in args.backends:
        # One-time costs (imports, CUDA context) are not what we measure.
        fit_ridge(X[:400, :50], Y[:400, :50], backend=backend)
        start = time.perf_counter()
        fit_ridge(X, Y, backend=backend)
        seconds = time.perf_counter() - start
        results["seconds"][backend] = seconds
        ratio = seconds / results["seconds"][args.backends[0]]
        print(f"{backend:>10}: {seconds:7.2f} s  ({ratio:.2f} x {args.backends[0]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
