"""Search-space files: what a sweep is, read and validated once.

A search-space file (``search_spaces/*.yaml``) reads like the study it describes::

    name: demo
    data: synthetic:tiny              # a dataset folder, or synthetic:<size> (made on first use)
    subjects: [UTS01, UTS02]          # or: all
    fixed:                            # settings of core.config.TrainConfig for every trial
      readout_layer: 3
      epochs: 2
    search:                           # searched settings, suggested in this order
      lr: {loguniform: [1.0e-3, 3.0e-2]}
      lora_rank: {choice: [1, 2, 4]}
      readout_layer: {int: [2, 4]}
      lora_layers: {top_layers: [1, 3]}       # the k layers ending at readout_layer, k in [1, 3]
      roi_weights.AC: {uniform: [0.5, 4.0], when: {loss: spatial}}
    objective: {metric: best_val_r, mode: max}   # or a list of two: a Pareto front (NSGA-II)
    scheduler: {asha: {grace_period: 2, reduction_factor: 2}}   # rungs at epochs 2, 4, ... below the last; or: none
    budget: {trials: 4, concurrency: 2}          # per subject
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    points_to_evaluate:                          # known-good configurations, tried first
      - {lr: 1.0e-3, lora_rank: 4, lora_layers: 2}
    seed: 0
    report: roi                                  # the study report (sweeper.report); default: sweep

Kinds of searched setting: ``loguniform``, ``uniform`` (floats), ``int`` (inclusive
bounds), ``choice`` (a list of values; lists of layers allowed), and ``top_layers`` (for
``lora_layers`` only: adapt the top ``k`` layers up to the read-out layer, so LoRA layers
never lie above it). ``choice`` values may also be mappings (e.g. ``roi_weights: {choice: [{}, {AC: 1}]}``).
``when: {setting: value or [values]}`` makes a setting conditional on
earlier ones (searched or fixed). Setting names are those of
:class:`core.config.TrainConfig`, plus ``roi_weights.<ROI>``.

One setting may be searched in several ways, each under its own ``when``, by naming
them ``setting@variant``: e.g. backbones searched together, each with its own layers::

    search:
      model: {choice: [microsoft/wavlm-base-plus, openai/whisper-base]}
      readout_layer@wavlm: {int: [6, 12], when: {model: microsoft/wavlm-base-plus}}
      readout_layer@whisper: {int: [3, 6], when: {model: openai/whisper-base}}

Each variant is its own Optuna parameter (Optuna needs one distribution per name); the
trial's configuration gets ``readout_layer``. At most one variant may hold per trial.

Objective metrics are what every trial reports (see :mod:`sweeper.trial`): ``best_val_r``
(validation r of the best epoch, with the ROI weighting) and ``best_val_r.<ROI>``.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.config import TrainConfig
from core.errors import BrainsweepError, ConfigError

KINDS = ("loguniform", "uniform", "int", "choice", "top_layers")
TOP_KEYS = ("name", "description", "data", "subjects", "fixed", "search", "objective", "scheduler", "budget",
            "resources", "points_to_evaluate", "seed", "report")
# The study reports of sweeper.report; "sweep" (the default) is every sweep's table.
REPORTS = ("sweep", "roi", "stability", "transfer", "probes")
SETTINGS = tuple(f.name for f in TrainConfig.__dataclass_fields__.values())
SCHEDULERS = ("asha", "none")
METRIC_PREFIXES = ("best_val_r",)


@dataclass
class Param:
    """One searched setting."""

    name: str
    kind: str
    values: list
    when: dict = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The setting it sets: the name without its ``@variant``."""
        return self.name.split("@", 1)[0]


@dataclass
class Objective:
    metrics: list[str]
    modes: list[str]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


@dataclass
class SweepSpec:
    """A validated search-space file."""

    name: str
    source: str
    data: str
    subjects: list[str] | str
    fixed: dict
    params: list[Param]
    objective: Objective
    scheduler: dict | None
    trials: int
    concurrency: int
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    points_to_evaluate: list[dict]
    seed: int
    description: str = ""
    raw: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The file's content (with defaults filled in), for the records of a run."""
        return copy.deepcopy(self.raw)


class SpaceError(ConfigError):
    """A search-space file is wrong; the message names the file and the key."""


def _fail(source: str, key: str, problem: str) -> SpaceError:
    return SpaceError(f"{source}: {key}: {problem}")


def _suggest(name: str, allowed) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(allowed)})"


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a search-space file; :class:`SpaceError` names the file and the key."""
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{source}: no such search-space file") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: not valid YAML ({' '.join(str(err).split())})") from None
    return parse_spec(raw, source)


def parse_spec(raw, source: str = "search space") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: expected a mapping of {', '.join(TOP_KEYS)}")
    for key in raw:
        if key not in TOP_KEYS:
            raise _fail(source, key, "unknown key" + _suggest(str(key), TOP_KEYS))
    raw = copy.deepcopy(raw)
    name = str(raw.setdefault("name", Path(source).stem))
    data = raw.get("data")
    if not isinstance(data, str) or not data:
        raise _fail(source, "data", "missing: a dataset folder or synthetic:<size>")
    subjects = raw.setdefault("subjects", "all")
    if not (subjects == "all" or (isinstance(subjects, list) and subjects and all(isinstance(s, str) for s in subjects))):
        raise _fail(source, "subjects", f"expected 'all' or a list of subject names (got {subjects!r})")

    fixed = raw.setdefault("fixed", {}) or {}
    if not isinstance(fixed, dict):
        raise _fail(source, "fixed", "expected a mapping of settings")
    try:
        TrainConfig.from_dict(fixed, source=f"{source}: fixed")
    except BrainsweepError as err:
        raise SpaceError(str(err)) from None

    search = raw.setdefault("search", {}) or {}
    if not isinstance(search, dict):
        raise _fail(source, "search", "expected a mapping of setting -> {kind: values}")
    params = [_param(source, str(key), value) for key, value in search.items()]
    known = set(fixed)
    for p in params:
        for cond in p.when:
            if cond not in known and cond not in SETTINGS:
                raise _fail(source, f"search.{p.name}.when", f"unknown setting {cond!r}" + _suggest(cond, SETTINGS))
        known.add(p.setting)
    for setting in {p.setting for p in params}:
        ways = [p for p in params if p.setting == setting]
        if len(ways) > 1 and not all(p.when for p in ways):
            raise _fail(source, f"search.{next(p.name for p in ways if not p.when)}",
                        f"{setting} is searched {len(ways)} ways; each needs its own when")
    if any(p.kind == "top_layers" for p in params) and "readout_layer" in [p.setting for p in params]:
        order = [p.setting for p in params]
        if max(i for i, name in enumerate(order) if name == "readout_layer") > order.index("lora_layers"):
            raise _fail(source, "search.lora_layers", "top_layers needs readout_layer searched before it")

    objective = _objective(source, raw.setdefault("objective", {"metric": "best_val_r", "mode": "max"}))
    scheduler = _scheduler(source, raw.setdefault("scheduler", "none"), objective)
    budget = raw.setdefault("budget", {}) or {}
    trials = _positive_int(source, "budget.trials", budget.setdefault("trials", 4))
    concurrency = _positive_int(source, "budget.concurrency", budget.setdefault("concurrency", 1))
    resources = raw.setdefault("resources", {}) or {}
    for key in resources:
        if key not in ("workers", "cpus_per_worker", "gpus_per_worker"):
            raise _fail(source, f"resources.{key}", "unknown key" + _suggest(key, ("workers", "cpus_per_worker", "gpus_per_worker")))
    workers = _positive_int(source, "resources.workers", resources.setdefault("workers", 1))
    cpus = _number(source, "resources.cpus_per_worker", resources.setdefault("cpus_per_worker", 1), minimum=0)
    gpus = _number(source, "resources.gpus_per_worker", resources.setdefault("gpus_per_worker", 0), minimum=0)
    points = raw.setdefault("points_to_evaluate", []) or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise _fail(source, "points_to_evaluate", "expected a list of mappings")
    searched = {p.name: p for p in params}
    for i, point in enumerate(points):
        for key in point:
            if key not in searched:
                raise _fail(source, f"points_to_evaluate[{i}].{key}", "not a searched setting" + _suggest(key, list(searched)))
    report = raw.setdefault("report", "sweep")
    if report not in REPORTS:
        raise _fail(source, "report", f"unknown report {report!r}" + _suggest(str(report), REPORTS))
    seed = raw.setdefault("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _fail(source, "seed", f"expected an integer (got {seed!r})")
    return SweepSpec(name=name, source=source, data=data, subjects=subjects, fixed=fixed, params=params,
                     objective=objective, scheduler=scheduler, trials=trials, concurrency=concurrency,
                     workers=workers, cpus_per_worker=float(cpus), gpus_per_worker=float(gpus),
                     points_to_evaluate=points, seed=seed, description=str(raw.get("description", "")), raw=raw)


def _param(source: str, name: str, spec) -> Param:
    key = f"search.{name}"
    setting, _, variant = name.partition("@")
    if "@" in name and not variant:
        raise _fail(source, key, "expected setting@variant, with a variant name after @")
    base = setting.split(".", 1)[0]
    if base not in SETTINGS or ("." in setting and base != "roi_weights"):
        raise _fail(source, key, "not a setting" + _suggest(name, SETTINGS + ("roi_weights.<ROI>",)))
    if not isinstance(spec, dict):
        raise _fail(source, key, f"expected {{kind: values}} with kind one of {', '.join(KINDS)}")
    when = spec.get("when", {}) or {}
    kinds = [k for k in spec if k != "when"]
    if len(kinds) != 1 or kinds[0] not in KINDS:
        bad = next((k for k in kinds if k not in KINDS), None)
        hint = _suggest(str(bad), KINDS) if bad else f" (expected exactly one of {', '.join(KINDS)})"
        raise _fail(source, key, f"unknown kind {bad!r}{hint}" if bad else f"no kind{hint}")
    kind, values = kinds[0], spec[kinds[0]]
    if not isinstance(when, dict):
        raise _fail(source, f"{key}.when", "expected {setting: value or [values]}")
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise _fail(source, key, f"choice needs a non-empty list (got {values!r})")
    else:
        if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
            raise _fail(source, key, f"{kind} needs [low, high] (got {values!r})")
        low, high = values
        if not low <= high:
            raise _fail(source, key, f"low {low} is above high {high}")
        if kind in ("int", "top_layers") and not all(isinstance(v, int) for v in values):
            raise _fail(source, key, f"{kind} bounds must be integers (got {values!r})")
        if kind == "loguniform" and low <= 0:
            raise _fail(source, key, f"loguniform needs low > 0 (got {low})")
        if kind == "top_layers" and (setting != "lora_layers" or low < 1):
            raise _fail(source, key, "top_layers is for lora_layers, with k >= 1")
    return Param(name, kind, values, when)


def _is_number(v) -> bool:
    if isinstance(v, str):
        try:
            float(v)
            return True
        except ValueError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _objective(source, raw) -> Objective:
    items = raw if isinstance(raw, list) else [raw]
    if not 1 <= len(items) <= 2 or not all(isinstance(i, dict) for i in items):
        raise _fail(source, "objective", "expected {metric, mode} or a list of two of them")
    metrics, modes = [], []
    for item in items:
        metric, mode = item.get("metric"), item.get("mode", "max")
        if not isinstance(metric, str) or not metric.startswith(METRIC_PREFIXES):
            raise _fail(source, "objective.metric", f"expected best_val_r or best_val_r.<ROI> (got {metric!r})")
        if mode not in ("max", "min"):
            raise _fail(source, "objective.mode", f"expected max or min (got {mode!r})")
        metrics.append(metric)
        modes.append(mode)
    return Objective(metrics, modes)


def _scheduler(source, raw, objective: Objective) -> dict | None:
    if raw in (None, "none"):
        return None
    if not isinstance(raw, dict) or list(raw) != ["asha"]:
        raise _fail(source, "scheduler", "expected none or {asha: {grace_period, reduction_factor}}")
    if objective.multi:
        raise _fail(source, "scheduler", "ASHA stops trials on one metric; use none with two objectives")
    asha = raw["asha"] or {}
    for key in asha:
        if key not in ("grace_period", "reduction_factor"):
            raise _fail(source, f"scheduler.asha.{key}", "unknown key (allowed: grace_period, reduction_factor)")
    return {"grace_period": _positive_int(source, "scheduler.asha.grace_period", asha.get("grace_period", 1)),
            "reduction_factor": _number(source, "scheduler.asha.reduction_factor", asha.get("reduction_factor", 2), minimum=1.01)}


def _positive_int(source, key, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(source, key, f"expected a positive integer (got {value!r})")
    return value


def _number(source, key, value, minimum) -> float:
    if not _is_number(value) or float(value) < minimum:
        raise _fail(source, key, f"expected a number >= {minimum} (got {value!r})")
    return float(value)


def _holds(when: dict, values: dict) -> bool:
    for name, wanted in when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if values.get(name) not in allowed:
            return False
    return True


def _encode(value):
    """Optuna categorical choices must be scalars: lists travel as "2,3", mappings as JSON."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


class SearchSpace:
    """Optuna define-by-run space for one sweep (picklable, so the searcher can be saved).

    Called with an Optuna trial, it suggests the searched settings in file order and
    returns ``{"settings": {...}}``: the TrainConfig overrides of this trial.
    """

    def __init__(self, spec: SweepSpec):
        self.params = spec.params
        self.fixed = spec.fixed

    def __call__(self, trial) -> dict:
        values = dict(self.fixed)
        settings = {}
        for p in self.params:
            if not _holds(p.when, values):
                continue
            if p.kind == "loguniform":
                v = trial.suggest_float(p.name, float(p.values[0]), float(p.values[1]), log=True)
            elif p.kind == "uniform":
                v = trial.suggest_float(p.name, float(p.values[0]), float(p.values[1]))
            elif p.kind == "int":
                v = trial.suggest_int(p.name, p.values[0], p.values[1])
            elif p.kind == "choice":
                # Back to the file's own value (a list stays a list in the config and in MLflow).
                encoded = trial.suggest_categorical(p.name, [_encode(c) for c in p.values])
                v = copy.deepcopy(next(c for c in p.values if _encode(c) == encoded))
            else:
                top = read_out_layer(values)
                depth = trial.suggest_int("lora_depth", p.values[0], max(p.values[0], min(p.values[1], top)))
                v = list(range(max(1, top - depth + 1), top + 1))
            if p.setting in settings:
                raise ConfigError(f"search: two ways of searching {p.setting} hold in one trial "
                                  f"({', '.join(q.name for q in self.params if q.setting == p.setting)}): "
                                  "make their when conditions exclusive")
            values[p.setting] = v
            settings[p.setting] = v
        return {"settings": settings}


def read_out_layer(values: dict) -> int:
    """The read-out layer of fixed or sampled ``values``: as TrainConfig derives it (the
    maximum of ``readout_layers`` when only they are given), so top_layers end there."""
    if values.get("readout_layer") is not None:
        return values["readout_layer"]
    if values.get("readout_layers"):
        return max(values["readout_layers"])
    return TrainConfig().readout_layer


def optuna_point(spec: SweepSpec, point: dict) -> dict:
    """A points_to_evaluate entry in Optuna's flat parameter names."""
    kinds = {p.name: p.kind for p in spec.params}
    out = {}
    for name, value in point.items():
        if kinds[name] == "top_layers":
            out["lora_depth"] = len(value) if isinstance(value, list) else int(value)
        else:
            out[name] = _encode(value)
    return out


def train_config(fixed: dict, settings: dict) -> TrainConfig:
    """The trial's TrainConfig: fixed settings, then the sampled ones (``roi_weights.X`` merged)."""
    values = copy.deepcopy(fixed)
    for name, value in settings.items():
        if name.startswith("roi_weights."):
            values.setdefault("roi_weights", {})[name.split(".", 1)[1]] = value
        else:
            values[name] = value
    return TrainConfig.from_dict(values, source="trial")
