"""Run a sweep: ``python -m sweeper.launch``.

With no arguments it generates (or reuses) the ``demo`` synthetic dataset, runs
``search_spaces/demo.yaml`` on a local Ray instance, shows progress, and ends with a table
per subject (best configuration, baseline vs tuned r per ROI) and the command that opens
the MLflow UI. On a planted-teacher dataset (one with ``truth/``) the table adds, on the
planted voxels, frozen, tuned and teacher ridge with the share of the gap closed, and the
trials' LoRA layers in the search's order next to the planted ones.

    python -m sweeper.launch [--config FILE] [--data DIR] [--subjects S ...] [--num-samples N]
                             [--address ADDR] [--storage DIR] [--tracking-uri URI]
                             [--resume] [--dry-run]

A bad search-space file or a missing dataset is reported in one line, before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from core.cli import progress, quiet_libraries, run
from core.errors import ConfigError, DataError

from .folder import SweepFolder
from .space import SweepSpec, load_spec

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"


def resolve_data(data: str, root: Path = Path("data")) -> Path:
    """A dataset folder, or ``synthetic:<size>``: made under ``data/`` on first use, then reused."""
    if data.startswith("synthetic:"):
        from core.synthetic import SIZES, generate

        size = data.split(":", 1)[1]
        if size not in SIZES:
            raise ConfigError(f"data: unknown synthetic size {size!r} (known: {', '.join(SIZES)})")
        return generate(root / f"synthetic-{size}", SIZES[size], progress=progress).resolve()
    path = Path(data).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder not found (pass --data or set data: in the search space)")
    return path


def check_trials(spec: SweepSpec, data: Path, subjects: list[str], samples: int = 32) -> None:
    """Sample configurations of the space and check each against its model and the subjects' data.

    Catches impossible combinations (e.g. a LoRA layer above the read-out layer, an ROI a
    subject lacks, a layer a searched ``model`` does not have, a ``device`` the
    ``resources`` cannot give every worker) and studies that cannot run (probes of stories
    without a readable TextGrid, each read once) before any trial starts.
    ``model`` may be searched across families (``model: {choice: [...]}``); give each its
    own layers with ``when: {model: ...}``. Every checkpoint is read (config only) once.
    """
    import optuna

    from core.backbones import checkpoint_config
    from core.data.dataset import Dataset
    from core.studies import probes

    from .space import SearchSpace, train_config
    from .trial import device_problem

    dataset = Dataset(data)
    layers_of: dict[str, int] = {}

    def n_layers(model: str) -> int:  # a family we cannot tune fails here, not in a trial
        if model not in layers_of:
            try:
                layers_of[model] = checkpoint_config(model).num_hidden_layers
            except ConfigError as err:
                raise ConfigError(f"{spec.source}: model: {err}") from None
        return layers_of[model]

    n_layers(spec.fixed.get("model") or str(data / "pretrained"))
    info = {}
    for subject in subjects:
        dataset.validate(subject)
        info[subject] = (list(dataset.roi_masks(subject)), {s: dataset.n_trs(subject, s) for s in dataset.stories(subject)})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.seed))
    space = SearchSpace(spec)
    probed, probe_names = {}, {}  # stories whose transcripts the probes read, and the probes (ordered sets)
    for _ in range(samples if spec.params else 1):
        trial = study.ask()
        config = train_config(spec.fixed, space(trial)["settings"])
        for setting in ("transfer_to", "subjects"):
            unknown = [s for s in getattr(config, setting) if s not in dataset.subjects]
            if unknown:
                raise ConfigError(f"{spec.source}: {setting}: no subject {', '.join(unknown)} in {data} "
                                  f"(available: {', '.join(dataset.subjects)})")
        probes.check(config.probes, dataset)
        probe_names.update(dict.fromkeys(config.probes))
        for subject in subjects if config.probes else ():
            split = dataset.split(subject, test=config.test_stories, val=config.val_stories)
            probed.update(dict.fromkeys((*split.train, *split.test)))
        problem = device_problem(config.device, spec.workers, spec.gpus_per_worker)
        if problem:
            raise ConfigError(f"{spec.source}: {problem}")
        model = config.model or str(data / "pretrained")
        for subject, (rois, trs) in info.items():
            try:
                config.check_against(n_layers=n_layers(model), roi_names=rois, story_trs=trs)
                config.subject_weight_list(subject)
            except ConfigError as err:
                searched = f" with model {model}" if "model" in {p.setting for p in spec.params} else ""
                raise ConfigError(f"{spec.source}: a sampled trial is impossible for {subject}{searched}: {err}") from None
        study.tell(trial, 0.0)
    if probed:
        dataset.check_transcripts(list(probed), f"{spec.source}: probes ({', '.join(probe_names)})")


def print_plan(spec: SweepSpec, data: Path, subjects: list[str], storage: Path, tracking_uri: str) -> None:
    lines = [
        f"sweep {spec.name} ({spec.source})",
        f"  data       {data}",
        f"  subjects   {', '.join(subjects)}",
        f"  trials     {spec.trials} per subject, {spec.concurrency} at a time per subject",
        f"  objective  {', '.join(f'{m} ({d})' for m, d in zip(spec.objective.metrics, spec.objective.modes))}",
        f"  scheduler  {'ASHA ' + str(spec.scheduler) if spec.scheduler else 'none'}",
        f"  resources  {spec.workers} worker(s) x {spec.cpus_per_worker:g} CPU, {spec.gpus_per_worker:g} GPU per trial",
        f"  storage    {storage}",
        f"  tracking   {tracking_uri}",
        "  fixed      " + (", ".join(f"{k}={v}" for k, v in spec.fixed.items()) or "(defaults)"),
    ]
    for p in spec.params:
        cond = f" when {p.when}" if p.when else ""
        lines.append(f"  search     {p.name}: {p.kind} {p.values}{cond}")
    print("\n".join(lines))


def check_capacity(spec: SweepSpec, local: bool) -> None:
    """A trial that can never be placed would wait forever: say so (an error on a local instance)."""
    import ray

    need = {"CPU": spec.workers * spec.cpus_per_worker + (0.01 if spec.workers > 1 else 0),
            "GPU": spec.workers * spec.gpus_per_worker}
    have = ray.cluster_resources()
    short = {k: (v, have.get(k, 0)) for k, v in need.items() if v > have.get(k, 0) + 1e-9}
    if short:
        what = ", ".join(f"{v:g} {k} (the cluster has {h:g})" for k, (v, h) in short.items())
        if local:
            raise ConfigError(f"{spec.source}: resources: one trial needs {what}; lower workers or cpus/gpus_per_worker")
        progress(f"warning: one trial needs {what}; trials wait until the autoscaler adds nodes")


def tracking_target(args, storage: Path) -> tuple[str, str | None]:
    """Tracking URI (flag, then MLFLOW_TRACKING_URI, then SQLite in the sweep folder) and artifact location."""
    folder = SweepFolder(storage)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or folder.default_tracking_uri()
    return uri, folder.artifact_location(uri)


def build_tuner(spec: SweepSpec, data: Path, subjects: list[str], storage: Path, tracking_uri: str,
                artifact_location: str | None, resume: bool):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from .progress import ProgressPrinter
    from .search import SubjectScheduler, SubjectSearcher
    from .tracking import MLflowTracker
    from .trial import TrialPlan, run_trial

    plan = TrialPlan(data=str(data), fixed=spec.fixed, storage=str(storage), workers=spec.workers,
                     cpus_per_worker=spec.cpus_per_worker, gpus_per_worker=spec.gpus_per_worker)
    if spec.workers > 1:
        # The Train workers hold the resources; the trial's own process only waits for
        # them (Tune refuses an empty request, hence a sliver of a CPU).
        resources = {"CPU": 0.01}
    else:
        resources = {"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker}
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), resources)
    tune_dir = SweepFolder(storage).tune
    if resume:
        if not tune.Tuner.can_restore(str(tune_dir / spec.name)):
            raise ConfigError(f"{tune_dir / spec.name}: no sweep to resume here")
        return tune.Tuner.restore(str(tune_dir / spec.name), trainable, resume_unfinished=True, resume_errored=True)

    epochs = int(spec.fixed.get("epochs", 20))
    searcher = ConcurrencyLimiter(SubjectSearcher(spec, subjects), max_concurrent=spec.concurrency * len(subjects))
    single = not spec.objective.multi
    record = spec.as_dict()
    # The tracker ranks trials by the first objective; a Pareto sweep keeps both in "objectives".
    record["objectives"] = [{"metric": m, "mode": d} for m, d in zip(spec.objective.metrics, spec.objective.modes)]
    record["objective"] = record["objectives"][0]
    tracker = MLflowTracker(tracking_uri, spec.name, artifact_location, sweep=record, subjects=subjects,
                            trial_dir=lambda trial: plan.trial_dir(trial.config["subject"], trial.trial_id),
                            storage=str(storage), data=str(data))
    SweepFolder(storage).write_sweep_file(experiment=spec.name, tracking_uri=tracking_uri, artifact_location=artifact_location,
                     sweep=record, subjects=subjects)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            # One report per epoch (0..epochs) plus the final one.
            scheduler=SubjectScheduler(spec, subjects, epochs) if spec.scheduler else None,
            metric=spec.objective.metrics[0] if single else None,
            mode=spec.objective.modes[0] if single else None,
            num_samples=spec.trials * len(subjects),
            # A trial's process is kept for the next one: torch, transformers and the
            # trainer are imported once per slot, not once per trial (~8 s each on 2 CPUs).
            # Not with a scheduler: Tune cannot reset the process of a trial it stopped
            # early (seen with ASHA: the next trial was lost).
            reuse_actors=not spec.scheduler,
        ),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(tune_dir), verbose=0,
            callbacks=[tracker, ProgressPrinter(spec.trials * len(subjects))],
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )


def teacher_ridge(data: Path, subject: str, config: dict, progress=progress) -> float:
    """Test r on the planted voxels of ridge on the teacher's features: what full recovery gives.

    The truth of a planted-teacher dataset (``core.synth``), measured like the frozen
    baseline (:func:`core.encoding.baseline.run_baseline`, the teacher model in place of the
    pretrained one) at the trial's read-out layer, windows, delays and split. Cached in
    ``truth/teacher_ridge.json``, one entry per subject and setting.
    """
    from core.data.dataset import Dataset
    from core.encoding.baseline import run_baseline
    from core.encoding.features import WindowSpec

    settings = {"subject": subject, "layer": config["readout_layer"], "delays": config["delays"],
                "window": {k: config[k] for k in ("context", "chunk", "stride")},
                "test": config["test_stories"], "val": config["val_stories"]}
    key = json.dumps(settings, sort_keys=True)
    cache = data / "truth" / "teacher_ridge.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        progress(f"{subject}: ridge on the teacher's layer-{settings['layer']} features (the truth, once)")
        teacher = json.loads((data / "truth" / "truth.json").read_text())["teacher"]
        result, _ = run_baseline(Dataset(data), subject, settings["layer"], str(data / teacher),
                                 test=settings["test"], val=settings["val"], spec=WindowSpec(**settings["window"]),
                                 delays=settings["delays"], progress=lambda m: None)
        known[key] = result.summary["roi_mean_r"]["planted"]
        cache.write_text(json.dumps(known, indent=1))
    return known[key]


def summarize(results, spec: SweepSpec, subjects: list[str], data: Path | None = None) -> str:
    """Per subject: the best trial's searched settings, and baseline vs tuned r per ROI.

    On a planted-teacher dataset (``data`` with ``truth/``) also, on the planted voxels:
    frozen ridge (the baseline), tuned ridge (the best trial's test r), teacher ridge
    (:func:`teacher_ridge`), the share of the gap closed, and the LoRA layers the search
    ranked first next to the planted ones. With a read-out layer deeper than the teacher's
    (a bigger backbone on the tiny dataset) there is no teacher ridge to compare: the line
    says so. A trial whose studies failed after training (its results kept) gets a line
    naming them and its error.
    """
    from .space import train_config

    metric, mode = spec.objective.metrics[0], spec.objective.modes[0]
    truth = json.loads((data / "truth" / "truth.json").read_text()) if data and (data / "truth" / "truth.json").exists() else None
    lines = []
    for subject in subjects:
        done = [r for r in results if r.config and r.config.get("subject") == subject and r.metrics
                and r.metrics.get("done_training") == 1]
        if not done:
            lines.append(f"{subject}: no trial finished")
            continue
        ranked = sorted(done, key=lambda r: r.metrics.get(metric, float("-inf")), reverse=mode == "max")
        best = ranked[0]
        m = best.metrics
        settings = ", ".join(f"{k}={v}" for k, v in best.config["settings"].items())
        lines.append(f"{subject}: best trial {m.get('trial_id', '')} ({metric} {m[metric]:.3f}; {len(done)} finished): {settings}")
        rois = ["all"] + sorted(k.split(".", 1)[1] for k in m if k.startswith("test_r.") )
        config = train_config(spec.fixed, best.config["settings"])
        cotrained = config.training_subjects(subject)[1:]  # trained on the same backbone (subjects:)
        rows = [("baseline", "baseline_r"), ("tuned", "test_r")]
        rows += [(f"{other} {label}", f"cotrained_{prefix}.{other}") for other in cotrained
                 for label, prefix in (("baseline", "baseline_r"), ("tuned", "test_r"))]
        width = max(len(label) for label, _ in rows) + 2
        lines.append(f"  {'':<{width}}" + "".join(f"{r:>9}" for r in rois))
        for label, prefix in rows:
            values = [m.get(prefix if r == "all" else f"{prefix}.{r}", float("nan")) for r in rois]
            lines.append(f"  {label:<{width}}" + "".join(f"{v:>9.3f}" for v in values))
        if truth is not None and "test_r.planted" in m:
            teacher_dir = data / truth["teacher"]
            teacher_layers = json.loads((teacher_dir / "config.json").read_text())["num_hidden_layers"]
            for who, base, test in [(subject, "baseline_r", "test_r"),
                                    *((o, f"cotrained_baseline_r.{o}", f"cotrained_test_r.{o}") for o in cotrained)]:
                frozen, tuned = m.get(f"{base}.planted", float("nan")), m.get(f"{test}.planted", float("nan"))
                label = "planted voxels" if who == subject else f"{who} (trained with {subject}) planted voxels"
                line = f"  {label}: frozen ridge {frozen:.3f}, tuned ridge {tuned:.3f}, "
                if config.readout_layer > teacher_layers:
                    # e.g. a 12-layer backbone on the tiny dataset: the teacher has no such layer to compare with
                    lines.append(line + f"no teacher ridge (read-out layer {config.readout_layer}; the teacher, "
                                 f"{teacher_dir}, has {teacher_layers} layers)")
                    continue
                teacher = teacher_ridge(data, who, config.to_dict())
                lines.append(line + f"teacher ridge {teacher:.3f} (the truth): "
                             f"{(tuned - frozen) / (teacher - frozen):.0%} of the gap closed")
            order = ", ".join(f"{train_config(spec.fixed, r.config['settings']).lora_layer_list()} "
                              f"{r.metrics.get(metric, float('nan')):.3f}" for r in ranked)
            lines.append(f"  LoRA layers ranked by {metric}: {order}; planted: {truth['spec']['planted_layers']}")
        for r in done:
            if r.metrics.get("failed_studies"):
                lines.append(f"  trial {r.metrics.get('trial_id', '')}: {r.metrics['failed_studies']} failed after "
                             f"training (its results are kept): {_error_line(r.error)}")
    return "\n".join(lines)


def _error_line(error) -> str:
    """The error's last line: its type and message, after any traceback."""
    text = str(error or "").strip().splitlines()
    return text[-1][:300] if text else "no error recorded"


def mlflow_ui_hint(tracking_uri: str, experiment: str) -> str:
    """How to open the sweep's MLflow page: a command that works without an activated venv, then the link."""
    from mlflow.tracking import MlflowClient

    from .tracking import landing_url

    try:
        found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - MLflow down (sweeper.sync records the runs later): the hint still helps
        found = None
    if tracking_uri.startswith("sqlite:"):
        ui_url = "http://127.0.0.1:5000"
        command = f"{sys.executable} -m mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    else:
        ui_url, command = tracking_uri, None
    page = landing_url(ui_url, found.experiment_id) if found else f"{ui_url} (experiment {experiment})"
    return f"{command}\n  then open {page}" if command else f"open {page}"


def main(argv=None) -> int:
    shipped = sorted(path.stem for path in DEFAULT_CONFIG.parent.glob("*.yaml"))
    parser = argparse.ArgumentParser(
        prog="python -m sweeper.launch", description=__doc__.splitlines()[0],
        epilog=f"shipped search spaces (search_spaces/<name>.yaml): {', '.join(shipped)}",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="search-space file, e.g. search_spaces/paper.yaml (default: search_spaces/demo.yaml)")
    parser.add_argument("--data", help="dataset folder (overrides the file's data:)")
    parser.add_argument("--subjects", nargs="+", help="subjects to sweep (overrides the file's subjects:)")
    parser.add_argument("--num-samples", type=int, help="trials per subject (overrides budget.trials)")
    parser.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: start Ray here")
    parser.add_argument("--storage", help="sweep folder: trials, checkpoints, Tune state (default: runs/<name>)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or SQLite in the sweep folder)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --storage")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    args = parser.parse_args(argv)

    spec = load_spec(args.config)
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1 (got {args.num_samples})")
        spec = replace(spec, trials=args.num_samples)
    data_started = time.time()
    data = resolve_data(args.data or spec.data)
    data_s = time.time() - data_started
    from core.data.dataset import Dataset

    available = Dataset(data).subjects
    subjects = args.subjects or (available if spec.subjects == "all" else spec.subjects)
    missing = [s for s in subjects if s not in available]
    if missing:
        raise DataError(f"{data}: no subject {', '.join(missing)} (available: {', '.join(available)})")
    storage = Path(args.storage or Path("runs") / spec.name).resolve()
    tracking_uri, artifact_location = tracking_target(args, storage)
    check_trials(spec, data, subjects)
    print_plan(spec, data, subjects, storage, tracking_uri)
    if args.dry_run:
        return 0

    import ray

    storage.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        # The dashboard stays on (bound to loopback): with Ray 2.60 it is what releases a
        # stopped trial's Train placement group (BRIEF section 5).
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        check_capacity(spec, local=not args.address)
        tuner = build_tuner(spec, data, subjects, storage, tracking_uri, artifact_location, args.resume)
        results = tuner.fit()
    finally:
        ray.shutdown()
    print()
    print(summarize(results, spec, subjects, data))
    from .reports.publish import write_report

    write_report(tracking_uri, spec.name, SweepFolder(storage).report)
    print(f"\nsweep finished in {time.time() - started:.0f} s (Ray start, trials, summary, report; "
          f"making or finding the data took {data_s:.0f} s before it). MLflow UI: {mlflow_ui_hint(tracking_uri, spec.name)}")
    errors = results.errors
    failed_studies = any(r.metrics and r.metrics.get("failed_studies") for r in results)
    return 1 if failed_studies or (errors and len(errors) == len(results)) else 0


if __name__ == "__main__":
    quiet_libraries()
    sys.exit(run(main))
