#!/usr/bin/env bash
# The GPU paths that CI (CPU only) never runs, end to end, within 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh          # on a GPU machine, from anywhere in the repository
#   bash benchmarks/gpu_check.sh --cpu    # dry run of the same steps on the CPU (small model)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh ...
#
# Needs this project importable (`pip install -e .`) with a CUDA build of torch; installs
# nothing. Prints one line per check, PASS / FAIL / INFO with its numbers, and keeps them
# (with the machine's description) in benchmarks/results/gpu_check_<gpu|cpu>.log; each
# step's full output stays in the temporary folder named at the start (kept on failure).
#
# Checks:
#   resume     2 epochs uninterrupted vs 1 epoch, stop, resume in a new process
#              (python -m core.train): history, test r and trained parameters to 1e-5
#   bf16       one epoch with precision=bf16 finishes with finite numbers
#   paper      search_spaces/paper.yaml's first point (LoRA r4 on q/k/v of layers 1-9,
#              bf16) with a multi-layer read-out (layers 6 and 9) through
#              python -m sweeper.launch, on a random wavlm-base-plus-shaped model (GroupNorm
#              CNN) and synthetic data with a 95,000-voxel readout; 1 epoch
#   readout_init  the epoch-0 readout initialisation from a 3,072 x 95,000 ridge map
#              (python -m benchmarks.bench_readout_init --methods new): time and peak memory
#   memory     the GPU's peak memory in use during `paper` (nvidia-smi) and bench_epoch's
#   bench      python -m benchmarks.bench_epoch --size base: time per block, projected
#              ds003020 subject epoch (target <= 2 min), TFLOP/s and share of bf16 peak;
#              plus 40-TR blocks and extraction: blocks (1-s passes, docs/extraction.md) as levers
# With --cpu: device cpu, fp32, less synthetic data, the synthetic tiny model in place of
# base-plus (read-out layers 2 and 3) and 2,000 voxels in `paper`, bench_epoch --size tiny
# with one step; `bf16` (slow and not what runs on GPUs) and `memory` are skipped;
# readout_init stays at 3,072 x 95,000 on the CPU.
#
# Time: every step has its own limit, and all of them together stay within TOTAL_SECONDS
# (480 on a GPU; on the CPU 480 x GPU_CHECK_SLOWER, default 4): a step gets what is left
# when it starts, at most its own limit, and a step that finds no time left FAILs.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
PY=${PYTHON:-python}
LOG=benchmarks/results/gpu_check_${MODE}.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
FAILED=0
mkdir -p benchmarks/results
: > "$LOG"

say() { echo "$*" | tee -a "$LOG"; }
result() {  # result PASS|FAIL|INFO name message [step log to show on failure]
    say "$1 $2: $3"
    if [[ "$1" == FAIL ]]; then
        FAILED=1
        [[ -n "${4:-}" && -f "$4" ]] && tail -n 15 "$4" | sed 's/^/    /' | tee -a "$LOG"
    fi
}
verdict() {  # verdict name "PASS|FAIL|INFO message" step_log: a result from a checker's one line
    case "$2" in
        PASS\ *|FAIL\ *|INFO\ *) result "${2%% *}" "$1" "${2#* }" "$3" ;;
        *) result FAIL "$1" "could not read its results: ${2:-no output}" "$3" ;;
    esac
}
step() {  # step NAME SECONDS command...: run, output to $WORK/NAME.log; returns the command's status
    local name=$1 seconds=$(($2 * SLOWER)) left=$((TOTAL_SECONDS - SECONDS))
    shift 2
    (( seconds > left )) && seconds=$left
    if (( seconds <= 0 )); then
        echo "no time left of the total $TOTAL_SECONDS s" > "$WORK/$name.log"
        return 124
    fi
    timeout "$seconds" "$@" > "$WORK/$name.log" 2>&1
}

if [[ $MODE == gpu ]]; then
    DEVICE=cuda PRECISION=bf16 RIDGE=torch_cuda SIZE=base SLOWER=1 VOXELS=95000 BENCH_STEPS=3
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        say "FAIL setup: torch.cuda.is_available() is False (use --cpu for a dry run)"
        exit 1
    fi
else
    DEVICE=cpu PRECISION=fp32 RIDGE=numpy SIZE=tiny SLOWER=${GPU_CHECK_SLOWER:-4} VOXELS=2000 BENCH_STEPS=1
fi
TOTAL_SECONDS=$((480 * SLOWER))  # the step limits below are a GPU's, x SLOWER on the CPU
say "gpu_check ($MODE) $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); steps in $WORK"
say "machine: $("$PY" -c "from benchmarks.bench_trainer import machine; import json; print(json.dumps(machine()))" 2>&1)"

# -- data: the tiny planted-teacher dataset (on the CPU: 2 training stories of 30 TRs) -----------
DATA=$WORK/data
if [[ $MODE == gpu ]]; then
    step synth 30 "$PY" -m core.synth --out "$DATA" --size tiny
else
    step synth 30 "$PY" -c "import sys; from dataclasses import replace; from core.synth import SIZES, generate
generate(sys.argv[1], replace(SIZES['tiny'], subjects=('UTS01',), n_train_stories=2, train_trs=30, val_trs=20, test_trs=20))" "$DATA"
fi
if [[ $? -ne 0 ]]; then
    result FAIL synth "the synthetic dataset could not be made" "$WORK/synth.log"
    exit 1
fi

# -- resume -------------------------------------------------------------------------------------
SETS=(--set "device=$DEVICE" --set epochs=2 --set readout_layer=3 --set "lora_layers=[3]" --set lr=3e-3
      --set readout_lr=1e-3 --set bottleneck=16)
TRAIN=("$PY" -m core.train --data "$DATA" --subject UTS01 "${SETS[@]}")
if step resume_full 50 "${TRAIN[@]}" --out "$WORK/full" \
   && step resume_stop 35 "$PY" - "$DATA" "$WORK/resumed" "${SETS[@]}" <<'EOF' \
   && step resume_rest 35 "${TRAIN[@]}" --out "$WORK/resumed"
# One epoch, then stop as a killed run would (after epoch 1's checkpoint is written).
import sys
from core.config import TrainConfig
from core.dataset import Dataset
from core.trainer import Trainer

data, out, *sets = sys.argv[1:]
def stop(record):
    if record["epoch"] == 1:
        raise KeyboardInterrupt
try:
    Trainer(TrainConfig.load(None, sets[1::2]), Dataset(data), "UTS01", out, on_epoch=stop).fit()
    sys.exit("the run did not stop after epoch 1")
except KeyboardInterrupt:
    print("stopped after epoch 1")
EOF
then
    message=$("$PY" - "$WORK/full" "$WORK/resumed" <<'EOF'
import json, sys
import numpy as np, torch
full, resumed = sys.argv[1:]
a, b = (json.load(open(f"{d}/summary.json")) for d in (full, resumed))
numbers = lambda s: [h[k] for h in s["history"] for k in ("val_r", "val_readout_r", "train_loss")
                     if isinstance(h.get(k), float)] + [s[p]["mean_r"] for p in ("baseline", "tuned", "tuned_readout")]
x, y = np.array(numbers(a)), np.array(numbers(b))
pa, pb = (torch.load(f"{d}/checkpoints/last.pt", map_location="cpu", weights_only=False)["model"] for d in (full, resumed))
dp = max(float((pa[k].float() - pb[k].float()).abs().max() / pa[k].float().abs().max().clamp(min=1e-12)) for k in pa)
dn = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))) if len(x) == len(y) else float("inf")
ok = pa.keys() == pb.keys() and dn <= 1e-5 and dp <= 1e-5
print(("PASS" if ok else "FAIL") + f" {len(x)} numbers max rel diff {dn:.2e}, {len(pa)} trained tensors max rel diff {dp:.2e}, "
      f"test r {a['tuned']['mean_r']:.4f} vs {b['tuned']['mean_r']:.4f}")
EOF
    )
    verdict resume "$message" "$WORK/resume_rest.log"
else
    result FAIL resume "a training run failed" "$(ls -t "$WORK"/resume_*.log | head -1)"
fi

# -- bf16 ---------------------------------------------------------------------------------------
if [[ $MODE == cpu ]]; then
    result INFO bf16 "skipped on the CPU"
elif step bf16 40 "${TRAIN[@]}" --set precision=bf16 --set epochs=1 --out "$WORK/bf16"; then
    message=$("$PY" -c "
import json, math, sys
s = json.load(open(sys.argv[1]))
h = s['history'][-1]
ok = all(math.isfinite(v) for v in (h['train_loss'], h['val_r'], s['tuned']['mean_r']))
print(('PASS' if ok else 'FAIL') + f\" epoch 1 loss {h['train_loss']:.4f} val r {h['val_r']:.4f} in {h['seconds']:.1f} s\")
" "$WORK/bf16/summary.json")
    verdict bf16 "$message" "$WORK/bf16.log"
else
    result FAIL bf16 "precision=bf16 run failed" "$WORK/bf16.log"
fi

# -- paper: one paper.yaml trial on base-plus geometry, 95,000 voxels ---------------------------
if step paper_data 50 "$PY" - "$WORK" "$MODE" "$DEVICE" "$PRECISION" "$RIDGE" "$VOXELS" <<'EOF'
# A VOXELS-voxel synthetic dataset (no NaN voxels, so the readout predicts all of them), a
# random wavlm-base-plus-shaped checkpoint, and a search-space file derived from paper.yaml.
import os, sys
from dataclasses import replace
from pathlib import Path
import torch, yaml
from core.synth import SIZES, generate

work, mode, device, precision, ridge, voxels = sys.argv[1:]
work = Path(work)
gpu = mode == "gpu"
spec = replace(SIZES["tiny"], subjects=("UTS01",), n_voxels=int(voxels), fraction_nan=0.0, n_train_stories=2,
               train_trs=40 if gpu else 20, val_trs=20 if gpu else 10, test_trs=20 if gpu else 10)
data = generate(work / "data95k", spec, progress=lambda m: None)
space = yaml.safe_load(open("search_spaces/paper.yaml"))
space.update(name="gpu_check_paper", data=str(data), subjects=["UTS01"], budget={"trials": 1, "concurrency": 1},
             resources={"workers": 1, "cpus_per_worker": min(8, os.cpu_count()), "gpus_per_worker": int(mode == "gpu")})
space.pop("scheduler", None)
space["fixed"].update(epochs=1, device=device, precision=precision, ridge_backend=ridge)
space["fixed"].pop("readout_layer")  # a multi-layer read-out instead; readout_layer becomes its maximum
if gpu:
    space["fixed"]["readout_layers"] = [6, 9]
    from transformers import WavLMConfig, WavLMModel
    torch.manual_seed(0)
    WavLMModel(WavLMConfig()).save_pretrained(work / "baseplus")  # WavLMConfig() is base-plus's geometry
    space["fixed"]["model"] = str(work / "baseplus")
else:  # the dry run: the dataset's tiny 4-layer model, read out at layers 2 and 3
    space["fixed"].update(model=str(data / "pretrained"), readout_layers=[2, 3])
    space["search"]["lora_layers"] = {"top_layers": [1, 3]}
    space["points_to_evaluate"][0]["lora_layers"] = 3
yaml.safe_dump(space, open(work / "paper_check.yaml", "w"), sort_keys=False)
print(work / "paper_check.yaml")
EOF
then
    SMI_PEAK=$WORK/smi_peak
    if [[ $MODE == gpu ]] && command -v nvidia-smi > /dev/null; then
        ( peak=0; while sleep 1; do
              used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -1)
              (( used > peak )) && peak=$used && echo "$peak" > "$SMI_PEAK"
          done ) &
        SMI_PID=$!
    fi
    started=$SECONDS
    step paper 130 "$PY" -m sweeper.launch --config "$WORK/paper_check.yaml" --storage "$WORK/sweep" \
        --tracking-uri "sqlite:///$WORK/mlflow.db"
    status=$?
    seconds=$((SECONDS - started))
    [[ -n "${SMI_PID:-}" ]] && kill "$SMI_PID" 2> /dev/null
    summary=$(find "$WORK/sweep" -name summary.json 2> /dev/null | head -1)
    if [[ $status -eq 0 && -n "$summary" ]]; then
        message=$("$PY" -c "
import json, math, sys
import h5py
s = json.load(open(sys.argv[1]))
c = s['config']
with h5py.File(sys.argv[1].replace('summary.json', 'voxel_r.hf5')) as f:
    n = len(f['tuned_r'])
ok = math.isfinite(s['tuned']['mean_r']) and n == int(sys.argv[2])
print(('PASS' if ok else 'FAIL') + f\" {n} voxels, LoRA r{c['lora_rank']} layers {c['lora_layers']} read-out {c['readout_layers']}, \"
      f\"{c['precision']}, baseline r {s['baseline']['mean_r']:.4f} tuned {s['tuned']['mean_r']:.4f}, epoch 1 {s['history'][-1]['seconds']:.0f} s\")
" "$summary" "$VOXELS")
        verdict paper "${message:+$message, sweep $seconds s}" "$WORK/paper.log"
    else
        result FAIL paper "sweeper.launch exit status $status after ${seconds} s" "$WORK/paper.log"
    fi
    if [[ -s "$SMI_PEAK" ]]; then
        result INFO memory "peak GPU memory in use during the paper trial: $(cat "$SMI_PEAK") MiB (nvidia-smi, whole device)"
    fi
else
    result FAIL paper "could not build its data, model or search space" "$WORK/paper_data.log"
fi

# -- readout_init: the epoch-0 readout from a 3,072 x 95,000 ridge map ---------------------------
if step readout_init 30 "$PY" -m benchmarks.bench_readout_init --methods new --device "$DEVICE"; then
    result "$([[ $MODE == gpu ]] && echo PASS || echo INFO)" readout_init "$(grep '^new' "$WORK/readout_init.log")"
else
    result FAIL readout_init "bench_readout_init failed" "$WORK/readout_init.log"
fi

# -- bench ---------------------------------------------------------------------------------------
# bench_epoch with one lever changed (NAME, results-file suffix, its flags): an INFO line of its numbers.
bench_lever() {
    local name=$1 suffix=$2
    shift 2
    if step "$name" 30 "$PY" -m benchmarks.bench_epoch --size "$SIZE" --device "$DEVICE" --steps "$BENCH_STEPS" "$@" \
            --json "benchmarks/results/epoch_${DEVICE}_${SIZE}_${PRECISION}_${suffix}.json"; then
        result INFO "$name" "$(awk '/^(trainer|bare) +[0-9]/ {printf "%s%s %s s/block, epoch %s min, %s TFLOP/s",
                                     sep, $1, $2, $4, $5; sep = "; "}' "$WORK/$name.log")"
    else
        result FAIL "$name" "bench_epoch $* failed" "$WORK/$name.log"
    fi
}
BENCH_JSON=benchmarks/results/epoch_${DEVICE}_${SIZE}_${PRECISION}.json
if step bench 50 "$PY" -m benchmarks.bench_epoch --size "$SIZE" --device "$DEVICE" --steps "$BENCH_STEPS" --json "$BENCH_JSON"; then
    sed 's/^/    /' "$WORK/bench.log" | grep -v "^    wrote" | tee -a "$LOG"
    message=$("$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
t, b = r['modes']['trainer'], r['modes']['bare']
share = lambda m: f\"{100 * m['fraction_of_peak']:.0f}% of peak\" if m['fraction_of_peak'] else 'peak n/a'
mem = f\", peak {t['peak_gpu_mib']:.0f} MiB\" if 'peak_gpu_mib' in t else ''
cpu = sys.argv[2] == 'cpu'
print(('INFO' if cpu else 'PASS' if t['epoch_minutes'] <= 2 else 'FAIL') + f\" epoch {t['epoch_minutes']:.2f} min (target <= 2), \"
      f\"{t['tflops_per_s']:.3g} TFLOP/s ({share(t)}); bare {b['epoch_minutes']:.2f} min, {b['tflops_per_s']:.3g} TFLOP/s ({share(b)}){mem}\")
" "$BENCH_JSON" "$MODE")
    verdict bench "$message" "$WORK/bench.log"
    bench_lever bench_block40 block40 --block-trs 40
    bench_lever bench_blocks blocks --extraction blocks
else
    result FAIL bench "bench_epoch failed" "$WORK/bench.log"
fi

if [[ $FAILED -eq 0 ]]; then
    rm -rf "$WORK"
    say "all checks passed ($SECONDS s); log: $LOG"
else
    say "some checks failed ($SECONDS s); step outputs kept in $WORK; log: $LOG"
fi
exit $FAILED
