"""The ``stability`` report: configurations repeated over seeds, their mean and spread of test r."""

from __future__ import annotations

import math

from .. import plots
from .store import Report, Sweep, TrialRun
from .tables import finite_mean, finite_sd, fmt, per_subject, searched_params


def method_label(params: dict[str, str], varying: list[str]) -> str:
    """``LoRA rank 4`` / ``full fine-tuning`` / ``readout only (lr 0)``, plus the other varying settings."""
    if float(params.get("lr", "nan")) == 0:
        method = "readout only (lr 0)"
    elif params.get("lora_rank") == "0":
        method = "full fine-tuning"
    else:
        method = f"LoRA rank {params.get('lora_rank')}"
    rest = [f"{name}={params.get(name)}" for name in varying if name not in ("seed", "lora_rank", "lr")]
    return method + (f" ({', '.join(rest)})" if rest else "")


def stability_report(sweep: Sweep) -> Report:
    varying = searched_params(sweep)
    return per_subject(
        sweep, "Stability over seeds",
        "Each configuration is run with several seeds. Test r: ridge refit on the tuned features of the "
        "best epoch; frozen baseline: ridge on the pretrained model (the same for every seed up to the "
        "ridge's cross-validation split).", lambda subject, trials: _stability_section(subject, trials, varying))


def _stability_section(subject: str, trials: list[TrialRun], varying: list[str]) -> tuple[list[str], dict]:
    groups: dict[str, list[TrialRun]] = {}
    for trial in trials:
        groups.setdefault(method_label(trial.params, varying), []).append(trial)
    baseline = [trial.value("baseline_r") for trial in trials]
    lines = [f"### {subject}", "",
             "| configuration | seeds | test r mean | sd | min | max | gain over frozen | best epoch mean | sd |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| frozen baseline | {len(baseline)} | {fmt(finite_mean(baseline))} | {fmt(finite_sd(baseline))} | "
             f"{fmt(min(baseline))} | {fmt(max(baseline))} | | | |"]
    for label, group in groups.items():
        r = [trial.value("test_r") for trial in group]
        gain = [trial.value("test_r") - trial.value("baseline_r") for trial in group]
        epochs = [trial.metrics.get("best_epoch", math.nan) for trial in group]
        lines.append(f"| {label} | {len(group)} | {fmt(finite_mean(r))} | {fmt(finite_sd(r))} | {fmt(min(r))} | {fmt(max(r))} | "
                     f"{fmt(finite_mean(gain), sign=True)} | {fmt(finite_mean(epochs), 1)} | {fmt(finite_sd(epochs), 1)} |")
    name = f"stability_{subject}.png"
    figure = plots.seed_spread(
        {label: [trial.value("test_r") for trial in group] for label, group in groups.items()},
        {label: [trial.metrics.get("best_epoch", math.nan) for trial in group] for label, group in groups.items()},
        baseline=finite_mean(baseline), title=f"{subject}: test r and best epoch over seeds")
    return lines + ["", f"![{subject}]({name})", ""], {name: figure}
