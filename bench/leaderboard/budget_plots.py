"""The budget views as PNG (budget.py decides what is drawn): budget curves, cost fronts and
retention, one figure each per panel, in the style of plots.py (log perplexities, legend outside,
written atomically)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.leaderboard.budget import Panel, Point, front
from bench.leaderboard.plots import _legend_outside, _log_grid, _save, _task, plt
from bench.results.records import finite


def colours(panel: Panel) -> dict[str, Any]:
    """One colour per series, the same in every figure of the panel."""
    names = sorted({p.series for p in panel.points})
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def _yerr(points: Sequence[Point], metric: str) -> list[list[float]]:
    """Error bar lengths below and above each point (zero without an interval)."""
    ends = [p.estimate(metric).interval or (p.value(metric), p.value(metric)) for p in points]
    return [[p.value(metric) - low for p, (low, _) in zip(points, ends, strict=True)],
            [high - p.value(metric) for p, (_, high) in zip(points, ends, strict=True)]]


def _dense_line(ax: plt.Axes, panel: Panel, metric: str) -> None:
    """The dense model as a grey dashed line with its interval as a band."""
    found = panel.dense.estimates.get(metric) if panel.dense else None
    if found is not None:
        ax.axhline(found.value, color="grey", linestyle="--", label=panel.dense.label)
        if found.interval:
            ax.axhspan(*found.interval, color="grey", alpha=0.15)


def _curve(ax: plt.Axes, points: Sequence[Point], metric: str, series: str, colour: Any) -> None:
    """A series over its domain-token levels with its interval band; a series that reads no
    domain text (0 tokens, off the log axis) as a dotted level line."""
    drawn = sorted((p for p in points if finite(p.value(metric))), key=lambda p: p.domain_tokens)
    flat = [p for p in drawn if p.domain_tokens == 0]
    curve = [p for p in drawn if p.domain_tokens > 0]
    for p in flat:
        ax.axhline(p.value(metric), color=colour, linestyle=":", label=f"{series} (no domain tokens)")
    if not curve:
        return
    x = [p.domain_tokens for p in curve]
    ax.errorbar(x, [p.value(metric) for p in curve], yerr=_yerr(curve, metric), marker="o", color=colour,
                capsize=2, label=series)
    if len(curve) > 1 and all(p.estimate(metric).interval for p in curve):
        low, high = zip(*(p.estimate(metric).interval for p in curve), strict=True)
        ax.fill_between(x, low, high, color=colour, alpha=0.15)


def budget_curves(panel: Panel, path: Path) -> Path | None:
    """Each domain and general perplexity against the domain tokens seen (log x), a line per
    method with its interval band, dense as the reference."""
    metrics = panel.metrics(panel.domain) + panel.metrics("general")
    if not metrics:
        return None
    by_series: dict[str, list[Point]] = defaultdict(list)
    for p in panel.points:
        by_series[p.series].append(p)
    palette = colours(panel)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for series, points in by_series.items():
            _curve(ax, points, metric, series, palette[series])
        _dense_line(ax, panel, metric)
        ax.set(xscale="log", yscale="log", xlabel="domain calibration tokens × passes (log)",
               ylabel=f"{_task(metric)} perplexity (log)", title=f"{metric.split('/')[0]}: {_task(metric)}")
        _log_grid(ax, "xy")
    _legend_outside(axes[0])
    fig.suptitle(f"{panel.domain} · {panel.title}\nquality against domain calibration budget", fontsize=10,
                 y=1.04)
    return _save(fig, path)


def cost_fronts(panel: Panel, path: Path) -> Path | None:
    """The first domain perplexity against prune seconds and against peak memory, a point per
    row, the lower-left front joined (no cheaper row does better)."""
    domain = panel.metrics(panel.domain)
    if not domain:
        return None
    metric, palette = domain[0], colours(panel)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
    for ax, (cost, name) in zip(axes[0], (("seconds", "prune seconds"), ("memory_mb", "peak memory (MB)")),
                                strict=True):
        shown = [p for p in panel.points if finite(getattr(p, cost)) and finite(p.value(metric))]
        for p in shown:
            ax.errorbar(getattr(p, cost), p.value(metric), yerr=_yerr([p], metric), fmt="o",
                        color=palette[p.series], capsize=2, label=p.series)
        line = front([(getattr(p, cost), p.value(metric)) for p in shown])
        if line:
            ax.step(*zip(*line, strict=True), where="post", color="black", alpha=0.6, label="front")
        _dense_line(ax, panel, metric)
        ax.set(xscale="log", yscale="log", xlabel=f"{name} (log)", ylabel=f"{_task(metric)} perplexity (log)")
        _log_grid(ax, "xy")
    _legend_outside(axes[0])
    fig.suptitle(f"{panel.domain} · {panel.title}\n{metric} against prune cost; lower-left is better",
                 fontsize=10, y=1.04)
    return _save(fig, path)


def retention_plot(panel: Panel, scores: Mapping[str, tuple[float, float]], best: set[str],
                   path: Path) -> Path | None:
    """Each row's general perplexity over dense (x, log) against its domain perplexity over dense
    (y, log, inverted): the general loss and domain gain of `retention` as ratios, so that one far
    point does not squeeze the rest; the Pareto front (`best`) circled, named and joined, dense at
    (1, 1). Upper-left is better."""
    if not scores:
        return None
    palette = colours(panel)
    series = {p.label: p.series for p in panel.points}
    ratios = {label: (1 + loss, 1 - gain) for label, (gain, loss) in scores.items()}
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, (general, domain) in ratios.items():
        on_front = label in best
        ax.scatter(general, domain, color=palette[series[label]], s=60 if on_front else 30,
                   edgecolors="black" if on_front else "none", zorder=3, label=series[label])
        if on_front:
            ax.annotate(label, (general, domain), textcoords="offset points", xytext=(4, 4), fontsize=6)
    line = sorted(ratios[label] for label in best)
    ax.plot(*zip(*line, strict=True), color="black", alpha=0.6, label="Pareto front")
    ax.scatter(1, 1, marker="*", s=150, color="black", label="dense", zorder=4)
    ax.set(xscale="log", yscale="log", xlabel="general perplexity / dense (log): general loss →",
           ylabel="domain perplexity / dense (log, inverted): domain kept ↑")
    ax.invert_yaxis()
    _log_grid(ax, "xy")
    _legend_outside([ax])
    fig.suptitle(f"{panel.domain} · {panel.title}\nretention relative to dense; upper-left is better",
                 fontsize=10)
    return _save(fig, path)
