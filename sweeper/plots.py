"""Figures of a trial's test results: mean r per ROI, and the per-voxel r distribution.

Presentation only: every number comes from the caller. Figures are drawn on a bare
:class:`matplotlib.figure.Figure` (Agg), never through pyplot, so that a sweep driver or a
Ray worker never opens a window nor keeps figures alive.

Example
-------
>>> roi_bar_chart("roi_r.png", {"all": 0.21, "AC": 0.35}, {"all": 0.24, "AC": 0.33},
...               "UTS01: ridge on frozen vs LoRA-tuned WavLM")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.figure import Figure

BASELINE_LABEL = "baseline (ridge on frozen WavLM)"
TUNED_LABEL = "tuned (LoRA WavLM)"
BASELINE_COLOR = "#9a9a9a"
TUNED_COLOR = "#1f6fb4"
WHOLE_CORTEX = "all"


def roi_bar_chart(path: str | os.PathLike, baseline: dict[str, float], tuned: dict[str, float], title: str) -> None:
    """Write a PNG of grouped bars: mean test r per ROI, baseline beside tuned.

    Parameters
    ----------
    path : where the PNG goes.
    baseline, tuned : mean test r per ROI name; ``"all"`` (whole cortex) is drawn first,
        then the other ROIs in the order they first appear. An ROI missing from one of the
        two, or NaN, gets no bar and the label "n/a".
    title : the figure title.
    """
    rois = list(dict.fromkeys([*baseline, *tuned]))
    rois.sort(key=lambda roi: roi != WHOLE_CORTEX)  # stable: keeps the others' order
    positions = np.arange(len(rois))
    width = 0.38

    figure = Figure(figsize=(max(6.5, 1.3 * len(rois) + 1.5), 4.8), layout="constrained")
    axes = figure.add_subplot()
    for offset, values, label, color in (
        (-width / 2, baseline, BASELINE_LABEL, BASELINE_COLOR),
        (width / 2, tuned, TUNED_LABEL, TUNED_COLOR),
    ):
        heights = np.array([values.get(roi, math.nan) for roi in rois], dtype=float)
        bars = axes.bar(positions + offset, np.nan_to_num(heights), width, label=label, color=color)
        axes.bar_label(bars, labels=[f"{h:.3f}" if np.isfinite(h) else "n/a" for h in heights], padding=2, fontsize=9)

    axes.set_xticks(positions, ["all\n(whole cortex)" if roi == WHOLE_CORTEX else roi for roi in rois])
    axes.set_xlabel("region of interest")
    axes.set_ylabel("mean test r")
    axes.set_title(title)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.margins(y=0.15)  # room for the value labels
    figure.legend(loc="outside lower center", ncols=2, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.savefig(path, dpi=120)


def voxel_r_histogram(path: str | os.PathLike, baseline_r: np.ndarray, tuned_r: np.ndarray, title: str) -> None:
    """Write a PNG of the per-voxel test r of baseline and tuned models, overlaid.

    Parameters
    ----------
    path : where the PNG goes.
    baseline_r, tuned_r : arrays of shape (n_voxels,), per-voxel test r; NaN voxels are left
        out (the legend gives how many voxels remain and their mean).
    title : the figure title.
    """
    baseline_r = _finite(baseline_r)
    tuned_r = _finite(tuned_r)
    both = np.concatenate([baseline_r, tuned_r])
    bins = np.histogram_bin_edges(both, bins=60) if both.size else np.linspace(-1.0, 1.0, 61)

    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    highest = 0.0
    for values, label, color in ((baseline_r, BASELINE_LABEL, BASELINE_COLOR), (tuned_r, TUNED_LABEL, TUNED_COLOR)):
        counts, _, _ = axes.hist(values, bins=bins, color=color, alpha=0.55)
        axes.hist(values, bins=bins, color=color, histtype="step", linewidth=1.2)
        highest = max(highest, counts.max(initial=0.0))
        if values.size:
            # The mean's dashed line carries the legend entry; it stops below the legend.
            axes.axvline(values.mean(), ymax=0.75, color=color, linestyle="--", linewidth=1.5,
                         label=f"{label}: mean r = {values.mean():.3f} ({values.size:,} voxels)")
        else:
            axes.plot([], [], color=color, label=f"{label}: no finite values")

    axes.set_xlabel("test r per voxel")
    axes.set_ylabel("number of voxels")
    axes.set_title(title)
    axes.set_ylim(0.0, 1.35 * max(highest, 1.0))  # the legend sits above the highest bar
    axes.legend(loc="upper left", fontsize=9, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.savefig(path, dpi=120)


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]
