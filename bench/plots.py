"""Leaderboard plots (PNG, matplotlib's Agg backend so they render on headless machines):
(a) domain perplexity vs sparsity per method, (b) general vs domain perplexity per method (the
generality/specificity trade-off), (c) Jaccard similarity of kept weights between cells."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatter  # noqa: E402

from bench.masks import similarity_matrix  # noqa: E402


@dataclass(frozen=True)
class Entry:
    """What a plot needs to know about one finished cell."""

    series: str  # the row label in the leaderboard: method, plus calib / variant where needed
    domain: str
    sparsity: float
    pattern: str
    metrics: dict[str, float]
    reference: bool = False  # the dense model
    masks: Path | None = None


def ppl_metrics(entries: Sequence[Entry], prefix: str) -> list[str]:
    """Perplexity metric names under a prefix ("legal/", "general/") present in any entry."""
    return sorted({m for e in entries for m in e.metrics if m.startswith(prefix) and m.endswith("/ppl")})


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def _task(metric: str) -> str:
    return metric.split("/")[1]


def _series(entries: Sequence[Entry]) -> dict[str, list[Entry]]:
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if not entry.reference:
            grouped[entry.series].append(entry)
    return grouped


def _plain_log_ticks(ax: plt.Axes, axes: str) -> None:
    """Log axes labelled 20, 30, 60 rather than 2x10^1: perplexities are read, not estimated."""
    for axis in (ax.xaxis if "x" in axes else None, ax.yaxis if "y" in axes else None):
        if axis is not None:
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
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
        for i, (series, group) in enumerate(sorted(_series(entries).items())):
            color = f"C{i % 10}"
            line = sorted((e.sparsity, e.metrics[metric]) for e in group
                          if e.pattern == "unstructured" and _finite(e.metrics.get(metric)))
            if line:
                ax.plot(*zip(*line, strict=True), marker="o", color=color, label=series)
            for e in group:
                if e.pattern != "unstructured" and _finite(e.metrics.get(metric)):
                    ax.scatter(e.sparsity, e.metrics[metric], marker="s", color=color, edgecolors="black",
                               label=f"{series} {e.pattern}", zorder=3)
        for e in entries:
            if e.reference and _finite(e.metrics.get(metric)):
                ax.axhline(e.metrics[metric], color="grey", linestyle="--", label=e.series)
        ax.set(xlabel="sparsity", ylabel=f"{_task(metric)} perplexity (log)", yscale="log",
               title=f"{domain}: {_task(metric)}")
        _plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def general_vs_domain(entries: Sequence[Entry], domain: str, title: str, path: Path) -> Path | None:
    """(b) Domain perplexity (y) against each general perplexity (x), one panel per general
    metric; a method's cells are joined in order of sparsity. Lower-left is better on both."""
    domain_metrics = ppl_metrics(entries, f"{domain}/")
    general = ppl_metrics(entries, "general/")
    if not domain_metrics or not general:
        return None
    y_metric = domain_metrics[0]
    fig, axes = plt.subplots(1, len(general), figsize=(6 * len(general), 4.5), squeeze=False)
    for ax, x_metric in zip(axes[0], general, strict=True):
        def point(e: Entry, x: str = x_metric) -> tuple[float, float] | None:
            xv, yv = e.metrics.get(x), e.metrics.get(y_metric)
            return (xv, yv) if _finite(xv) and _finite(yv) else None

        for i, (series, group) in enumerate(sorted(_series(entries).items())):
            color = f"C{i % 10}"
            cells = sorted((e for e in group if point(e)),
                           key=lambda e: (e.pattern != "unstructured", e.sparsity))
            line = [point(e) for e in cells if e.pattern == "unstructured"]
            if line:
                ax.plot(*zip(*line, strict=True), marker="o", color=color, label=series)
            for e in cells:
                marker = "o" if e.pattern == "unstructured" else "s"
                ax.scatter(*point(e), marker=marker, color=color, edgecolors="black", zorder=3)
                ax.annotate(f"{e.sparsity:g}" if e.pattern == "unstructured" else e.pattern, point(e),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        for e in entries:
            if e.reference and point(e):
                ax.scatter(*point(e), marker="*", s=150, color="black", label=e.series, zorder=4)
        ax.set(xscale="log", yscale="log", xlabel=f"general: {_task(x_metric)} perplexity (log)",
               ylabel=f"{domain}: {_task(y_metric)} perplexity (log)")
        _plain_log_ticks(ax, "xy")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
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
