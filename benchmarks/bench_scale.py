"""Peak memory and time of ``core.encoding.baseline`` (and ``core.train``) on a real-shaped subject.

Writes one subject shaped like ds003020 (issue 10): 29 stories of 300-420 rows (26
training, the 2 validation stories, ``wheretheressmoke`` with 5 repeats), float32
responses with NaN voxels, an ROI file, respdict = rows + 20, audio starting 10 s into
the scan and a tiny WavLM (core.synth's 4-layer, 64-wide model, saved with
``save_pretrained``) as ``DIR/pretrained``; at 95,000 voxels and at 190,000. Then runs
each command as a subprocess and measures its peak resident memory (``os.wait4``'s
``ru_maxrss`` of that child) and wall time.

    python -m benchmarks.bench_scale [--root /tmp/bench_scale] [--voxels 95000 190000]
                                     [--train] [--no-baseline] [--threads 1] [--json PATH]

The data (~4.5 GB per 95,000 voxels) are written once into ``--root`` (outside the
repository) and reused. Frozen features are cached under ``ROOT/cache``, shared by both
voxel counts (same audio, same model); a baseline whose features were not cached yet is
run again with them cached, so that every voxel count is compared warm. Targets: the
baseline's peak <= 4 GB; one training epoch plus the test evaluation <= 6 GB; doubling
the voxels raises the peak by <= 20%. Prints a table and writes results with the
machine's metadata to ``benchmarks/results/scale_cpu.json``. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from core.data.dataset import PAPER_TEST, PAPER_VAL, RESPDICT_PAD, SOUND_START, TR, TRIM_END, TRIM_START
from core.data.dataset import write_respdict, write_roi_masks, write_wav

SUBJECT = "UTS01"
N_TRAIN = 26
N_REPEATS = 5
SAMPLE_RATE = 16000
ROW_BLOCK = 32  # rows generated and written at once
RESULTS = Path(__file__).parent / "results" / "scale_cpu.json"


def story_lengths(seed: int = 0) -> dict[str, int]:
    """Rows of each story: 26 training stories, the paper's validation and test stories."""
    rng = np.random.default_rng(seed)
    names = [f"story{i:02d}" for i in range(N_TRAIN)] + list(PAPER_VAL) + list(PAPER_TEST)
    return {name: int(n) for name, n in zip(names, rng.integers(300, 421, len(names)))}


def _speechlike(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a syllable-rate (~4 Hz) envelope: enough for a feature extractor to chew on."""
    t = np.arange(n_samples) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)) ** 2
    return (0.2 * envelope * rng.standard_normal(n_samples)).astype(np.float32)


def write_shared(root: Path, lengths: dict[str, int]) -> None:
    """Audio (covering every row's time plus a margin) and the tiny pretrained model, once."""
    from core import synthetic as synth

    done = root / "shared.done"
    if done.exists():
        return
    rng = np.random.default_rng(1)
    for story, n_rows in lengths.items():
        last_row = (n_rows - 1 + TRIM_START) * TR + TR / 2 - SOUND_START
        write_wav(root / "stimuli" / f"{story}.wav", _speechlike(int((last_row + 2 * TR) * SAMPLE_RATE), rng))
    synth.make_pretrained(synth.SynthSpec()).save_pretrained(root / "pretrained")
    done.touch()


def write_subject(root: Path, n_voxels: int, lengths: dict[str, int]) -> Path:
    """One subject's responses at ``n_voxels`` in ``root/v<n_voxels>`` (reused when complete)."""
    data_dir = root / f"v{n_voxels}"
    done = data_dir / "data.done"
    if done.exists():
        return data_dir
    rng = np.random.default_rng(n_voxels)
    folder = data_dir / "derivative" / "preprocessed_data" / SUBJECT
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("stimuli", "pretrained"):
        if not (data_dir / name).exists():
            (data_dir / name).symlink_to(root / name)
    nan_voxels = rng.random(n_voxels) < 0.02
    for story, n_rows in lengths.items():
        repeats = N_REPEATS if story in PAPER_TEST else 0
        with h5py.File(folder / f"{story}.hf5", "w") as f:
            data = f.create_dataset("data", shape=(n_rows, n_voxels), dtype=np.float32)
            single = (f.create_dataset("individual_repeats", shape=(repeats, n_rows, n_voxels), dtype=np.float32)
                      if repeats else None)
            for start in range(0, n_rows, ROW_BLOCK):
                rows = slice(start, min(start + ROW_BLOCK, n_rows))
                shape = (rows.stop - rows.start, n_voxels)
                if single is None:
                    block = rng.standard_normal(shape, dtype=np.float32)
                else:
                    signal = rng.standard_normal(shape, dtype=np.float32)
                    block = np.zeros(shape, np.float32)
                    for i in range(repeats):
                        one = signal + rng.standard_normal(shape, dtype=np.float32)
                        one[:, nan_voxels] = np.nan
                        single[i, rows] = one
                        block += one / repeats
                block[:, nan_voxels] = np.nan
                data[rows] = block
        print(f"  wrote {story} ({n_rows} x {n_voxels})", file=sys.stderr, flush=True)
    write_respdict(data_dir / "derivative" / "respdict.json",
                   {story: n + TRIM_START + TRIM_END + RESPDICT_PAD for story, n in lengths.items()})
    half = np.arange(n_voxels) < n_voxels // 2
    write_roi_masks(data_dir / "derivative" / "rois" / f"{SUBJECT}.hf5",
                    {"AC": np.arange(n_voxels) % 10 == 0, "left": half, "right": ~half})
    done.touch()
    return data_dir


def measure(argv: list[str], env: dict) -> dict:
    """Run a command; its wall time, peak resident memory (bytes) and exit code."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "seconds": round(seconds, 1),
            "returncode": proc.returncode, "output_tail": output[-2000:]}


def machine_info(threads: int) -> dict:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "memory_bytes": mem, "load_average": os.getloadavg(),
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "threads": threads,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/bench_scale", help="where the data are written (reused)")
    parser.add_argument("--voxels", type=int, nargs="+", default=[95_000, 190_000])
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="also one epoch of core.train per voxel count")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip core.encoding.baseline (with --train: measure training only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the measured commands (1 on a shared machine)")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)

    root = Path(args.root)
    lengths = story_lengths()
    print(f"{len(lengths)} stories, {sum(lengths.values())} rows; writing into {root} (once)", file=sys.stderr)
    write_shared(root, lengths)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "BRAINSWEEP_CACHE": str(root / "cache")}
    runs = []
    for n_voxels in args.voxels:
        data_dir = write_subject(root, n_voxels, lengths)
        commands = []
        if args.baseline:
            commands.append(("baseline", [sys.executable, "-m", "core.baseline", "--data", str(data_dir),
                                          "--subject", SUBJECT, "--layer", str(args.layer),
                                          "--out", str(root / "out" / f"baseline_v{n_voxels}")]))
        if args.train:
            commands.append(("train", [sys.executable, "-m", "core.train", "--data", str(data_dir),
                                       "--subject", SUBJECT, "--out", str(root / "out" / f"train_v{n_voxels}"),
                                       "--set", "epochs=1", "--set", f"readout_layer={args.layer}"]))
        for stage, command in commands:
            # A fresh output folder: core.train would otherwise resume an earlier run found there.
            shutil.rmtree(command[command.index("--out") + 1], ignore_errors=True)
            cached = (root / "cache" / "features").exists()
            result = measure(command, env)
            if stage == "baseline" and not cached and result["returncode"] == 0:
                result = {**measure(command, env), "first_run_with_feature_extraction": result}
            runs.append({"stage": stage, "n_voxels": n_voxels, **result})
            gb = result["peak_rss_bytes"] / 1e9
            print(f"{stage:>9} {n_voxels:>8} voxels: peak {gb:5.2f} GB, {result['seconds']:7.1f} s"
                  + ("" if result["returncode"] == 0 else f"  FAILED ({result['returncode']}):\n{result['output_tail']}"),
                  flush=True)

    print(f"\n{'stage':>9} {'voxels':>8} {'peak GB':>8} {'seconds':>8}")
    for run in runs:
        print(f"{run['stage']:>9} {run['n_voxels']:>8} {run['peak_rss_bytes'] / 1e9:8.2f} {run['seconds']:8.1f}")
    ratios = {}
    for stage in ("baseline", "train"):
        peaks = {r["n_voxels"]: r["peak_rss_bytes"] for r in runs if r["stage"] == stage and r["returncode"] == 0}
        if len(peaks) >= 2:
            small, large = min(peaks), max(peaks)
            ratios[stage] = peaks[large] / peaks[small]
            print(f"{stage}: peak at {large} / peak at {small} voxels = {ratios[stage]:.2f}")
    results = {"machine": machine_info(args.threads), "stories": lengths, "runs": runs, "peak_ratio": ratios,
               "targets": {"baseline_peak_gb": 4, "train_peak_gb": 6, "peak_ratio": 1.2}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
