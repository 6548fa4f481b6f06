"""``python -m sweeper.report``: a sweep's study report rebuilt from the MLflow store alone.

A sweep's file names its report (``report:`` in the search space; see
:mod:`sweeper.space`). Each report is built only from what the sweep recorded in MLflow:
the parent runs' ``search_space.yaml`` and the child runs' params, metrics and tags. It
is a markdown file with tables and PNG figures, logged under ``report/`` in every parent
run of the sweep (one per subject) and, with ``--out``, written to a folder.
``python -m sweeper.launch`` builds it at the end of a sweep; this command rebuilds it,
e.g. after ``python -m sweeper.sync`` or on another machine.

Reports:

- ``sweep`` (every sweep): per subject, each finished trial's searched settings, best
  validation r, test r and frozen baseline r; the best trial marked.
- ``roi``: ROI-targeted tuning. Per subject a trained-on x evaluated-on matrix: mean
  test r of each loss weighting on each ROI, its change from the frozen baseline, and its
  fraction of the noise ceiling.
- ``stability``: configurations repeated over seeds (LoRA, full fine-tuning as
  ``lora_rank: 0``, the readout-only control ``lr: 0``): mean and spread of test r and of
  the best epoch next to the frozen baseline.
- ``transfer``: cross-subject transfer (trials run with ``transfer_to``). Per ordered pair
  (A, B): B's ridge readout on A's best tuned backbone vs B's own best tuned model vs the
  pretrained model.
- ``probes``: word-level linear probes (trials run with ``probes``): per target family and
  layer, held-out r from the pretrained and from the best tuned model.

    python -m sweeper.report --experiment roi [--tracking-uri URI] [--out DIR] [--report KIND]

The reports are built by :mod:`sweeper.reports` (one module per report).

Example
-------
>>> from sweeper.reports.publish import build, publish
>>> from sweeper.reports.store import load_sweep
>>> sweep = load_sweep(MlflowClient("sqlite:///runs/roi/mlflow.db"), "roi")  # doctest: +SKIP
>>> report = build(sweep)  # doctest: +SKIP
>>> publish(MlflowClient("sqlite:///runs/roi/mlflow.db"), sweep, report, out=Path("runs/roi/report"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.cli import quiet_libraries, run

from .reports.publish import report_sweep
from .space import REPORTS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.report", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the sweep's MLflow experiment (its name:)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/<experiment>/mlflow.db)")
    parser.add_argument("--out", help="also write the report here (report.md and PNGs)")
    parser.add_argument("--report", choices=REPORTS,
                        help="another study's report of the same runs (default: the sweep file's report:); "
                             "logged under report-<kind>/")
    args = parser.parse_args(argv)
    uri = (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{Path('runs', args.experiment, 'mlflow.db').resolve()}")
    sweep, folder = report_sweep(uri, args.experiment, Path(args.out) if args.out else None, args.report)
    print(f"{args.experiment}: {args.report or sweep.kind} report of {len(sweep.trials)} trials ({', '.join(sweep.parents)}) "
          f"logged under report/ in each parent run; written to {folder / 'report.md'}")
    return 0


if __name__ == "__main__":
    quiet_libraries()
    sys.exit(run(main))
