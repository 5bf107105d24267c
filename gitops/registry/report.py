"""The PR report: each run against its model's newest release, gates, config diff and loss curve.

The Markdown is the sticky PR comment (found again by its first line) and the job summary; the
JSON form carries the same content as data for the comment workflow, which validates it against
`REPORT_JSON_SCHEMA` and never interprets it otherwise.

A run (or baseline release) trained with `train.repeats: N` shows `mean ± std` over its seeds; a delta
inside the noise band of `gitops.registry.stats` (|Δ| ≤ 2 × the standard error of the difference of the means)
is marked "≈ noise" instead of better/worse, and the footer states the rule. Gates judge the mean.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import config, jsonio, trackers
from gitops.backends.base import COMMENT_MARKER, COMMENT_MAX_CHARS, Backend
from gitops.config import catalog
from gitops.errors import UsageError
from gitops.registry import runs as run_folders  # `runs` is build()'s list of folders
from gitops.registry import stats, versions
from gitops.registry.gates import GateResult, change, direction, evaluate_gates, note_seeds
from gitops.registry.plan import config_diff, is_missing, show_value
from gitops.repo import ci_event, gitutil

MAX_CURVE_POINTS = 100
SPARK = "▁▂▃▄▅▆▇█"
BETTER, WORSE, FAILED, EQUAL, NONE, NOISE = "✅", "⚠️", "❌", "➖", "—", "≈ noise"


@dataclass
class Baseline:
    """What a run is compared with: a release's (or a run folder's) metrics, resolved config and seed spread.

    `source` is "release", "folder" or "none" (then `version` is None, the dicts empty and `note` says why);
    `repeats` is the number of seeds its metrics are means of.
    """
    version: str | None  # "v1.0.0", or a folder's label; None when there is none
    metrics: dict
    config: dict | None
    source: str  # "release", "folder" or "none"
    note: str = ""
    spread: dict = field(default_factory=dict)  # metric -> {mean, std, n, ...} when it was trained with repeats
    repeats: int = 1


@dataclass
class ModelReport:
    """One run's section of the report: metric rows against the baseline, gate results, config diff, loss curve
    and run facts (`wall_time_s` in seconds, `steps_per_s` in optimizer steps per second, `device` as text).

    `metrics` rows: {metric, baseline, value, delta, relative, higher_is_better, status, ...noise band keys}.
    """
    model: str
    run: str
    baseline: Baseline
    metrics: list[dict] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    diff: list[tuple[str, Any, Any]] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    device: str = ""
    wall_time_s: float | None = None
    steps_per_s: float | None = None
    steps: int | None = None
    git_commit: str = ""  # "" when the run recorded none (trained outside git or before the first commit)
    git_dirty: bool = False
    training_fingerprint: str = ""
    repeats: int = 1  # seeds behind each value of this run (metrics are their means)
    trackers: list[dict] = field(default_factory=list)  # [{name, url}] where the run is in a tracker
    sweep: dict | None = None  # {"markdown", "json", "best_trial"} when this run is a sweep's best trial
    parent: dict | None = None  # the run's train.start_from record (manifest), with `warning` when deprecated

    @property
    def ok(self) -> bool:
        """False when any gate failed (skipped gates do not count against the run)."""
        return all(g.status != "fail" for g in self.gates)

    @property
    def has_noise_band(self) -> bool:
        """Whether any metric row carries a noise band (seeds' spread or the single-seed rule)."""
        return any(row.get("noise_band") is not None for row in self.metrics)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --- baselines -------------------------------------------------------------------------------------


def baseline_from_release(root: Path, backend: Backend, model: str) -> Baseline:
    """The newest release of `model` as a baseline: metrics and seed spread from its tag message, config
    resolved at its tagged commit (None, with a note, when that commit or config does not resolve here).

    A model with no release gives a Baseline with source "none".
    """
    st = versions.state(backend, model)
    latest = st.latest()
    if latest is None:
        return Baseline(None, {}, None, "none", f"{model} has no release yet: nothing to compare with")
    meta = versions.release_metadata(latest.message)
    cfg_dict = None
    try:
        from gitops.repo.tree import GitTree

        gitutil.ensure_commit(root, latest.commit)
        cfg, _problems = config.resolve(model, GitTree(root, latest.commit))
        cfg_dict = cfg.as_dict() if cfg is not None else None
    except Exception:  # the tag's commit is not in this clone, or the config no longer resolves
        cfg_dict = None
    note = "" if cfg_dict is not None else "baseline config unavailable (its commit does not resolve here)"
    spread = meta.get("metrics_spread")
    return Baseline(latest.version, meta.get("metrics", {}), cfg_dict, "release", note,
                    stats.spread_of(spread), stats.seeds_count(spread))


def baseline_from_folder(path: Path) -> Baseline:
    """A run folder (e.g. one `gitops pull` unpacked) as the baseline: its metrics, config and seed spread,
    labelled with the release version it records, else the folder's name.
    """
    info = run_folders.read_run(path)
    from gitops.registry.archive import read_release_record

    label = (read_release_record(path) or {}).get("version") or path.name  # a pulled release names its version
    from gitops.registry.runs import read_spread

    spread = read_spread(path)
    return Baseline(label, info.metrics, info.config or None, "folder", "", stats.spread_of(spread),
                    stats.seeds_count(spread))


# --- building ----------------------------------------------------------------------------------------


def _curve(history: list[dict]) -> list[tuple[int, float]]:
    points = []
    for row in history:
        if row.get("split", "train") != "train":
            continue
        value = row.get("loss", row.get("train/loss"))
        step = row.get("step")
        if _finite(value) and isinstance(step, int):
            points.append((step, float(value)))
    return downsample(points, MAX_CURVE_POINTS)


def downsample(points: list, limit: int) -> list:
    """At most `limit` (>= 2) items of `points`, evenly spaced, first and last kept; a shorter list is copied.

    Keeps the loss curve within MAX_CURVE_POINTS so the PR comment stays small.
    """
    if len(points) <= limit:
        return list(points)
    stride = (len(points) - 1) / (limit - 1)
    return [points[round(i * stride)] for i in range(limit)]


def _seconds(manifest: dict) -> float | None:
    from datetime import datetime

    if _finite(manifest.get("wall_time_s")):
        return float(manifest["wall_time_s"])
    try:
        start = datetime.fromisoformat(manifest["started_at"])
        end = datetime.fromisoformat(manifest["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (end - start).total_seconds())


def build_model_report(info: run_folders.RunInfo, baseline: Baseline) -> ModelReport:
    """Compare one finished run (`info`) with `baseline`: one row per metric (the union, headline metric first)
    with delta, relative change and verdict (better/worse/equal/noise/failed), gates judged on the metrics,
    the config diff, the downsampled training-loss curve and the run's timing.
    """
    from gitops.registry.runs import read_spread

    metrics = info.metrics
    spread_doc = read_spread(info.path)
    spread, repeats = stats.spread_of(spread_doc), stats.seeds_count(spread_doc)
    rows = []
    release_cfg = (info.config or {}).get("release", {}) or {}
    gates_cfg = list(release_cfg.get("gates", []) or [])
    gate_results = evaluate_gates(gates_cfg, metrics, baseline.metrics if baseline.source != "none" else None)
    note_seeds(gate_results, repeats, baseline.repeats)  # the metrics are means; say so where the verdict is
    failed_metrics = {g.metric for g in gate_results if g.status == "fail"}
    head_name = release_cfg.get("headline_metric")
    names = sorted(set(metrics) | set(baseline.metrics), key=lambda n: (n != head_name, n))
    for name in names:
        new, old = metrics.get(name), baseline.metrics.get(name)
        row: dict[str, Any] = {"metric": name, "baseline": old, "value": new, "delta": None, "relative": None,
                               "higher_is_better": direction(name)}
        ours, theirs = spread.get(name), baseline.spread.get(name)
        if ours or theirs:
            row.update(value_std=_std(ours), value_n=int((ours or {}).get("n") or 1),
                       baseline_std=_std(theirs), baseline_n=int((theirs or {}).get("n") or 1), noise_band=None)
        verdict = change(new, old, row["higher_is_better"])  # inf/NaN new: "worse", never an improvement
        band = None
        if _finite(new) and _finite(old):
            row["delta"] = new - old
            row["relative"] = (new - old) / abs(old) if old else None
            band = stats.noise_band(ours, theirs) if (ours or theirs) else None
            if band is not None:
                row["noise_band"], row["noise_basis"] = band, "seeds"
            elif repeats == 1 and baseline.repeats == 1:
                band, row["noise_basis"] = stats.single_seed_band(name, old, new, _split_size(info.config, name))
                row["noise_band"] = band
        if name in failed_metrics:
            row["status"] = "failed"
        elif verdict != "equal" and band is not None and abs(new - old) <= band:
            row["status"] = "noise"
        else:
            row["status"] = verdict
        rows.append(row)
    wall = _seconds(info.manifest)
    steps = run_folders.int_field(info.manifest, "steps")
    diff = []
    if baseline.config is not None and info.config:
        diff = config_diff(baseline.config, info.config)
    return ModelReport(
        model=info.model,
        run=str(info.path),
        baseline=baseline,
        metrics=rows,
        gates=gate_results,
        diff=diff,
        curve=_curve(info.history),
        device=run_folders.device_text(info.manifest),
        wall_time_s=wall,
        steps_per_s=(steps / wall) if steps and wall else None,
        steps=steps,
        git_commit=run_folders.text_field(info.manifest, "git_commit"),
        git_dirty=info.manifest.get("git_dirty") is True,
        training_fingerprint=info.training_fingerprint,
        repeats=repeats,
        trackers=trackers.links(info.manifest),
    )


def _split_size(cfg: dict | None, metric: str) -> int | None:
    """Examples in the held-out split a `val/` or `test/` metric was measured on (None when unknown)."""
    split = {"val": "validation", "test": "test"}.get(metric.split("/", 1)[0])
    data = (cfg or {}).get("data") or {}
    try:
        entry = catalog.DATASETS.entry(data["dataset"]["name"])
        total = (entry.info.get("examples") if entry else None) or data["dataset"].get("n_samples")
        fraction = float(data["splits"][split])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return math.ceil(total * fraction) if isinstance(total, int) and total > 0 and fraction > 0 else None


def _std(summary: dict | None) -> float | None:
    std = (summary or {}).get("std")
    return float(std) if _finite(std) and int((summary or {}).get("n") or 1) > 1 else None


@dataclass
class Report:
    """The whole report: one ModelReport per run folder, the head commit (40 hex or "") and the PR number."""
    models: list[ModelReport]
    head_sha: str
    pr: int | None

    @property
    def ok(self) -> bool:
        """True when every model's gates pass: the report's overall verdict."""
        return all(m.ok for m in self.models)


def build(root: Path, runs: list[Path], backend: Backend | None, baseline: str = "auto",
          head_sha: str | None = None, pr: int | None = None) -> Report:
    """Build the report for `runs`: run folders, folders holding run folders (`runs/`, `runs/<model>/`) or glob
    patterns. Each run is compared with its model's newest release (`baseline="auto"`) or with the run folder
    `baseline`. `head_sha` defaults to HEAD, `pr` to the CI event's PR number.

    Raises UsageError when no run folders are given or a path/pattern names no run folder.
    """
    if not runs:
        raise UsageError("no run folders given (gitops report RUN...)")
    folders = []
    for run in runs:
        run = Path(run)
        if (run / "manifest.json").is_file():
            folders.append(run)
        elif run.is_dir():  # runs/<model>/ or runs/: every run folder below
            found = sorted(p.parent for p in run.glob("**/manifest.json"))
            if not found:
                raise UsageError(f"{run}: no run folders (no manifest.json) below it")
            folders += found
        elif any(ch in str(run) for ch in "*?["):  # a pattern the shell left as is: it matched nothing
            import glob

            matched = sorted(Path(m) for m in glob.glob(str(run)) if (Path(m) / "manifest.json").is_file())
            if not matched:
                raise UsageError(f"{run} matched no run folder (nothing was trained or fetched there)")
            folders += matched
        else:
            raise UsageError(f"{run}: no such run folder")
    if head_sha is None:
        head_sha = gitutil.head_or_none(root) or ""  # "" outside git or before the first commit
    if pr is None:
        pr = ci_event.pr_number()
    reports = []
    cache: dict[str, Baseline] = {}
    for folder in folders:
        info = run_folders.read_run(folder)
        if baseline == "auto":
            if info.model not in cache:
                if backend is None:
                    cache[info.model] = Baseline(None, {}, None, "none", "no registry backend")
                else:
                    cache[info.model] = baseline_from_release(root, backend, info.model)
            base = cache[info.model]
        else:
            base = baseline_from_folder(Path(baseline))
        reports.append(build_model_report(info, base))
        reports[-1].parent = _parent(info, backend)
    from gitops.registry.sweep_results import attach_to_report

    return Report(attach_to_report(root, reports), head_sha, pr)


def _parent(info: run_folders.RunInfo, backend: Backend | None) -> dict | None:
    """The run's parent (start_from), flagged when its model is deprecated or its version deregistered."""
    record = info.manifest.get("start_from")
    if not record:
        return None
    record = dict(record)
    if record.get("model") and backend is not None:
        st = versions.state(backend, record["model"])
        found = st.find(record.get("version") or "")
        if st.deprecated:
            record["warning"] = f"the parent model {record['model']} is deprecated"
        elif found is not None and not found.active:
            record["warning"] = f"the parent {record['model']}@{found.version} is deregistered"
    return record


# --- Markdown ---------------------------------------------------------------------------------------


def sparkline(values: list[float]) -> str:
    """`values` as a one-line bar chart of the eight block characters ▁..█, scaled min to max (flat: all ▁).

    The idea is Edward Tufte's sparklines: a word-sized graphic inline with text. "" for no values.
    """
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / (hi - lo) * (len(SPARK) - 1) + 0.5))] for v in values)


def mermaid(model: str, curve: list[tuple[int, float]]) -> str:
    """The loss `curve` ((step, loss) pairs) as a Mermaid `xychart-beta` line chart in a fenced block, which
    GitHub renders in PR comments (Mermaid's XY chart syntax, https://mermaid.js.org/syntax/xyChart.html).
    """
    xs = ", ".join(str(s) for s, _ in curve)
    ys = ", ".join(f"{v:.5g}" for _, v in curve)
    return "\n".join([
        "```mermaid",
        "xychart-beta",
        f'    title "{model}: training loss"',
        f'    x-axis "step" [{xs}]',
        '    y-axis "loss"',
        f"    line [{ys}]",
        "```",
    ])


def _num(x: Any) -> str:
    return NONE if x is None else versions.format_number(x)


def _arrow(row: dict) -> str:
    """The direction arrow of a metric row ("" when no registered metric has that name)."""
    return {True: "↑", False: "↓"}.get(row["higher_is_better"], "")


_SYMBOL = {"better": BETTER, "worse": WORSE, "failed": FAILED, "equal": EQUAL, "none": NONE, "noise": NOISE}


def _cell_value(value: Any, std: float | None) -> str:
    """'0.9815 ± 0.016' for a mean over seeds, the plain number otherwise."""
    if std is None or not _finite(value):
        return _num(value)
    return f"{_num(value)} ± {std:.2g}"


def _seeds(n: int) -> str:
    return f", mean ± std of {n} seeds" if n > 1 else ""


def noise_rules(m: ModelReport) -> list[str]:
    """The noise rules the rows of `m` used (seeds, single-seed), for the footer and the JSON."""
    bases = {row.get("noise_basis") for row in m.metrics if row.get("noise_band") is not None}
    rules = [stats.NOISE_RULE] if "seeds" in bases else []
    return rules + ([stats.SINGLE_SEED_RULE] if bases - {"seeds", None} else [])


def model_markdown(m: ModelReport) -> str:
    """One model's Markdown section: verdict title, metrics table with noise marks, gates, config diff, loss
    chart and run facts (device, seconds, steps, fingerprint, commit).
    """
    b = m.baseline
    title = f"### {'✅' if m.ok else '❌'} `{m.model}`"
    if m.sweep and m.sweep.get("best_trial") is not None:
        title += f" — best sweep trial #{m.sweep['best_trial']}"
    lines = [title, ""]
    if m.sweep:
        lines += [m.sweep["markdown"], ""]
    if m.parent:
        from gitops.registry.lineage import describe_parent

        lines.append(f"Starts from: {describe_parent(m.parent)}"
                     + (f", frozen: {', '.join(m.parent['frozen'])}" if m.parent.get("frozen") else ""))
        if m.parent.get("warning"):
            lines.append(f"> [!WARNING]\n> {m.parent['warning']}: releasing this model builds on it.")
        lines.append("")
    if b.source == "none":
        lines.append(f"No baseline: {b.note or m.model + ' has no release yet'}.")
    else:
        lines.append(f"Baseline: **{m.model}@{b.version}**" if b.source == "release"
                     else f"Baseline: folder `{b.version}`")
        if b.note:
            lines.append(f"_{b.note}_")
    lines += ["", f"| metric | baseline ({b.version or 'none'}{_seeds(b.repeats)}) | this run{_seeds(m.repeats)} "
              "| Δ | Δ % | |",
              "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for row in m.metrics:
        arrow = _arrow(row)
        delta = NONE if row["delta"] is None else f"{row['delta']:+.4g}"
        if row.get("noise_band") is not None and row["delta"] is not None and (
                row.get("noise_basis") == "seeds" or row["status"] == "noise"):
            delta += f" (±{row['noise_band']:.2g})"
        rel = NONE if row["relative"] is None else f"{row['relative'] * 100:+.2f}%"
        lines.append(f"| {row['metric']} ({arrow + ' better' if arrow else 'direction unknown'}) | {_cell_value(row['baseline'], row.get('baseline_std'))} | "
                     f"{_cell_value(row['value'], row.get('value_std'))} | {delta} | {rel} | {_SYMBOL[row['status']]} |")
    lines.append("")
    if m.has_noise_band or m.repeats > 1 or b.repeats > 1:
        note = [f"_{rule}; the band is shown after Δ._" for rule in noise_rules(m)]
        if m.repeats > 1:
            note.append(f"_Values are means over {m.repeats} seeds; gates apply to the mean._")
        lines += [" ".join(note), ""]
    if m.gates:
        lines += ["**Gates**", "", "| gate | result | |", "| --- | --- | :---: |"]
        for g in m.gates:
            symbol = {"pass": BETTER, "fail": FAILED, "skipped": EQUAL}[g.status]
            lines.append(f"| {g.metric} {g.kind} {g.threshold:g} | {g.status}: {g.note} | {symbol} |")
        lines.append("")
    else:
        lines += ["No gates in release.yaml.", ""]
    if m.curve:
        values = [v for _, v in m.curve]
        lines += [f"**Training loss** `{sparkline(values)}` {values[0]:.4g} → {values[-1]:.4g} "
                  f"(steps {m.curve[0][0]}–{m.curve[-1][0]})", "", mermaid(m.model, m.curve), ""]
    if b.source != "none":
        lines.append(f"<details><summary>Config diff against {b.version} ({len(m.diff)} key(s))</summary>")
        lines.append("")
        if m.diff:
            lines += ["| key | baseline | this run |", "| --- | --- | --- |"]
            for key, old, new in m.diff:
                lines.append(f"| `{key}` | `{_cell(old)}` | `{_cell(new)}` |")
        else:
            lines.append("No config change.")
        lines += ["", "</details>", ""]
    wall = f"{m.wall_time_s:.1f} s" if m.wall_time_s is not None else NONE
    speed = f"{m.steps_per_s:.1f} steps/s" if m.steps_per_s else NONE
    tracked = "".join(f" · [{TRACKER_LABELS.get(t['name'], t['name'])}]({_link(t['url'])})" for t in m.trackers)
    lines.append(f"Device {m.device} · wall time {wall} · {m.steps or NONE} steps · {speed} · "
                 f"run `{m.training_fingerprint[:12] or NONE}` · "
                 + (f"commit `{m.git_commit[:12]}`" + (" (uncommitted changes)" if m.git_dirty else "")
                    if m.git_commit else "commit not recorded") + tracked)
    lines.append("")
    return "\n".join(lines)


TRACKER_LABELS = {"mlflow": "MLflow run", "tensorboard": "TensorBoard"}


def _link(url: str) -> str:
    """A URL safe inside Markdown's `(...)`: spaces, parentheses and angle brackets percent-encoded."""
    return "".join({" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"}.get(ch, ch) for ch in url)


def _cell(value: Any) -> str:
    text = "(absent)" if is_missing(value) else show_value(value)
    text = text.replace("|", "\\|").replace("`", "'").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def markdown(report: Report, limit: int = COMMENT_MAX_CHARS) -> str:
    """The whole report as Markdown (the sticky PR comment and the job summary): starts with COMMENT_MARKER,
    then the overall verdict, head commit and PR, then each model's section; cut to `limit` characters.
    """
    failed = [m.model for m in report.models if not m.ok]
    status = (f"❌ gate failed: {', '.join(failed)}" if failed
              else f"✅ all gates pass ({len(report.models)} model(s))")
    head = [COMMENT_MARKER, "## gitops report", "", status, "",
            f"Head commit `{report.head_sha[:12] or 'not recorded'}`" + (f" · PR #{report.pr}" if report.pr else ""), ""]
    text = "\n".join(head) + "\n" + "\n".join(model_markdown(m) for m in report.models)
    return cap(text, limit)


_WORD = {"better": "better", "worse": "WORSE", "failed": "FAILED", "equal": "same", "none": "", "noise": "≈ noise"}


def terminal(report: Report) -> str:
    """The report for a terminal: aligned plain-text tables, no Mermaid, sparkline or HTML.

    `gitops report` prints this when stdout is a terminal; the Markdown (PR comment, job summary,
    `--out`, pipes) is unchanged.
    """
    failed = [m.model for m in report.models if not m.ok]
    lines = ["gitops report" + (f" · head {report.head_sha[:12]}" if report.head_sha else "")
             + (f" · PR #{report.pr}" if report.pr else ""),
             f"gate failed: {', '.join(failed)}" if failed else f"all gates pass ({len(report.models)} model(s))", ""]
    for m in report.models:
        b = m.baseline
        base = (f"baseline {m.model}@{b.version}" if b.source == "release" else f"baseline folder {b.version}"
                if b.source == "folder" else f"no baseline: {b.note or 'no release yet'}")
        lines.append(f"{m.model}  ({'ok' if m.ok else 'GATE FAILED'}; {base})")
        rows = [["METRIC", "BASELINE", "THIS RUN", "Δ", "Δ %", ""]]
        for row in m.metrics:
            band = (f" (±{row['noise_band']:.2g})" if row.get("noise_band") is not None and row["status"] == "noise"
                    else "")
            rows.append([f"{row['metric']} {_arrow(row) or '?'}",
                         _cell_value(row["baseline"], row.get("baseline_std")),
                         _cell_value(row["value"], row.get("value_std")),
                         NONE if row["delta"] is None else f"{row['delta']:+.4g}",
                         NONE if row["relative"] is None else f"{row['relative'] * 100:+.2f}%",
                         _WORD[row["status"]] + band])
        lines += versions.columns(rows)
        for rule in noise_rules(m):
            lines.append(f"  {rule}")
        for g in m.gates:
            lines.append(f"  gate {g.metric} {g.kind} {g.threshold:g}: {g.status}" + (f" ({g.note})" if g.note else ""))
        if not m.gates:
            lines.append("  no gates in release.yaml")
        if b.source != "none":
            if m.diff:
                lines.append(f"  config diff against {b.version}:")
                lines += versions.columns([[f"{k}", _cell(old), "->", _cell(new)] for k, old, new in m.diff],
                                              indent="    ")
            else:
                lines.append(f"  no config change against {b.version}")
        if m.curve:
            lines.append(f"  training loss {versions.format_number(m.curve[0][1])} -> "
                         f"{versions.format_number(m.curve[-1][1])} (steps {m.curve[0][0]}–{m.curve[-1][0]})")
        wall = f"{m.wall_time_s:.1f} s" if m.wall_time_s is not None else NONE
        speed = f"{m.steps_per_s:.1f} steps/s" if m.steps_per_s else NONE
        lines.append(f"  {m.device} · {wall} · {m.steps or NONE} steps · {speed} · run {m.training_fingerprint[:12]}"
                     f" · commit {m.git_commit[:12] + (' (uncommitted changes)' if m.git_dirty else '') if m.git_commit else 'not recorded'}")
        lines.append("")
    return "\n".join(lines)


def cap(text: str, limit: int = COMMENT_MAX_CHARS) -> str:
    """`text` cut to at most `limit` characters (default GitHub's 65,536-character comment limit) at a line
    boundary, closing an open code fence and ending with a note saying where the full report is.
    """
    if len(text) <= limit:
        return text
    note = f"\n\n> ✂️ Report cut at {limit} characters (GitHub's comment limit); the job summary and report.json have it all.\n"
    cut = text[: limit - len(note) - 16]
    cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
    if cut.count("```") % 2:  # don't leave a code block open
        cut += "\n```"
    return cut + note


# --- JSON --------------------------------------------------------------------------------------------


def as_json(report: Report) -> dict:
    """The report as data (format `version` 1): per model its metrics rows, gates, config diff, curve, timing
    and provenance; `REPORT_JSON_SCHEMA` describes it.
    """
    return {
        "version": 1,
        "head_sha": report.head_sha,
        "pr": report.pr,
        "ok": report.ok,
        "models": [
            {
                "model": m.model,
                "run": m.run,
                "ok": m.ok,
                "training_fingerprint": m.training_fingerprint,
                "baseline": None if m.baseline.source == "none" else
                {"version": m.baseline.version, "source": m.baseline.source, "metrics": m.baseline.metrics,
                 "repeats": m.baseline.repeats},
                "repeats": m.repeats,
                "noise_rule": "; ".join(noise_rules(m)) or None,
                "metrics": m.metrics,
                "gates": [g.as_dict() for g in m.gates],
                "config_diff": [{"key": k, "baseline": None if is_missing(a) else a,
                                 "value": None if is_missing(b) else b} for k, a, b in m.diff],
                "curve": [[s, v] for s, v in m.curve],
                "device": m.device,
                "wall_time_s": m.wall_time_s,
                "steps": m.steps,
                "steps_per_s": m.steps_per_s,
                "git_commit": m.git_commit,
                "trackers": m.trackers,
                "sweep": m.sweep["json"] if m.sweep else None,
            }
            for m in report.models
        ],
    }


_NUM_OR_NULL = {"type": ["number", "null"]}
REPORT_JSON_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["version", "head_sha", "pr", "ok", "models"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "head_sha": {"type": "string", "pattern": "^([0-9a-f]{40}|[0-9a-f]{64}|)$"},
        "pr": {"type": ["integer", "null"], "minimum": 1},
        "ok": {"type": "boolean"},
        "models": {
            "type": "array",
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": ["model", "ok", "metrics", "gates"],
                "additionalProperties": False,
                "properties": {
                    "model": {"type": "string", "pattern": r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$"},
                    "run": {"type": "string", "maxLength": 4096},
                    "ok": {"type": "boolean"},
                    "training_fingerprint": {"type": "string", "pattern": "^[0-9a-f]*$"},
                    "repeats": {"type": "integer", "minimum": 1},
                    "noise_rule": {"type": ["string", "null"], "maxLength": 1024},
                    "baseline": {
                        "type": ["object", "null"],
                        "properties": {
                            "version": {"type": ["string", "null"], "maxLength": 256},
                            "source": {"enum": ["release", "folder"]},
                            "metrics": {"type": "object", "additionalProperties": _NUM_OR_NULL},
                            "repeats": {"type": "integer", "minimum": 1},
                        },
                        "additionalProperties": False,
                    },
                    "metrics": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["metric", "status"],
                            "additionalProperties": False,
                            "properties": {
                                "metric": {"type": "string", "maxLength": 256},
                                "baseline": _NUM_OR_NULL,
                                "value": _NUM_OR_NULL,
                                "delta": _NUM_OR_NULL,
                                "relative": _NUM_OR_NULL,
                                "higher_is_better": {"type": ["boolean", "null"]},  # null: no registered metric of that name
                                "status": {"enum": ["better", "worse", "failed", "equal", "none", "noise"]},
                                "value_std": _NUM_OR_NULL,
                                "value_n": {"type": "integer", "minimum": 1},
                                "baseline_std": _NUM_OR_NULL,
                                "baseline_n": {"type": "integer", "minimum": 1},
                                "noise_band": _NUM_OR_NULL,
                                "noise_basis": {"type": "string", "maxLength": 64},
                            },
                        },
                    },
                    "gates": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["metric", "kind", "status"],
                            "additionalProperties": False,
                            "properties": {
                                "metric": {"type": "string", "maxLength": 256},
                                "kind": {"enum": ["min", "max", "max_regression"]},
                                "threshold": {"type": "number"},
                                "value": _NUM_OR_NULL,
                                "status": {"enum": ["pass", "fail", "skipped"]},
                                "note": {"type": "string", "maxLength": 1024},
                            },
                        },
                    },
                    "config_diff": {"type": "array", "items": {"type": "object"}},
                    "curve": {"type": "array", "maxItems": MAX_CURVE_POINTS,
                              "items": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "number"}],
                                        "items": False, "minItems": 2}},
                    "device": {"type": "string", "maxLength": 256},
                    "wall_time_s": _NUM_OR_NULL,
                    "steps": {"type": ["integer", "null"]},
                    "steps_per_s": _NUM_OR_NULL,
                    "git_commit": {"type": "string", "maxLength": 64},
                    "trackers": {
                        "type": "array", "maxItems": 8,
                        "items": {"type": "object", "required": ["name", "url"], "additionalProperties": False,
                                  "properties": {"name": {"enum": list(trackers.NAMES)},
                                                 "url": {"type": "string", "maxLength": 2048,
                                                         "pattern": "^https?://[^\\s]+$"}}},
                    },
                    "sweep": {"type": ["object", "null"]},
                },
            },
        },
    },
}


def _allow_non_finite(node: Any) -> None:
    """Every object of the report JSON may carry the strict-JSON `non_finite` names (gitops.jsonio)."""
    if isinstance(node, dict):
        for value in list(node.values()):
            _allow_non_finite(value)
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            node.setdefault("properties", {})[jsonio.NON_FINITE_KEY] = {
                "type": "object", "maxProperties": 1000,
                "additionalProperties": {"enum": ["inf", "-inf", "nan"]},
            }
    elif isinstance(node, list):
        for value in node:
            _allow_non_finite(value)


_allow_non_finite(REPORT_JSON_SCHEMA)


def validate_report_json(text: str, *, head_sha: str | None, pr: int) -> dict:
    """Parse and check a report.json handed over from an untrusted run; UsageError/GitopsError on any mismatch."""
    from gitops.errors import GitopsError

    if len(text) > 10_000_000:
        raise GitopsError("report JSON is larger than 10 MB; refusing it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GitopsError(f"report JSON is not valid JSON: {exc}") from None
    from gitops.config.jsonschema_tools import strict_validator_class

    errors = sorted(strict_validator_class()(REPORT_JSON_SCHEMA).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
        raise GitopsError(f"report JSON does not match its schema at {where}: {errors[0].message[:200]}")
    if head_sha is not None and data["head_sha"] != head_sha:
        raise GitopsError(f"report JSON is for head {data['head_sha'][:12] or '(none)'}, not {head_sha[:12]}; "
                          "refusing to post a report for another commit")
    if data["pr"] is not None and data["pr"] != pr:
        raise GitopsError(f"report JSON is for PR #{data['pr']}, not #{pr}")
    return data


def check_markdown(body: str) -> None:
    """Check a report body before posting it as a PR comment.

    Raises GitopsError when it does not start with COMMENT_MARKER or exceeds COMMENT_MAX_CHARS characters.
    """
    from gitops.errors import GitopsError

    if not body.startswith(COMMENT_MARKER):
        raise GitopsError(f"the report must start with {COMMENT_MARKER} (make it with gitops report)")
    if len(body) > COMMENT_MAX_CHARS:
        raise GitopsError(f"the report is {len(body)} characters; GitHub allows {COMMENT_MAX_CHARS}")


def write_step_summary(text: str) -> None:
    """Append `text` (newline-terminated) to the file `$GITHUB_STEP_SUMMARY` names, which GitHub Actions shows
    on the job's summary page; does nothing outside Actions (variable unset or empty).
    """
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")

