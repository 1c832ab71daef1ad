"""Leaderboard plots (PNG, matplotlib's Agg backend so they render on headless machines):
(a) domain perplexity vs sparsity per method, (b) general vs domain perplexity per method (the
generality/specificity trade-off), drawn for the methods and, apart, for the ablation variants,
(c) Jaccard similarity of kept weights between cells, (d) OWL's outlier ratio and sparsity per
layer. Where records carry 95 % intervals they are
drawn as error bars (the dense reference: a band). Legends sit outside the axes, where they
cannot hide points."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatter  # noqa: E402

from bench.results.mask_files import similarity_matrix  # noqa: E402
from bench.results.records import finite  # noqa: E402
from core.files import atomic_open  # noqa: E402


@dataclass(frozen=True)
class Entry:
    """What a plot needs to know about one table row (a cell, or the mean over its seeds)."""

    series: str  # the row label in the leaderboard: method, plus calib / variant where needed
    domain: str
    sparsity: float
    pattern: str
    metrics: dict[str, float]
    reference: bool = False  # the dense model
    variant: str = ""  # set for an ablation: what it changes from its method's default
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95 %, where recorded

    @property
    def method_series(self) -> str:
        """The series of the method's default row (the label without the variant)."""
        return self.series.removesuffix(f" ({self.variant})") if self.variant else self.series


def split_series(entries: Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(methods, ablations): the dense reference and the default row of each method; and the
    ablation variants beside their method's default at the same sparsity and pattern, without the
    dense model, whose distance would squeeze the variants into one spot. Ablations is empty when
    no entry is a variant, so that no figure is drawn for it."""
    references = [e for e in entries if e.reference]
    methods = [e for e in entries if not e.reference and not e.variant]
    variants = [e for e in entries if not e.reference and e.variant]
    if not variants:
        return references + methods, []
    varied = {(e.method_series, e.sparsity, e.pattern) for e in variants}
    defaults = [e for e in methods if (e.series, e.sparsity, e.pattern) in varied]
    return references + methods, defaults + variants


def ppl_metrics(entries: Sequence[Entry], prefix: str) -> list[str]:
    """Perplexity metric names under a prefix ("legal/", "general/") present in any entry."""
    return sorted({m for e in entries for m in e.metrics if m.startswith(prefix) and m.endswith("/ppl")})


def _task(metric: str) -> str:
    return metric.split("/")[1]


def _series(entries: Sequence[Entry]) -> list[tuple[str, list[Entry], Any]]:
    """(series, its entries, its colour) for the pruned cells, by name; distinct colours for up
    to 20 series."""
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if not entry.reference:
            grouped[entry.series].append(entry)
    palette = plt.get_cmap("tab10" if len(grouped) <= 10 else "tab20")
    return [(name, grouped[name], palette(i % palette.N)) for i, name in enumerate(sorted(grouped))]


def _errors(entries: Sequence[Entry], metric: str) -> list[list[float]]:
    """Error bar lengths below and above each entry's value (zero without an interval)."""
    ends = [e.intervals.get(metric, (e.metrics[metric], e.metrics[metric])) for e in entries]
    return [[e.metrics[metric] - low for e, (low, _) in zip(entries, ends, strict=True)],
            [high - e.metrics[metric] for e, (_, high) in zip(entries, ends, strict=True)]]


def _log_grid(ax: plt.Axes, axes: str) -> None:
    """Log axes labelled 20, 30, 60 rather than 2x10^1 (perplexities are read, not estimated),
    over a grid."""
    ax.grid(alpha=0.3, which="both")
    for axis in (ax.xaxis if "x" in axes else None, ax.yaxis if "y" in axes else None):
        if axis is not None:
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _legend_outside(axes: Sequence[plt.Axes]) -> None:
    """One legend for all panels, right of the last: a series is named once, no point is hidden."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        axes[-1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        fontsize=8, frameon=False)


def _save(fig: plt.Figure, path: Path) -> Path:
    """Written atomically, like every file the project produces; cropped to what is drawn,
    the legend outside the axes included."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def ppl_vs_sparsity(entries: Sequence[Entry], domain: str, title: str, path: Path) -> Path | None:
    """(a) One panel per domain perplexity metric: a line per method over the unstructured
    sparsities, N:M cells as separate markers, the dense model as a dashed line."""
    metrics = ppl_metrics(entries, f"{domain}/")
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for series, group, color in _series(entries):
            line = sorted((e for e in group if e.pattern == "unstructured" and finite(e.metrics.get(metric))),
                          key=lambda e: e.sparsity)
            if line:
                ax.errorbar([e.sparsity for e in line], [e.metrics[metric] for e in line],
                            yerr=_errors(line, metric), marker="o", color=color, label=series, capsize=3)
            for e in group:
                if e.pattern != "unstructured" and finite(e.metrics.get(metric)):
                    ax.errorbar(e.sparsity, e.metrics[metric], yerr=_errors([e], metric), fmt="none",
                                ecolor=color, capsize=3)
                    ax.scatter(e.sparsity, e.metrics[metric], marker="s", color=color, edgecolors="black",
                               label=f"{series} {e.pattern}", zorder=3)
        for e in entries:
            if e.reference and finite(e.metrics.get(metric)):
                ax.axhline(e.metrics[metric], color="grey", linestyle="--", label=e.series)
                if metric in e.intervals:
                    ax.axhspan(*e.intervals[metric], color="grey", alpha=0.15)
        ax.set(xlabel="sparsity", ylabel=f"{_task(metric)} perplexity (log)", yscale="log",
               title=f"{domain}: {_task(metric)}")
        _log_grid(ax, "y")
    _legend_outside(axes[0])
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _trade_off_panel(ax: plt.Axes, entries: Sequence[Entry], x_metric: str, y_metric: str,
                     annotate: bool) -> None:
    """One general metric (x) against the domain metric (y): a method's unstructured cells
    joined in order of sparsity, N:M cells as squares (each labelled with its sparsity or
    pattern when `annotate`), dense as a star."""
    def point(e: Entry) -> tuple[float, float] | None:
        xv, yv = e.metrics.get(x_metric), e.metrics.get(y_metric)
        return (xv, yv) if finite(xv) and finite(yv) else None

    for series, group, color in _series(entries):
        cells = sorted((e for e in group if point(e)),
                       key=lambda e: (e.pattern != "unstructured", e.sparsity))
        line = [point(e) for e in cells if e.pattern == "unstructured"]
        if line:
            ax.plot(*zip(*line, strict=True), marker="o", color=color, label=series)
        for e in cells:
            if x_metric in e.intervals or y_metric in e.intervals:
                ax.errorbar(*point(e), xerr=_errors([e], x_metric), yerr=_errors([e], y_metric), fmt="none",
                            ecolor=color, alpha=0.6, capsize=2)
            marker = "o" if e.pattern == "unstructured" else "s"
            ax.scatter(*point(e), marker=marker, color=color, edgecolors="black", zorder=3,
                       label=None if line else series)
            if annotate:
                ax.annotate(f"{e.sparsity:g}" if e.pattern == "unstructured" else e.pattern, point(e),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    for e in entries:
        if e.reference and point(e):
            ax.scatter(*point(e), marker="*", s=150, color="black", label=e.series, zorder=4)


def general_vs_domain(entries: Sequence[Entry], domain: str, title: str, path: Path) -> Path | None:
    """(b) Domain perplexity (y) against each general perplexity (x), one panel per general
    metric. Lower-left is better on both. Cells of one sparsity and pattern (e.g. ablations)
    are not labelled one by one: the title names the setting."""
    domain_metrics = ppl_metrics(entries, f"{domain}/")
    general = ppl_metrics(entries, "general/")
    if not domain_metrics or not general:
        return None
    y_metric = domain_metrics[0]
    settings = sorted({(e.sparsity, e.pattern) for e in entries if not e.reference})
    if len(settings) == 1:
        title = f"{title} · sparsity {settings[0][0]:g} · {settings[0][1]}"
    fig, axes = plt.subplots(1, len(general), figsize=(6 * len(general), 4.5), squeeze=False)
    for ax, x_metric in zip(axes[0], general, strict=True):
        _trade_off_panel(ax, entries, x_metric, y_metric, annotate=len(settings) > 1)
        ax.set(xscale="log", yscale="log", xlabel=f"general: {_task(x_metric)} perplexity (log)",
               ylabel=f"{domain}: {_task(y_metric)} perplexity (log)")
        _log_grid(ax, "xy")
    _legend_outside(axes[0])
    fig.suptitle(f"{title}\ngenerality (x) vs specificity (y); lower-left is better", fontsize=10)
    return _save(fig, path)


def mask_similarity(labels: Sequence[str], masks: Sequence[Path], title: str, path: Path) -> Path | None:
    """(c) Heatmap of the pairwise Jaccard similarity of kept weights (needs two or more masks)."""
    if len(masks) < 2:
        return None
    matrix = similarity_matrix(masks)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 0.8 + 0.6 * n))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if matrix[i, j] > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="Jaccard of kept weights")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


@dataclass(frozen=True)
class LayerAllocation:
    """One OWL allocation: the outlier ratio and the sparsity of every decoder layer."""

    label: str  # what the line stands for: target sparsity and calibration source
    ratios: tuple[float, ...]
    sparsities: tuple[float, ...]


def layer_sparsity(allocations: Sequence[LayerAllocation], title: str, path: Path) -> Path | None:
    """(d) OWL: each layer's outlier ratio (left) and the sparsity it was given (right), a line per
    target sparsity and calibration source (methods that share both share the allocation)."""
    if not allocations:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for a in allocations:
        layers = range(len(a.ratios))
        left.plot(layers, [100 * r for r in a.ratios], marker=".", label=a.label)
        right.plot(layers, a.sparsities, marker=".", label=a.label)
    left.set(xlabel="decoder layer", ylabel="outlier ratio (%)", title="Wanda-score outliers per layer")
    right.set(xlabel="decoder layer", ylabel="sparsity", title="OWL sparsity per layer")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    _legend_outside([left, right])
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
