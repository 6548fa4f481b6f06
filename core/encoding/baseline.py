"""The frozen-feature ridge baseline: what brain-tuning has to beat.

``python -m core.baseline --data DIR --subject UTS01 --layer 3 --out OUT`` extracts (or
reads from the cache) frozen WavLM features of one layer for every story, fits ridge with
per-voxel alphas on the training stories and scores the test story. It writes

- ``OUT/voxel_r.hf5``: per-voxel ``r`` (and ``ceiling``, ``alpha``), shape (n_voxels,);
- ``OUT/summary.json``: ``mean_r``, ``roi_mean_r``, ``ceiling_fraction`` (where the test
  story has repeats), ``alpha_edge_fraction`` (voxels whose alpha is at an end of the
  grid) and every setting of the run.

The model defaults to ``DIR/pretrained`` (present in synthetic datasets).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli import progress as print_progress
from core.cli import run
from core.config import EXTRACTIONS
from core.data.dataset import Dataset
from core.encoding.evaluation import Evaluation, ridge_evaluation
from core.encoding.extract import FrozenFeatures
from core.encoding.features import DELAYS, WindowSpec
from core.encoding.ridge import ALPHAS
from core.errors import ConfigError
from core.outputs import atomic_dir, write_json, write_voxel_results


def default_model(data: str | Path) -> str:
    """``DIR/pretrained`` when the dataset ships a model, else an error asking for --model."""
    path = Path(data) / "pretrained"
    if not (path / "config.json").exists():
        raise ConfigError(f"{path}: no model here; pass --model PATH_OR_HUB_ID (e.g. microsoft/wavlm-base-plus)")
    return str(path)


def run_baseline(
    dataset: Dataset,
    subject: str,
    layer: int,
    model: str,
    *,
    test=None,
    val=None,
    spec: WindowSpec = WindowSpec(),
    delays=DELAYS,
    backend: str = "numpy",
    device: str = "cpu",
    cache_dir=None,
    progress=print_progress,
) -> tuple[Evaluation, dict]:
    """Fit and score the baseline; returns the evaluation and the run's settings."""
    dataset.validate(subject)
    split = dataset.split(subject, test=test, val=val)
    extractor = FrozenFeatures(model, spec, cache_dir=cache_dir, device=device)
    n_layers = extractor.model.config.num_hidden_layers
    if not 0 <= layer <= n_layers:
        raise ConfigError(f"--layer {layer}: {model} has layers 0..{n_layers}")
    stories = split.train + split.test

    def features(story):
        progress(f"[{stories.index(story) + 1}/{len(stories)}] layer-{layer} features: {story}")
        return extractor.tr_features(dataset, subject, story, layer, delays)

    started = time.time()
    _, evaluations = ridge_evaluation(features, dataset, subject, split.train, {"test": split.test},
                                      backend=backend, progress=progress)
    result = evaluations["test"]
    settings = {
        "subject": subject, "model": model, "layer": layer, "data": str(dataset.root),
        "split": {"train": split.train, "val": split.val, "test": split.test},
        "window": spec.as_dict(), "delays": list(delays), "ridge_backend": backend,
        "alphas": ALPHAS.tolist(), "alpha_convention": result.alpha_convention, "seconds": round(time.time() - started, 1),
    }
    return result, settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (ds003020 layout)")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--layer", type=int, required=True, help="transformer layer, 1-based (0 = encoder input)")
    parser.add_argument("--out", required=True, help="output folder (replaced when the run completes)")
    parser.add_argument("--model", help="WavLM checkpoint folder or hub id (default: DATA/pretrained)")
    parser.add_argument("--test", nargs="+", help="test stories (default: wheretheressmoke)")
    parser.add_argument("--val", nargs="*", help="validation stories, left out of the fit")
    parser.add_argument("--backend", default="numpy", help="ridge backend (himalaya names): numpy, torch (CPU), torch_cuda (GPU)")
    parser.add_argument("--device", default="cpu", help="torch device for feature extraction")
    parser.add_argument("--cache-dir", help="feature cache (default $BRAINSWEEP_CACHE or ~/.cache/brainsweep)")
    parser.add_argument("--extraction", default="windows", choices=EXTRACTIONS,
                        help="windows (the paper's) or blocks (runs of windows in one pass: core.encoding.blocks)")
    parser.add_argument("--block-seconds", type=float, default=WindowSpec.block_seconds,
                        help="with --extraction blocks: seconds of window ends per pass")
    args = parser.parse_args(argv)

    dataset = Dataset(args.data)
    model = args.model or default_model(args.data)
    result, settings = run_baseline(
        dataset, args.subject, args.layer, model, test=args.test, val=args.val,
        backend=args.backend, device=args.device, cache_dir=args.cache_dir,
        spec=WindowSpec(extraction=args.extraction, block_seconds=args.block_seconds),
    )
    with atomic_dir(args.out) as tmp:
        write_voxel_results(tmp / "voxel_r.hf5", result.voxel_arrays(), {"settings": settings})
        write_json(tmp / "summary.json", {**result.summary, "settings": settings})
    s = result.summary
    line = f"{args.subject} layer {args.layer}: mean r {s['mean_r']:.3f}"
    line += "".join(f", {name} {v:.3f}" for name, v in s["roi_mean_r"].items())
    if "ceiling_fraction" in s:
        line += f" ({s['ceiling_fraction']:.0%} of ceiling)"
    print(line)
    print(f"wrote {args.out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
