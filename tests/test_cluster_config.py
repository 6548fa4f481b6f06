"""The Ray cluster-launcher files (cluster.yaml on AWS, cluster-onprem.yaml on own machines).

First the checks `ray up` itself runs before it talks to a cloud (in Ray 2.60,
``ray.autoscaler._private.commands._bootstrap_config``: ``prepare_config`` -- defaults of
the provider, setup-command merging, the Docker check, per-node-type worker counts -- then
``validate_config`` against ``ray-schema.json`` and its own rules). What ``ray up`` does
after that needs the cloud (the AWS provider's resource detection and ``bootstrap_config``
call EC2/IAM through boto3) and is not run here.

Then what the schema cannot know: every search space fits on the cluster's nodes, the
image and the setup commands pin the Ray we run, the setup installs this project, the
start commands' options exist in the installed Ray and MLflow, every node reaches the
tracking server, the services stay on private addresses, and the files hold no secrets.
"""

from __future__ import annotations

import copy
import math
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeper.space import load_spec

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
FILES = [AWS, ONPREM]
DOCS = ROOT / "docs" / "cluster.md"
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(path: Path) -> dict:
    """The configuration as `ray up` has it after its offline checks."""
    config = prepare_config(copy.deepcopy(load(path)))
    validate_config(config)
    return config


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key, [])]


def shell_parts(command: str) -> list[list[str]]:
    """A command line cut at ``;``, ``&&``, ``||`` and ``&``, each part split like a shell would."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    parts, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|()"):
            if current:
                parts.append(current)
            current = []
        else:
            current.append(token)
    if current:
        parts.append(current)
    return parts


def invocations(commands: list[str], *program: str) -> list[list[str]]:
    """Every call of ``program`` (e.g. ``ray start``) in the commands, as argument lists."""
    n = len(program)
    found = []
    for cmd in commands:
        for part in shell_parts(cmd):
            while part and part[0] in ("nohup", "exec", "sudo"):
                part = part[1:]
            if tuple(part[:n]) == program:
                found.append(part[n:])
    return found


def options(args: list[str]) -> dict[str, str | None]:
    out = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq:
                nxt = args[i + 1] if i + 1 < len(args) else None
                value = nxt if nxt is not None and not nxt.startswith("-") else None
            out[name] = value
    return out


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.name)
def cluster(request):
    return request.param


# --- what `ray up` checks before contacting the provider -------------------------------------------------

def test_ray_up_offline_checks_pass(cluster):
    config = prepared(cluster)
    assert config["head_node_type"] in config["available_node_types"]
    # Our own setup replaced the provider's defaults (AWS's would install a nightly Ray).
    raw = load(cluster)
    assert raw.get("setup_commands"), "without our setup_commands, Ray's AWS defaults install a nightly Ray"
    assert config["head_setup_commands"][: len(raw["setup_commands"])] == raw["setup_commands"]
    assert config["worker_setup_commands"][: len(raw["setup_commands"])] == raw["setup_commands"]
    for cmd in all_commands(config):
        assert "ray-wheels" not in cmd and "dev0" not in cmd, cmd


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_commands_are_valid_shell(cluster):
    """Every command parses in bash (YAML folding and quoting mistakes show up here)."""
    for cmd in all_commands(load(cluster)):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd}\n{result.stderr}"


def test_schema_rejects_fractional_resources():
    """The schema check is live: a fractional custom resource fails `ray up`."""
    config = load(AWS)
    config["available_node_types"]["gpu"]["resources"]["accelerator_a10g"] = 0.5
    with pytest.raises(Exception, match="0.5"):
        validate_config(prepare_config(config))


def test_same_setup_on_both_clusters():
    aws, onprem = load(AWS), load(ONPREM)
    for key in ("setup_commands", "file_mounts", "head_start_ray_commands", "worker_start_ray_commands"):
        assert aws[key] == onprem[key], key
    assert aws["docker"]["image"] == onprem["docker"]["image"]
    assert aws["docker"]["run_options"] == onprem["docker"]["run_options"]


# --- the search spaces fit the nodes ----------------------------------------------------------------------

def trial_requests(spec) -> tuple[dict, list[dict]]:
    """What one trial asks Ray for, as sweeper.launch.build_tuner requests it: the trial's own
    process, and the bundles of its Ray Train workers (none with one worker)."""
    worker = {"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker}
    if spec.workers == 1:
        return worker, []
    return {"CPU": 0.01}, [worker] * spec.workers


def fits(request: dict, resources: dict) -> bool:
    return all(resources.get(k, 0) >= v for k, v in request.items() if v)


def copies(request: dict, resources: dict) -> int:
    """How many ``request`` bundles one node holds."""
    counts = [math.floor(resources.get(k, 0) / v + 1e-9) for k, v in request.items() if v]
    return min(counts) if counts else 10**6


@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.name)
def test_every_search_space_fits_the_aws_nodes(space):
    spec = load_spec(space)
    config = prepared(AWS)
    nodes = config["available_node_types"]
    head = config["head_node_type"]
    scalable = {name: n for name, n in nodes.items() if name != head and n["max_workers"] > 0}
    trial, bundles = trial_requests(spec)
    assert any(fits(trial, n["resources"]) for n in nodes.values()), f"{space.name}: no node holds a trial {trial}"
    if not bundles:
        # One worker: the whole trial (workers x cpus_per_worker CPUs, gpus_per_worker GPUs)
        # on one node the autoscaler can start.
        fitting = [name for name, n in scalable.items() if fits(trial, n["resources"])]
        assert fitting, f"{space.name}: no worker node type holds {trial}: {dict((k, n['resources']) for k, n in scalable.items())}"
    else:
        bundle = bundles[0]
        fitting = [name for name, n in scalable.items() if fits(bundle, n["resources"])]
        assert fitting, f"{space.name}: no worker node type holds a Train worker {bundle}"
        capacity = sum(copies(bundle, scalable[name]["resources"]) * scalable[name]["max_workers"] for name in fitting)
        assert capacity >= len(bundles), f"{space.name}: {len(bundles)} Train workers, the cluster holds {capacity}"
    if spec.gpus_per_worker:
        # A GPU trial lands only where GPUs are, and the node's CPUs do not leave GPUs idle.
        request = bundles[0] if bundles else trial
        for name in fitting:
            res = scalable[name]["resources"]
            assert res.get("GPU", 0) >= spec.gpus_per_worker
            assert copies(request, res) == math.floor(res["GPU"] / spec.gpus_per_worker + 1e-9), (
                f"{space.name} on {name}: {res} runs {copies(request, res)} trial worker(s) at once, "
                f"leaving GPUs idle")


def test_onprem_resources_are_detected_per_machine():
    """The local provider has one node type whose resources Ray detects on each machine;
    nothing here may hard-code other numbers."""
    config = prepared(ONPREM)
    (node,) = config["available_node_types"].values()
    assert node["resources"] == {}
    for args in invocations(all_commands(config), "ray", "start"):
        assert not {"--num-cpus", "--num-gpus", "--resources"} & set(options(args)), args


# --- image, Ray version, setup --------------------------------------------------------------------------------

IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<pyminor>\d+)-(?P<kind>gpu|cu\d+)$")


def images(config: dict) -> set[str]:
    docker = config.get("docker", {})
    found = {docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for node in config.get("available_node_types", {}).values():
        found |= {node.get("docker", {}).get("worker_image")} - {None}
    return found


def test_one_pinned_ray_image_everywhere(cluster):
    config = load(cluster)
    (image,) = images(config)
    match = IMAGE.match(image)
    assert match, f"{image}: expected rayproject/ray:<version>-py<xy>-gpu (not ray-ml, not latest)"
    assert match["ray"] == ray.__version__, f"image Ray {match['ray']} != installed Ray {ray.__version__}"
    requires = PROJECT["requires-python"]
    assert f"{match['py']}.{match['pyminor']}" in SpecifierSet(requires)


def pip_installs(config: dict) -> list[list[str]]:
    return [args[1:] for args in invocations(config["setup_commands"], "pip") if args[:1] == ["install"]]


def test_setup_installs_this_project_and_pins_ray(cluster):
    config = load(cluster)
    project_path = next(remote for remote, local in config["file_mounts"].items() if "brainsweep" in remote)
    installs = pip_installs(config)
    args = [a for install in installs for a in install]
    # This project, editable, from the folder the file mount fills.
    assert any(args[i] == "-e" and args[i + 1] == project_path for i in range(len(args) - 1)), installs
    deps = PROJECT["dependencies"]
    wanted = {Requirement(d).name: Requirement(d) for d in deps}
    pinned = {Requirement(a).name: Requirement(a) for a in args if not a.startswith("-") and a != project_path}
    # Ray pinned to the image's (= the driver's) version, and allowed by our pyproject.
    assert str(pinned["ray"].specifier) == f"=={ray.__version__}"
    assert wanted["ray"].extras <= pinned["ray"].extras
    # torch: one version our pyproject allows.
    (torch_version,) = [s.version for s in pinned["torch"].specifier]
    assert wanted["torch"].specifier.contains(torch_version)
    # torch comes first: the project's install must not choose a torch build on its own.
    first = [i for i, inst in enumerate(installs) if any(a.startswith("torch") for a in inst)]
    project = [i for i, inst in enumerate(installs) if project_path in inst]
    assert first[0] < project[0]


def test_file_mount_source_has_what_pip_needs():
    """The file mount copies an export of HEAD (`git archive`); it must hold the pyproject,
    the README it names, and the packages."""
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                                    capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    for needed in ("pyproject.toml", PROJECT["readme"], "core/__init__.py", "sweeper/__init__.py",
                   "search_spaces/paper.yaml"):
        assert needed in files, needed


def test_ray_and_mlflow_options_exist():
    """Every option the start commands pass to `ray start` and `mlflow server` is one the
    installed versions accept (catches options renamed between versions)."""
    import mlflow.cli
    import ray.scripts.scripts

    known = {
        ("ray", "start"): {o for p in ray.scripts.scripts.start.params for o in p.opts},
        ("mlflow", "server"): {o for p in mlflow.cli.server.params for o in p.opts},
    }
    for path in FILES:
        commands = all_commands(load(path))
        for program, accepted in known.items():
            calls = invocations(commands, *program)
            assert calls, (path.name, program)
            for args in calls:
                unknown = set(options(args)) - accepted
                assert not unknown, f"{path.name}: {' '.join(program)} does not accept {sorted(unknown)}"


# --- storage, services, roles ---------------------------------------------------------------------------------

def test_mlflow_server_on_the_head(cluster):
    """Every node's tracking URI reaches the server the head starts, which keeps its store
    on the shared volume, with one worker (SQLite takes one writer)."""
    config = load(cluster)
    (server,) = invocations(config["head_start_ray_commands"], "mlflow", "server")
    opts = options(server)
    shared = {v.split(":")[0] for v in re.findall(r"--volume (\S+)", " ".join(config["docker"]["run_options"]))}
    store = opts["--backend-store-uri"].removeprefix("sqlite:///")
    assert opts["--backend-store-uri"].startswith("sqlite:///")
    assert any(store.startswith(f"{v}/") for v in shared) and any(
        opts["--artifacts-destination"].startswith(f"{v}/") for v in shared), (opts, shared)
    assert opts["--workers"] == "1"
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{opts['--port']}" in head
    assert f"MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:{opts['--port']}" in workers


def test_only_ssh_is_exposed(cluster):
    config = load(cluster)
    (head_start,) = invocations(config["head_start_ray_commands"], "ray", "start")
    # The dashboard (which Ray 2.60 needs to free stopped trials' placement groups) on loopback.
    assert options(head_start)["--dashboard-host"] == "127.0.0.1"
    assert "--include-dashboard" not in options(head_start)
    provider = config["provider"]
    assert not provider.get("security_group", {}).get("IpPermissions"), "no extra inbound rules"
    for node in config.get("available_node_types", {}).values():
        assert "SecurityGroupIds" not in node["node_config"], "Ray's own group: cluster-internal + SSH only"


# --- secrets ---------------------------------------------------------------------------------------------

SECRETS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                             # AWS access key ids
    re.compile(r"aws_secret_access_key|aws_session_token", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(password|passwd|secret|token|api[_-]?key)\b\s*[:=]\s*\S+", re.I),
    re.compile(r"--(redis-)?password[= ]\S+"),
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),                # credentials in a URI
    re.compile(r"\b(ghp|gho|github_pat|hf|xox[bap])_[A-Za-z0-9_]{20,}"),     # GitHub, Hugging Face, Slack
]


def secrets_in(text: str) -> list[str]:
    return [m.group(0) for pattern in SECRETS for m in pattern.finditer(text)]


def test_secret_scanner_finds_planted_secrets():
    planted = ["key: AKIAABCDEFGHIJKLMNOP", "aws_secret_access_key = abc", "password: hunter2",
               "postgresql://mlflow:hunter2@db:5432/mlflow", "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz"]
    for text in planted:
        assert secrets_in(text), text


@pytest.mark.parametrize("path", FILES + [DOCS], ids=lambda p: p.name)
def test_no_secrets(path):
    assert not secrets_in(path.read_text()), secrets_in(path.read_text())
