"""The table every sweep's report ends with: each trial's searched settings and scores, per subject."""

from __future__ import annotations

import math

from .store import Sweep
from .tables import fmt, searched_params, table_row


def sweep_table(sweep: Sweep) -> str:
    searched = searched_params(sweep)
    metric = sweep.definition.get("objective", {}).get("metric", "best_val_r")
    header = ["trial", *searched, metric, "test r", "frozen baseline r", "status"]
    lines = ["## Trials", ""]
    for subject in sweep.parents:
        lines += [f"### {subject}", "", table_row(header), table_row(["---"] * len(header))]
        for trial in (trial for trial in sweep.trials if trial.subject == subject):
            lines.append(table_row([f"**{trial.trial_id}** (best)" if trial.best else trial.trial_id,
                               *(trial.params.get(p, "") for p in searched), fmt(trial.metrics.get(metric, math.nan)),
                               fmt(trial.value("test_r")), fmt(trial.value("baseline_r")),
                               "stopped early" if trial.stopped_early else trial.status.lower()]))
        lines.append("")
    return "\n".join(lines)
