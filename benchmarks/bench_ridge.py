"""Time ``core.encoding.ridge.fit_ridge`` against himalaya's ``solve_ridge_cv_svd``, side by side.

Default sizes are one subject-scale problem cut down to run in about a minute on a
laptop: X (2000 TRs x 3072 features = 4 delays x 768), Y (2000 TRs x 2000 voxels),
the reference grid of 10 alphas, 5 folds of 40-TR chunks.

    python -m benchmarks.bench_ridge [--n-trs 2000 --n-features 3072 --n-voxels 2000]
                                     [--backends numpy torch] [--json results.json]

Run from the repository root. For each backend, times our solver (``fit_ridge``: each
fold diagonalised once, voxels streamed in blocks) and himalaya's ``solve_ridge_cv_svd``
on the same standardised X, voxels and folds (after a small warm-up fit each), prints
both wall times, himalaya's / ours, and whether the chosen alphas agree. ``--json`` also
writes them to a file. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import numpy as np
from himalaya.backend import get_backend, set_backend
from himalaya.ridge import solve_ridge_cv_svd
from himalaya.scoring import r2_score

from core.encoding.ridge import ALPHAS, _feature_statistics, _standardise, chunk_splits, fit_ridge


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


@contextlib.contextmanager
def himalaya_backend(name: str):
    """Use himalaya backend ``name`` inside the block, then restore the previous one."""
    previous = get_backend().name
    backend = set_backend(name)
    try:
        yield backend
    finally:
        set_backend(previous)


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
    splits = chunk_splits(args.n_trs)
    Xz = _standardise(X, *_feature_statistics(X))
    Yc = Y - Y.mean(0)
    print(f"X {X.shape}, Y {Y.shape}, {len(ALPHAS)} alphas, 5 folds of 40-TR chunks")
    for backend in args.backends:
        with himalaya_backend(backend) as bk:
            def himalaya_fit(Xz, Yc, splits):
                best, *_ = solve_ridge_cv_svd(bk.asarray(Xz), bk.asarray(Yc), alphas=bk.asarray(ALPHAS, dtype="float32"),
                                              fit_intercept=True, score_func=r2_score, cv=splits, warn=False)
                return bk.to_numpy(best)

            seconds = {}
            for name, solve in [("ours", lambda: fit_ridge(X, Y, splits=splits, backend=backend).alphas),
                                ("himalaya", lambda: himalaya_fit(Xz, Yc, splits))]:
                # One-time costs (imports, CUDA context) are not what we measure.
                fit_ridge(X[:400, :50], Y[:400, :50], backend=backend)
                himalaya_fit(Xz[:400, :50], Yc[:400, :50], chunk_splits(400))
                start = time.perf_counter()
                alphas = solve()
                seconds[name] = time.perf_counter() - start
                if name == "ours":
                    ours_alphas = alphas
            himalaya_alphas = ALPHAS[np.abs(np.log(alphas)[:, None] - np.log(ALPHAS)).argmin(axis=1)]
        agree = float(np.mean(ours_alphas == himalaya_alphas))
        results["seconds"][backend] = {**seconds, "alphas_agree": agree}
        print(f"{backend:>10}: ours {seconds['ours']:7.2f} s, himalaya {seconds['himalaya']:7.2f} s "
              f"(himalaya / ours = {seconds['himalaya'] / seconds['ours']:.1f}); same alpha for {agree:.1%} of voxels")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
