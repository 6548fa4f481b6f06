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

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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


def change_matrix(changes, values, row_labels: list[str], col_labels: list[str], *, title: str, xlabel: str,
                  ylabel: str, change_label: str) -> Figure:
    """A matrix of changes from a reference, coloured by the change, each cell labelled with value and change.

    Parameters
    ----------
    changes, values : nested lists of shape (n_rows, n_cols): the change from the
        reference (colour) and the value itself (label); NaN cells are grey, "n/a".
    row_labels, col_labels : what each row and column is (e.g. "AC" trained on, "AC" evaluated on).
    title, xlabel, ylabel : the figure's texts.
    change_label : what the colour means (the colour bar's label).
    """
    changes = np.array(changes, dtype=float).reshape(len(row_labels), len(col_labels))
    values = np.array(values, dtype=float).reshape(changes.shape)
    finite = np.abs(changes[np.isfinite(changes)])
    limit = max(float(finite.max()) if finite.size else 0.0, 0.01)

    figure = Figure(figsize=(max(6.0, 1.5 * len(col_labels) + 3.0), max(3.0, 0.75 * len(row_labels) + 2.2)),
                    layout="constrained")
    axes = figure.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
    image = axes.imshow(np.ma.masked_invalid(changes), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    for i in range(changes.shape[0]):
        for j in range(changes.shape[1]):
            text = "n/a" if not np.isfinite(values[i, j]) else f"{values[i, j]:.3f}\n({changes[i, j]:+.3f})"
            dark = np.isfinite(changes[i, j]) and abs(changes[i, j]) > 0.6 * limit
            axes.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    axes.set_xticks(range(len(col_labels)), col_labels)
    axes.set_yticks(range(len(row_labels)), row_labels)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label=change_label)
    return figure


def seed_spread(test_r: dict[str, list[float]], best_epoch: dict[str, list[float]], *, baseline: float,
                title: str) -> Figure:
    """Two panels: test r of every seed per configuration (points, mean and sd) with the frozen
    baseline as a dashed line; and the best epoch of every seed.

    Parameters
    ----------
    test_r, best_epoch : configuration label -> one value per seed.
    baseline : the frozen baseline's mean test r.
    title : the figure title.
    """
    labels = list(test_r)
    figure = Figure(figsize=(max(7.5, 1.8 * len(labels) + 3.0), 4.6), layout="constrained")
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    jitter = np.random.default_rng(0)
    for panel, data, ylabel in ((left, test_r, "test r (ridge on tuned features)"), (right, best_epoch, "best epoch")):
        for x, label in enumerate(labels):
            values = np.array([v for v in data[label] if np.isfinite(v)], dtype=float)
            if not values.size:
                continue
            panel.scatter(x + jitter.uniform(-0.12, 0.12, values.size), values, color=TUNED_COLOR, alpha=0.7, s=22,
                          zorder=3)
            spread = values.std(ddof=1) if values.size > 1 else 0.0
            panel.errorbar(x + 0.25, values.mean(), yerr=spread, fmt="o", color="black", capsize=4, zorder=4)
        panel.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        if panel is right:
            panel.yaxis.set_major_locator(MaxNLocator(integer=True))
        panel.set_ylabel(ylabel)
        panel.spines[["top", "right"]].set_visible(False)
    if np.isfinite(baseline):
        left.axhline(baseline, color=BASELINE_COLOR, linestyle="--", linewidth=1.5,
                     label=f"{BASELINE_LABEL}: {baseline:.3f}")
    left.plot([], [], "o", color="black", label="mean ± sd over seeds")
    left.plot([], [], "o", color=TUNED_COLOR, alpha=0.7, label="one seed")
    figure.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    left.set_xlabel("configuration")
    right.set_xlabel("configuration")
    figure.suptitle(title)
    return figure


def probe_lines(scores: dict[str, dict[int, tuple[float, float]]], *, title: str) -> Figure:
    """Held-out probe r against layer, one colour per target family: pretrained dashed, tuned solid.

    Parameters
    ----------
    scores : family -> layer -> (pretrained r, tuned r).
    title : the figure title.
    """
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axes = figure.add_subplot()
    colors = matplotlib.colormaps["tab10"].colors
    layers_seen: set[int] = set()
    for (family, layers), color in zip(scores.items(), colors):
        xs = list(layers)
        layers_seen.update(xs)
        axes.plot(xs, [layers[x][0] for x in xs], linestyle="--", marker="o", color=color, alpha=0.7,
                  label=f"{family}: pretrained")
        axes.plot(xs, [layers[x][1] for x in xs], linestyle="-", marker="s", color=color, label=f"{family}: tuned")
    axes.set_xticks(sorted(layers_seen))
    axes.set_xlabel("layer probed")
    axes.set_ylabel("held-out r (mean over target dimensions)")
    axes.set_title(title)
    axes.legend(loc="best", fontsize=8, frameon=False, ncols=2)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def data_efficiency_lines(curves: dict[str, dict[str, dict[float, tuple[float, float]]]], *, title: str) -> Figure:
    """Test r of a new subject's readout against the share of its training stories, one panel per new subject.

    Parameters
    ----------
    curves : new subject -> backbone label -> percent of its stories -> (pretrained r, tuned r).
        The pretrained line (grey, dashed) is the same for every backbone; each tuned backbone
        is a solid line.
    title : the figure title.
    """
    figure = Figure(figsize=(4.2 * len(curves) + 1.0, 4.4), layout="constrained")
    colors = matplotlib.colormaps["tab10"].colors
    for i, (target, backbones) in enumerate(curves.items()):
        axes = figure.add_subplot(1, len(curves), i + 1)
        pretrained = {}
        for (label, curve), color in zip(backbones.items(), colors):
            xs = list(curve)
            pretrained.update({x: curve[x][0] for x in xs})
            axes.plot(xs, [curve[x][1] for x in xs], linestyle="-", marker="s", color=color, label=f"tuned on {label}")
        xs = sorted(pretrained)
        axes.plot(xs, [pretrained[x] for x in xs], linestyle="--", marker="o", color="0.5", label="pretrained")
        axes.set_xticks(xs)
        axes.set_xticklabels([f"{x:g}%" for x in xs])
        axes.set_xlabel(f"share of {target}'s training stories")
        axes.set_ylabel("test r")
        axes.set_title(f"readout for {target}")
        axes.legend(loc="lower right", fontsize=8, frameon=False)
        axes.spines[["top", "right"]].set_visible(False)
    figure.suptitle(title)
    return figure
