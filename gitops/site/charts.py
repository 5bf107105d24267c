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

from gitops import jsonio

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
    "accuracy": "fraction, 0–1",
    "top3_accuracy": "fraction, 0–1",
    "top5_accuracy": "fraction, 0–1",
    "mse": "squared target units",
    "mae": "target units",
    "learning_rate": "per step",
}


def metric_label(metric: str, task: str = "classification") -> str:
    """Axis label with unit: `test/accuracy` -> "test accuracy (fraction, 0–1)"."""
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
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
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


_MEMO: dict[str, str] = {}
_MEMO_MAX = 1024


def _memoized(fn):
    """Charts are pure functions of their arguments: `--serve` rebuilds reuse the unchanged ones."""
    import functools
    import hashlib

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        digest = hashlib.sha256(jsonio.dumps([fn.__name__, args, kwargs], sort_keys=True, default=str).encode()).hexdigest()
        if digest not in _MEMO:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            _MEMO[digest] = fn(*args, **kwargs)
        return _MEMO[digest]

    return wrapper


@_memoized
def metric_across_versions(key: str, metric: str, points: Sequence[tuple[str, float]], *,
                           higher_is_better: bool | None = None, task: str = "classification") -> str:
    """One metric (y) across versions (x, in release order), each point labelled with its value."""
    plt = _pyplot()
    with plt.rc_context(_RC):
        width = min(8.0, 3.2 + 0.55 * len(points))
        fig, ax = plt.subplots(figsize=(width, 3.0 if len(points) <= 7 else 3.4))
        # fixed margins, not bbox_inches="tight": that draws every figure twice
        fig.subplots_adjust(left=0.8 / width, right=1 - 0.12 / width, bottom=0.2 if len(points) <= 7 else 0.3,
                            top=0.88)
        xs = list(range(len(points)))
        ys = [float(v) for _, v in points]
        ax.plot(xs, ys, linestyle="-", marker="o", color=COLORS[0], markersize=6, linewidth=1.6)
        for i in _labelled(ys):
            # above a point that sits at or over its neighbours, below one in a dip: off the line
            near = [ys[j] for j in (i - 1, i + 1) if 0 <= j < len(ys)]
            above = not near or ys[i] >= sum(near) / len(near)
            ax.annotate(_fmt(ys[i]), (xs[i], ys[i]), textcoords="offset points", xytext=(0, 8 if above else -9),
                        ha="center", va="bottom" if above else "top", fontsize=8.5, bbox=_HALO)
        ax.set_xticks(xs, [label for label, _ in points])
        if len(xs) > 7:
            ax.tick_params(axis="x", labelrotation=45)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
        ax.set_xlabel("version (release order)")
        ax.set_ylabel(metric_label(metric, task))
        if len(xs) == 1:
            ax.set_xlim(-0.5, 0.5)
        else:
            ax.set_xlim(-0.4, len(xs) - 0.6)
        _pad_y(ax, ys, metric)
        hint = {True: "higher is better", False: "lower is better"}.get(higher_is_better)  # type: ignore[arg-type]
        ax.set_title(metric + (f"  ({hint})" if hint else ""), fontsize=10, loc="left")
        title = f"{metric} across versions: " + ", ".join(f"{label} {_fmt(v)}" for label, v in points)
        return _to_svg(fig, key, title)


@_memoized
def training_curves(key: str, metric: str, series: dict[str, list[tuple[float, float]]], *,
                    task: str = "classification", title: str = "") -> str:
    """One metric over training steps, a line per split (train, val, ...) labelled at its end."""
    plt = _pyplot()
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.4, 3.0))
        fig.subplots_adjust(left=0.8 / 5.4, right=0.98, bottom=0.17, top=0.89)
        names = sorted((n for n in series if series[n]),
                       key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))
        all_x = [x for s in names for x, _ in series[s]]
        ends = []
        for i, split in enumerate(names):
            pts = sorted(series[split])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            style, marker = STYLES[i % len(STYLES)]
            every = max(1, len(xs) // 12)
            ax.plot(xs, ys, linestyle=style, marker=marker, markevery=every, markersize=5, linewidth=1.6,
                    color=COLORS[i % len(COLORS)], label=split)
            ends.append((split, xs[-1], ys[-1], COLORS[i % len(COLORS)]))
        if all_x:
            span = max(all_x) - min(all_x) or 1
            ax.set_xlim(min(all_x) - span * 0.02, max(all_x) + span * 0.30)  # room for the end labels
        ax.set_xlabel("step (optimizer updates)")
        ax.set_ylabel(metric_label(metric, task))
        ax.set_title(title or metric, fontsize=10, loc="left")
        _pad_y(ax, [y for s in names for _, y in series[s]], metric, labels=False)
        _end_labels(fig, ax, ends)
        desc = f"{title or metric}: " + "; ".join(
            f"{s} from {_fmt(sorted(series[s])[0][1])} to {_fmt(sorted(series[s])[-1][1])}" for s in names if series[s])
        return _to_svg(fig, key, desc)


_HALO = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
_FRACTIONS = {"accuracy", "top3_accuracy", "top5_accuracy"}


def _labelled(ys: list[float]) -> list[int]:
    """Which points get a value label: all of a few; of many, the ends and the extremes."""
    if len(ys) <= 12:
        return list(range(len(ys)))
    return sorted({0, len(ys) - 1, ys.index(min(ys)), ys.index(max(ys))})


def _pad_y(ax: Any, ys: list[float], metric: str, labels: bool = True) -> None:
    """Room above and below for value labels; fractions get no ticks past 0 or 1."""
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    span = hi - lo or (abs(hi) * 0.05 or 1.0)
    ax.set_ylim(lo - span * (0.3 if labels else 0.08), hi + span * (0.35 if labels else 0.08))
    if metric.split("/")[-1] in _FRACTIONS:
        ticks = [t for t in ax.get_yticks() if -1e-9 <= t <= 1 + 1e-9]
        bottom, top = ax.get_ylim()
        ax.set_yticks([t for t in ticks if bottom <= t <= top] or [min(max(lo, 0.0), 1.0)])
        ax.set_ylim(bottom, top)


def _end_labels(fig: Any, ax: Any, ends: list[tuple[str, float, float, str]]) -> None:
    """Name each line at its last point, nudged apart vertically so labels never sit on each other."""
    if not ends:
        return
    gap = 11.0  # points between label centres
    to_points = 72.0 / fig.dpi
    placed = sorted(((ax.transData.transform((x, y))[1] * to_points, i) for i, (_, x, y, _) in enumerate(ends)))
    wanted = [p for p, _ in placed]
    for k in range(1, len(wanted)):
        wanted[k] = max(wanted[k], wanted[k - 1] + gap)
    shift = (wanted[-1] - placed[-1][0]) / 2 if len(wanted) > 1 else 0.0
    for (orig, i), target in zip(placed, wanted, strict=True):
        split, x, y, color = ends[i]
        ax.annotate(f"{split} {_fmt(y)}", (x, y), textcoords="offset points", xytext=(7, target - orig - shift),
                    va="center", fontsize=8.5, color=color, bbox=_HALO)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
