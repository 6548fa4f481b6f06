"""The Slurm script (cluster/slurm/brainsweep.sbatch) without a Slurm: the commands it runs.

``srun``, ``scontrol``, ``ray``, ``mlflow`` and ``python`` are replaced by recorders on
PATH; the script runs as a three-node allocation would run it. The real run on a one-node
Slurm is ``cluster/slurm/test_local.sh`` (docs/cluster.md, "Slurm").
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "cluster" / "slurm" / "brainsweep.sbatch"

# Each fake appends its command line to $CALLS; long-running ones become a sleep, so the
# script's cleanup has something to end.
FAKES = {
    "scontrol": 'printf "n1\\nn2\\nn3\\n"',
    # srun's own options end at the command; the step gets the node's Slurm variables.
    "srun": 'while [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done\n'
            'SLURM_CPUS_PER_TASK=16 SLURM_GPUS_ON_NODE=2 exec "$@"',
    "hostname": "echo 10.0.0.1",
    # A node has joined once its `ray start` runs; `ray status` lists one line per node.
    "ray": 'if [[ $1 == status ]]; then sed "s/^/ 1 node_/" "$NODES" 2>/dev/null\n'
           'else echo $$ >> "$PIDS"; echo $$ >> "$NODES"; exec sleep 600; fi',
    "mlflow": 'echo $$ >> "$PIDS"; exec sleep 600',
    "python": "exit 0",
}


def fake_bin(folder: Path, calls: Path) -> Path:
    folder.mkdir()
    for name, body in FAKES.items():
        path = folder / name
        path.write_text(f'#!/bin/bash\nprintf "%q " {name} "$@" >> {shlex.quote(str(calls))}; echo >> {shlex.quote(str(calls))}\n'
                        f"{body}\n")
        path.chmod(0o755)
    return folder


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_script_starts_ray_on_every_node_mlflow_on_the_head_and_the_sweep(tmp_path):
    calls, shared = tmp_path / "calls", tmp_path / "shared"
    env = {"PATH": f"{fake_bin(tmp_path / 'bin', calls)}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "brainsweep",
           "BRAINSWEEP_SHARED": str(shared), "PIDS": str(tmp_path / "pids"),
           "NODES": str(tmp_path / "nodes")}
    done = subprocess.run(["bash", str(SCRIPT), "--config", "search_spaces/paper.yaml", "--data", "/d"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [shlex.split(line) for line in calls.read_text().splitlines()]
    starts = [line for line in lines if line[:2] == ["ray", "start"]]
    head = [line for line in starts if "--head" in line]
    workers = [line for line in starts if "--head" not in line]
    assert len(head) == 1 and len(workers) == 2
    assert {"--node-ip-address=10.0.0.1", "--port=6379", "--dashboard-host=127.0.0.1", "--block"} <= set(head[0])
    for line in starts:  # each node offers its allocation's CPUs and GPUs to Ray
        assert {"--num-cpus=16", "--num-gpus=2", "--temp-dir=/tmp/ray-42"} <= set(line)
    for line in workers:
        assert "--address=10.0.0.1:6379" in line and "--block" in line
    # One step per node (started in the background, so in any order).
    assert sorted(line[line.index("-w") + 1] for line in lines if line[0] == "srun" and "ray" in " ".join(line)) == \
        ["n1", "n2", "n3"]
    (mlflow,) = [line for line in lines if line[0] == "mlflow"]
    assert mlflow[:2] == ["mlflow", "server"]
    assert mlflow[mlflow.index("--backend-store-uri") + 1] == f"sqlite:///{shared}/mlflow/mlflow.db"
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1"
    (launch,) = [line for line in lines if line[0] == "python"]
    assert launch == ["python", "-m", "sweeper.launch", "--address", "10.0.0.1:6379",
                      "--storage", f"{shared}/sweeps/brainsweep", "--tracking-uri", "http://127.0.0.1:5000",
                      "--config", "search_spaces/paper.yaml", "--data", "/d"]
    # The Ray nodes and the MLflow server end with the script.
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 4 and not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
