"""Matplotlib charts as inline SVG: one metric across versions, one version's training curves.

Readable without colour: every series has its own marker and line style and is labelled directly
at its end (no legend to match colours against). Output is deterministic: Agg backend, text kept as
text (`svg.fonttype: none`), fixed `svg.hashsalt`, no date in the metadata, and every SVG id
prefixed per chart so several charts can share one HTML page.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

# Series styles in a fixed order: (line style, marker); colours come from a palette that is
# also distinguishable in grey scale, but no chart depends on them.
STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 2)), "P"))
COLORS = ("#1b5e9a", "#c0392b", "#2e7d32", "#6a1b9a", "#ef6c00", "#37474f")
SPLIT_ORDER = ("train", "val", "test")
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "gitops-site",
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
}
_UNITS = {
    "accuracy": "fraction correct, 0–1",
    "top3_accuracy": "fraction, 0–1",
    "top5_accuracy": "fraction, 0–1",
    "mse": "squared target units",
    "mae": "target units",
    "learning_rate": "per step",
}


def metric_label(metric: str, task: str = "classification") -> str:
    """Axis label with unit: `test/accuracy` -> "test accuracy (fraction correct, 0–1)"."""
    base = metric.split("/")[-1]
    unit = _UNITS.get(base)
    if base == "loss":
        unit = "cross-entropy, nats" if task == "classification" else "training objective"
    pretty = metric.replace("/", " ").replace("_", " ")
    return f"{pretty} ({unit})" if unit else pretty


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _to_svg(fig: Any, key: str, title: str) -> str:
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(fig)
    return inline_svg(buf.getvalue(), key, title)


def inline_svg(svg: str, key: str, title: str) -> str:
    """An SVG document made fit to sit inside HTML: no prologue, unique ids, a title, scalable."""
    from html import escape

    start = svg.find("<svg")
    svg = svg[start:]
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", key) + "-"
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    if ids:
        pattern = re.compile(r'(\bid="|#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
                             + r')(?=["\)])')
        svg = pattern.sub(lambda m: m.group(1) + prefix + m.group(2), svg)
    svg = re.sub(r'<svg\b', f'<svg role="img" aria-label="{escape(title)}" class="chart"', svg, count=1)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # The title element, first child, is what screen readers and hover tooltips use.
    svg = re.sub(r"(<svg\b[^>]*>)", lambda m: m.group(1) + f"\n <title>{escape(title)}</title>", svg, count=1)
    return svg.strip() + "\n"


def metric_across_versions(key: str, metric: str, points: Sequence[tuple[str, float]], *,
                           higher_is_better: bool | None = None, task: str = "classification") -> str:
    """One metric (y) across versions (x, in release order), each point labelled with its value."""
    plt = _pyplot()
    with plt.rc_context(_RC):
        width = min(8.0, 3.2 + 0.55 * len(points))
        fig, ax = plt.subplots(figsize=(width, 2.9))
        xs = list(range(len(points)))
        ys = [float(v) for _, v in points]
        ax.plot(xs, ys, linestyle="-", marker="o", color=COLORS[0], markersize=6, linewidth=1.6)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(_fmt(y), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8.5)
        ax.set_xticks(xs, [label for label, _ in points])
        ax.set_xlabel("version (release order)")
        ax.set_ylabel(metric_label(metric, task))
        if len(xs) == 1:
            ax.set_xlim(-0.5, 0.5)
        _pad_y(ax, ys)
        hint = {True: "higher is better", False: "lower is better"}.get(higher_is_better)  # type: ignore[arg-type]
        ax.set_title(metric + (f"  ({hint})" if hint else ""), fontsize=10, loc="left")
        title = f"{metric} across versions: " + ", ".join(f"{label} {_fmt(v)}" for label, v in points)
        return _to_svg(fig, key, title)


def training_curves(key: str, metric: str, series: dict[str, list[tuple[float, float]]], *,
                    task: str = "classification", title: str = "") -> str:
    """One metric over training steps, a line per split (train, val, ...) labelled at its end."""
    plt = _pyplot()
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.4, 3.0))
        names = sorted(series, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))
        all_x = [x for s in names for x, _ in series[s]]
        for i, split in enumerate(names):
            pts = sorted(series[split])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            style, marker = STYLES[i % len(STYLES)]
            every = max(1, len(xs) // 12)
            ax.plot(xs, ys, linestyle=style, marker=marker, markevery=every, markersize=5, linewidth=1.6,
                    color=COLORS[i % len(COLORS)], label=split)
            ax.annotate(f"{split} {_fmt(ys[-1])}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(6, 0),
                        va="center", fontsize=8.5, color=COLORS[i % len(COLORS)])
        if all_x:
            span = max(all_x) - min(all_x) or 1
            ax.set_xlim(min(all_x) - span * 0.02, max(all_x) + span * 0.30)  # room for the end labels
        ax.set_xlabel("step (optimizer updates)")
        ax.set_ylabel(metric_label(metric, task))
        ax.set_title(title or metric, fontsize=10, loc="left")
        desc = f"{title or metric}: " + "; ".join(
            f"{s} from {_fmt(sorted(series[s])[0][1])} to {_fmt(sorted(series[s])[-1][1])}" for s in names if series[s])
        return _to_svg(fig, key, desc)


def _pad_y(ax: Any, ys: list[float]) -> None:
    lo, hi = min(ys), max(ys)
    span = hi - lo or (abs(hi) * 0.1 or 1.0)
    ax.set_ylim(lo - span * 0.25, hi + span * 0.35)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
