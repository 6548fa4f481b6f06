#!/bin/bash
# Manual check: submit brainsweep.sbatch to a real one-node Slurm on this machine and check
# the sweep's runs in MLflow. Needs root and Debian's slurm-wlm (apt-get install slurm-wlm);
# everything listens on 127.0.0.1 and lives in one temporary folder; the Slurm and munge
# daemons started here are stopped at the end. Run from the repository root with the
# project's environment active:
#
#   bash cluster/slurm/test_local.sh [sweeper.launch arguments, default: the demo, 2 trials]
#
# Prints the job's log and a JSON line of the MLflow runs (also written to $OUT if set).
set -euo pipefail
repo=$(pwd)
work=$(mktemp -d /tmp/brainsweep-slurm.XXXXXX)
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
node=$(hostname -s)

mkdir -p "$work"/{state,spool,shared,munge}
cat > "$work/slurm.conf" <<CONF
ClusterName=brainsweep-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$work/slurm.conf

pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done; done
}
trap stop EXIT
munged --force --socket="$work/munge/munge.socket" --pid-file="$work/munge/munged.pid" \
    --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed"
sleep 1; pids+=("$(cat "$work/munge/munged.pid")")
slurmctld -f "$SLURM_CONF"; sleep 2; pids+=("$(cat "$work/slurmctld.pid")")
slurmd -f "$SLURM_CONF"; sleep 2; pids+=("$(cat "$work/slurmd.pid")")
for _ in $(seq 30); do sinfo -h -o %T | grep -q idle && break; sleep 1; done
sinfo

args=("$@")
(( ${#args[@]} )) || args=(--config search_spaces/demo.yaml --num-samples 2)
started=$(date +%s)
job=$(BRAINSWEEP_SHARED=$work/shared BRAINSWEEP_HEAD_IP=127.0.0.1 BRAINSWEEP_RAY_PORT=$(free_port) \
      BRAINSWEEP_DASHBOARD_PORT=$(free_port) BRAINSWEEP_MLFLOW_PORT=$(free_port) \
      BRAINSWEEP_RAY_OPTIONS="--ray-client-server-port=$(free_port) --dashboard-agent-listen-port=$(free_port)" \
      sbatch --parsable --nodes=1 --cpus-per-task=2 --gpus-per-node=0 --time=60 \
             --output="$work/job-%j.log" cluster/slurm/brainsweep.sbatch "${args[@]}")
echo "submitted job $job"
while squeue -h -j "$job" 2>/dev/null | grep -q .; do sleep 5; done
seconds=$(( $(date +%s) - started ))
cat "$work/job-$job.log"
state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z]*' || echo "JobState=?")
python - "$work/shared/mlflow/mlflow.db" "$job" "$seconds" "$state" <<'PY'
import json, os, sys
from mlflow.tracking import MlflowClient
db, job, seconds, state = sys.argv[1:]
client = MlflowClient(f"sqlite:///{db}")

def artifacts(run):  # the server's artifact store (mlflow-artifacts:/...), read directly
    folder = os.path.join(os.path.dirname(db), "artifacts", run.info.artifact_uri.split(":", 1)[1].lstrip("/"))
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)

runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
result = {"job": job, "seconds": int(seconds), "slurm": state.split("=")[1],
          "runs": [{"name": r.info.run_name, "status": r.info.status, "role": r.data.tags.get("sweep.role", "trial"),
                    "best_val_r": r.data.metrics.get("best_val_r"), "best_trial": r.data.tags.get("best_trial"),
                    "artifacts": artifacts(r)} for r in runs]}
print(json.dumps(result, indent=1))
if os.environ.get("OUT"):
    with open(os.environ["OUT"], "w") as f:
        json.dump(result, f, indent=1)
PY
