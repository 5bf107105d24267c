"""HTML for the registry site, written atomically: `write_site(data, out)`.

Pages: `index.html` (every model, filterable), `models/<model>.html` (versions, metric charts,
config diff between any two versions, stage history, per-version lineage, curves and pull lines)
and `site.css`. Links are relative and nothing loads from another host, so the folder works from
disk (file://), from `gitops site --serve` and from GitHub Pages alike. The two inline scripts are
small and optional (filter, diff selector); a Content-Security-Policy admits only them, by hash.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from gitops import jsonio
from gitops.errors import UsageError
from gitops.registry import gates
from gitops.site import charts
from gitops.site.data import ModelData, RegistryData, VersionData, config_diff, flatten_config

MARKER = ".gitops-site"
MAX_CURVE_POINTS = 400
_SKIP_CURVE_KEYS = {"step", "epoch", "split", "time", "learning_rate"}
_REGRESSION_LOSSES = {"mse", "mae", "huber"}

FILTER_JS = """(function () {
  var box = document.getElementById("filter");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#models tbody tr"));
  var count = document.getElementById("count");
  function apply() {
    var q = box.value.trim().toLowerCase(), shown = 0;
    rows.forEach(function (row) {
      var hit = !q || row.getAttribute("data-search").indexOf(q) >= 0;
      row.hidden = !hit;
      if (hit) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " models shown";
  }
  box.addEventListener("input", apply);
  apply();
})();"""

DIFF_JS = """(function () {
  var configs = JSON.parse(document.getElementById("configs").textContent);
  var a = document.getElementById("diff-a"), b = document.getElementById("diff-b");
  var body = document.querySelector("#diff-table tbody"), summary = document.getElementById("diff-summary");
  var has = function (o, k) { return Object.prototype.hasOwnProperty.call(o, k); };
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    tr.appendChild(td);
  }
  function show() {
    var A = configs[a.value] || {}, B = configs[b.value] || {}, keys = Object.keys(A), n = 0;
    Object.keys(B).forEach(function (k) { if (!has(A, k)) { keys.push(k); } });
    keys.sort();
    body.textContent = "";
    keys.forEach(function (k) {
      if (has(A, k) && has(B, k) && A[k] === B[k]) { return; }
      var kind = !has(A, k) ? "added" : (!has(B, k) ? "removed" : "changed");
      var tr = document.createElement("tr");
      tr.className = kind;
      cell(tr, k, "key");
      cell(tr, has(A, k) ? A[k] : "(absent)", "old");
      cell(tr, has(B, k) ? B[k] : "(absent)", "new");
      cell(tr, kind, "kind");
      body.appendChild(tr);
      n += 1;
    });
    document.getElementById("diff-table").hidden = n === 0;
    summary.textContent = n ? n + " key(s) differ between " + a.value + " and " + b.value + "."
      : (a.value === b.value ? "Choose two different versions." :
         "No differences: " + a.value + " and " + b.value + " have the same resolved config.");
  }
  document.getElementById("diff-swap").addEventListener("click", function () {
    var t = a.value; a.value = b.value; b.value = t; show();
  });
  a.addEventListener("change", show);
  b.addEventListener("change", show);
  document.getElementById("diff-controls").hidden = false;
  show();
  function openTarget() {
    var el = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (el && el.tagName === "DETAILS") { el.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();"""


# --- writing ------------------------------------------------------------------------------------------


def write_site(data: RegistryData, out: Path) -> Path:
    """Render into a temporary folder beside `out`, then swap it in; a failure leaves `out` as it was.

    Refuses to replace a non-empty folder that an earlier `gitops site` did not write (no marker).
    """
    out = Path(os.path.abspath(out))
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        for rel, content in render_site(data).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_target(out: Path) -> None:
    """Refuse an output folder that `gitops site` must not replace.

    Raises UsageError when `out` is a file, looks like a repository (`.git`, or `models/` without the
    site's marker file), or is a non-empty folder not written by `gitops site`.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if (out / ".git").exists() or (out / "models").is_dir() and not (out / MARKER).is_file():
        raise UsageError(f"{out} looks like a repository; choose an output folder such as site/")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(f"{out} is not empty and was not written by `gitops site`; refusing to replace it")


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, replacing an earlier site; the old one comes back if the move fails."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def render_site(data: RegistryData) -> dict[str, str]:
    """Every file of the site: relative path -> text."""
    files = {
        "index.html": render_index(data),
        "site.css": resources.files("gitops.site").joinpath("static/site.css").read_text(encoding="utf-8"),
        MARKER: jsonio.dumps({"generator": "gitops site", "backend": data.backend, "as_of": data.as_of}) + "\n",
    }
    for model in data.models:
        files[f"models/{slug(model.name)}.html"] = render_model(model, data)
    return files


# --- pages --------------------------------------------------------------------------------------------


def render_index(data: RegistryData) -> str:
    """The HTML of `index.html`: one row per model with its latest version, stages, headline metric and
    last change, and a client-side filter.
    """
    rows = []
    for m in data.models:
        latest = m.latest
        metric = m.headline_metric
        value = latest.metrics.get(metric) if latest and metric else None
        search = " ".join([m.name, *m.stages, m.description.lower()] + (["deprecated"] if m.deprecated else []))
        last = m.last_change
        rows.append(
            f'<tr data-search="{escape(search.lower())}">'
            f'<th scope="row"><a href="models/{slug(m.name)}.html">{escape(m.name)}</a>'
            + (' <span class="badge deprecated">deprecated</span>' if m.deprecated else "")
            + (f'<div class="desc">{escape(m.description)}</div>' if m.description else "")
            + "</th>"
            f"<td>{_version_link(m, latest) if latest else '<span class=muted>none</span>'}</td>"
            f"<td>{_stage_badges(m.stages, with_version=True) or '<span class=muted>none</span>'}</td>"
            f"<td>{_metric_cell(metric, value)}</td>"
            f"<td>{_event_text(last) if last else ''}</td></tr>"
        )
    body = f"""
<header>
  <h1>Model registry</h1>
  <p class="sub">{len(data.models)} model(s){_as_of(data)}</p>
</header>
<main>
  <p class="filter"><label for="filter">Filter models</label>
    <input type="search" id="filter" placeholder="name, stage or description" autocomplete="off">
    <span id="count" aria-live="polite"></span></p>
  <table id="models" class="list">
    <thead><tr><th scope="col">Model</th><th scope="col">Latest version</th><th scope="col">Stages</th>
      <th scope="col">Headline metric (latest)</th><th scope="col">Last change</th></tr></thead>
    <tbody>
{chr(10).join("      " + r for r in rows)}
    </tbody>
  </table>
  {'<p class="muted">No releases yet: release a model with <code>gitops release MODEL</code>.</p>' if not rows else ''}
</main>"""
    return _page("Model registry", body, data, css="site.css", scripts=[FILTER_JS])


def render_model(m: ModelData, data: RegistryData) -> str:
    """The HTML of one model's page (`models/<slug>.html`): stages, versions, metrics, charts and events."""
    task = _task(m)
    latest = m.latest
    parts = [f"""
<header>
  <nav><a href="../index.html">&larr; All models</a></nav>
  <h1>{escape(m.name)}{' <span class="badge deprecated">deprecated</span>' if m.deprecated else ''}</h1>
  {f'<p class="desc">{escape(m.description)}</p>' if m.description else ''}
  <p class="sub">{len(m.versions)} version(s){_as_of(data)}.
    Stages: {_stage_badges(m.stages, with_version=True) or 'none'}</p>
</header>
<main>"""]
    if latest:
        parts.append(f"""
<section id="use">
  <h2>Use the latest version ({escape(latest.version)})</h2>
  {_copy_lines(latest)}
</section>""")
    parts.append(_versions_table(m))
    parts.append(_metric_charts(m, task))
    parts.append(_diff_section(m))
    parts.append(_events_table(m))
    parts.append('<section id="details">\n<h2>Versions in detail</h2>')
    for v in reversed(m.versions):
        previous = _previous(m, v)
        parts.append(_version_details(m, v, previous, task, open_=v is latest))
    parts.append("</section>\n</main>")
    scripts = [DIFF_JS] if len(m.versions) > 1 else []
    return _page(f"{m.name} · Model registry", "\n".join(parts), data, css="../site.css", scripts=scripts)


def _versions_table(m: ModelData) -> str:
    rows = []
    metric = m.headline_metric
    for v in reversed(m.versions):
        flags = "" if v.active else ' <span class="badge deregistered">deregistered</span>'
        if v.semver.is_prerelease:
            flags += ' <span class="badge deregistered">pre-release</span>'
        rows.append(
            f'<tr><th scope="row"><a href="#{escape(v.version)}">{escape(v.version)}</a>{flags}</th>'
            f"<td>{_date(v.date)}</td><td>{_author(v.author)}</td>"
            f'<td><code title="{escape(v.commit)}">{escape(v.commit[:10])}</code></td>'
            f"<td>{f'#{v.pr}' if v.pr else '<span class=muted>-</span>'}</td>"
            f"<td>{escape(v.bump or '-')}</td><td>{escape(v.reason)}</td>"
            f"<td>{_stage_badges({s: v.version for s in v.stages}) or ''}</td>"
            f"<td class=num>{_metric_cell(metric, v.metrics.get(metric) if metric else None, name=False)}</td></tr>"
        )
    return f"""
<section id="versions">
  <h2>Versions</h2>
  <table class="list">
    <thead><tr><th scope="col">Version</th><th scope="col">Date</th><th scope="col">Author</th>
      <th scope="col">Commit</th><th scope="col">PR</th><th scope="col">Bump</th><th scope="col">Reason</th>
      <th scope="col">Stages</th><th scope="col">{escape(metric or 'metric')}</th></tr></thead>
    <tbody>
{chr(10).join("      " + r for r in rows)}
    </tbody>
  </table>
</section>"""


def _metric_charts(m: ModelData, task: str) -> str:

    names = m.metric_names
    order = {"test": 0, "val": 1, "train": 2}
    names.sort(key=lambda n: (n != m.headline_metric, order.get(n.split("/")[0], 3), n))
    figures = []
    for name in names:
        points = [(v.version, float(v.metrics[name])) for v in m.versions
                  if v.active and isinstance(v.metrics.get(name), int | float) and not isinstance(v.metrics.get(name), bool)]
        if not points:
            continue
        svg = charts.metric_across_versions(f"{slug(m.name)}-metric-{name}", name, points,
                                            higher_is_better=gates.direction(name), task=task)
        figures.append(f'<figure class="chart">{svg}<figcaption>{escape(name)} of each released version'
                       f"</figcaption></figure>")
    if not figures:
        return '<section id="metrics"><h2>Metrics across versions</h2><p class="muted">No metrics recorded.</p></section>'
    return ('<section id="metrics">\n<h2>Metrics across versions</h2>\n<div class="charts">\n'
            + "\n".join(figures) + "\n</div>\n</section>")


def _diff_section(m: ModelData) -> str:
    versions = [v for v in m.versions if v.config]
    if len(m.versions) < 2:
        return ('<section id="compare"><h2>Compare configs</h2><p class="muted">Only one version so far; '
                "nothing to compare.</p></section>")
    configs = {v.version: flatten_config(v.config) for v in versions}
    newest = list(reversed(m.versions))

    def options(selected: str | None) -> str:
        return "".join(
            f'<option value="{escape(v.version)}"{" selected" if v.version == selected else ""}'
            f'{"" if v.version in configs else " disabled"}>{escape(v.version)}'
            f'{"" if v.version in configs else " (config unavailable)"}</option>'
            for v in newest)

    b_default = versions[-1].version if versions else None
    a_default = versions[-2].version if len(versions) > 1 else b_default
    return f"""
<section id="compare">
  <h2>Compare configs</h2>
  <p id="diff-controls" hidden>
    <label for="diff-a">From</label> <select id="diff-a">{options(a_default)}</select>
    <button type="button" id="diff-swap" title="Swap the two versions">&#8646; swap</button>
    <label for="diff-b">to</label> <select id="diff-b">{options(b_default)}</select>
  </p>
  <p id="diff-summary" aria-live="polite">Each version's section below shows its changes from the
    version before it.</p>
  <table id="diff-table" class="diff" hidden>
    <thead><tr><th scope="col">Key</th><th scope="col">From</th><th scope="col">To</th>
      <th scope="col">Change</th></tr></thead>
    <tbody></tbody>
  </table>
  <script type="application/json" id="configs">{_script_json(configs)}</script>
</section>"""


def _events_table(m: ModelData) -> str:
    rows = [
        f"<tr><td>{_date(e.date)}</td><td>{_event_text(e, with_date=False)}</td>"
        f"<td>{_author(e.author)}</td><td><code>{escape(e.tag)}</code></td></tr>"
        for e in reversed(m.events)
    ]
    return f"""
<section id="stages">
  <h2>Releases and stage changes</h2>
  <table class="list">
    <thead><tr><th scope="col">Date</th><th scope="col">Event</th><th scope="col">By</th>
      <th scope="col">Tag</th></tr></thead>
    <tbody>
{chr(10).join("      " + r for r in rows)}
    </tbody>
  </table>
</section>"""


def _parent_html(parent: dict) -> str:
    """The parent version (linked to its model page) or weights file, what loaded and what was frozen."""
    if parent.get("model") and parent.get("version"):
        model, version = str(parent["model"]), str(parent["version"])
        what = f'<a href="{slug(model)}.html#{escape(version)}">{escape(model)}@{escape(version)}</a>'
        if parent.get("ref") and parent["ref"] != f"{model}@{version}":
            what += f' <span class="muted">({escape(str(parent["ref"]))})</span>'
    else:
        what = f"<code>{escape(str(parent.get('path') or parent.get('url') or '?'))}</code>"
    what += f" · params: {escape(str(parent.get('params', 'all')))}"
    frozen = parent.get("frozen") or []
    if frozen:
        what += " · frozen: " + ", ".join(f"<code>{escape(str(p))}</code>" for p in frozen)
    return what


def _version_details(m: ModelData, v: VersionData, previous: VersionData | None, task: str, open_: bool) -> str:
    stages = _stage_badges({s: v.version for s in v.stages})
    flags = "" if v.active else ' <span class="badge deregistered">deregistered</span>'
    if v.semver.is_prerelease:
        flags += ' <span class="badge deregistered">pre-release</span>'
    lineage = [
        ("Tag", f"<code>{escape(v.tag)}</code>"),
        ("Released", f"{_date(v.date)} by {_author(v.author)}"),
        ("Release commit", f"<code>{escape(v.commit)}</code>"),
        ("Pull request", f"#{v.pr}" if v.pr else '<span class="muted">not known</span>'),
        ("Bump", f"{escape(v.bump or '-')}: {escape(v.reason)}"),
        ("Previous version", f'<a href="#{escape(previous.version)}">{escape(previous.version)}</a>'
         if previous else "none (first release)"),
        ("Trained at commit", (f"<code>{escape(v.trained_at_commit)}</code>" if v.trained_at_commit else _unknown())
         + (f' (uncommitted files; reproduced at <code>{escape(v.reproduced_at_commit)}</code>)'
            if v.reproduced_at_commit else "")),
        *([("Starts from", _parent_html(v.parent))] if v.parent else []),
        ("Training fingerprint", _code(v.training_fingerprint)),
        ("Data fingerprint", _code(v.data_fingerprint)),
        ("Release fingerprint", _code(v.release_fingerprint)),
        ("Device", escape(v.device) if v.device else _unknown()),
        ("Parameters", f"{v.param_count:,}" if v.param_count is not None else _unknown()),
        ("Steps", (f"{v.steps:,}" if v.steps is not None else "?")
         + (f" (checkpoint from step {v.checkpoint_step:,})" if v.checkpoint_step is not None else "")),
        ("Packages", ", ".join(f"{escape(k)} {escape(x)}" for k, x in v.packages.items()) or _unknown()),
    ]
    dl = "\n".join(f"    <dt>{k}</dt><dd>{val}</dd>" for k, val in lineage)
    metrics = "".join(
        f"<tr><th scope=row>{escape(k)}</th><td class=num>{escape(_fmt(x))}</td></tr>"
        for k, x in sorted(v.metrics.items()))
    note = f'<p class="note">Details from the release archive are missing: {escape(v.note)}</p>' if v.note else ""
    return f"""
<details class="version" id="{escape(v.version)}"{' open' if open_ else ''}>
  <summary><span class="vname">{escape(v.version)}</span>{flags} {stages}
    <span class="muted">{_date(v.date)} · {escape(v.reason)}</span></summary>
  {note}
  <div class="cols">
    <div>
      <h3>Lineage</h3>
      <dl class="lineage">
{dl}
      </dl>
    </div>
    <div>
      <h3>Metrics</h3>
      {f'<table class="metrics"><tbody>{metrics}</tbody></table>' if metrics else '<p class="muted">none recorded</p>'}
      <h3>Get it</h3>
      {_copy_lines(v)}
    </div>
  </div>
  {_curves(m, v, task)}
  {_consecutive_diff(v, previous)}
</details>"""


def _curves(m: ModelData, v: VersionData, task: str) -> str:
    if not v.curve:
        return '<h3>Training curves</h3><p class="muted">No training history in the release archive.</p>'
    by_metric: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in v.curve:
        split = str(row.get("split") or "train")
        for key, value in row.items():
            if key in _SKIP_CURVE_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            by_metric.setdefault(key, {}).setdefault(split, []).append((float(row["step"]), float(value)))
    names = sorted(by_metric, key=lambda k: (k != "loss", k))
    figures = []
    for name in names:
        series = {s: _thin(pts) for s, pts in by_metric[name].items()}
        svg = charts.training_curves(f"{slug(m.name)}-{v.version}-curve-{name}", name, series, task=task,
                                     title=f"{v.version} {name} during training")
        figures.append(f'<figure class="chart">{svg}<figcaption>{escape(name)} by step, per split '
                       f'({", ".join(escape(s) for s in series)})</figcaption></figure>')
    return '<h3>Training curves</h3>\n<div class="charts">\n' + "\n".join(figures) + "\n</div>"


def _consecutive_diff(v: VersionData, previous: VersionData | None) -> str:
    if previous is None:
        return ""
    if not v.config or not previous.config:
        return f'<h3>Config changes from {escape(previous.version)}</h3><p class="muted">A config is unavailable.</p>'
    changes = config_diff(previous.config, v.config)
    if not changes:
        return f"<h3>Config changes from {escape(previous.version)}</h3><p>None (same resolved config).</p>"
    rows = "".join(
        f'<tr class="{_kind(a, b)}"><td class="key">{escape(k)}</td><td class="old">{escape(a if a is not None else "(absent)")}</td>'
        f'<td class="new">{escape(b if b is not None else "(absent)")}</td><td class="kind">{_kind(a, b)}</td></tr>'
        for k, a, b in changes)
    return (f'<h3>Config changes from {escape(previous.version)}</h3>\n<table class="diff"><thead><tr>'
            f'<th scope="col">Key</th><th scope="col">{escape(previous.version)}</th><th scope="col">{escape(v.version)}</th>'
            f'<th scope="col">Change</th></tr></thead><tbody>{rows}</tbody></table>')


# --- pieces ---------------------------------------------------------------------------------------------


def _page(title: str, body: str, data: RegistryData, *, css: str, scripts: list[str]) -> str:
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = ("default-src 'none'; style-src 'self' file: 'unsafe-inline'; img-src 'self' file: data:; "
           f"script-src {hashes or chr(39) + 'none' + chr(39)}; base-uri 'none'; form-action 'none'")
    script_tags = "".join(f"\n<script>{s}</script>" for s in scripts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="generator" content="gitops site">
<title>{escape(title)}</title>
<link rel="stylesheet" href="{css}">
</head>
<body>
{body}
<footer>Generated by <code>gitops site</code> from the {escape(data.backend)} backend{_as_of(data)}.</footer>{script_tags}
</body>
</html>
"""


def _copy_lines(v: VersionData) -> str:
    return (f'<p class="copy-label">Command line</p><pre class="copy"><code>gitops pull {escape(v.ref)}</code></pre>'
            f'<p class="copy-label">Python</p><pre class="copy"><code>import gitops\n'
            f'model = gitops.load("{escape(v.ref)}")</code></pre>')


def _stage_badges(stages: dict[str, str], with_version: bool = False) -> str:
    return " ".join(
        f'<span class="badge stage stage-{escape(slug(s))}" title="stage {escape(s)}: {escape(v)}">'
        f"&#9873; {escape(s)}{(' ' + escape(v)) if with_version else ''}</span>"
        for s, v in sorted(stages.items()))


def _version_link(m: ModelData, v: VersionData) -> str:
    return f'<a href="models/{slug(m.name)}.html#{escape(v.version)}">{escape(v.version)}</a>'


def _metric_cell(metric: str | None, value: Any, name: bool = True) -> str:
    if metric is None or value is None:
        return '<span class="muted">-</span>'
    label = f'<span class="mname">{escape(metric)}</span> ' if name else ""
    return f"{label}<span class=num>{escape(_fmt(value))}</span>"


def _event_text(e, with_date: bool = True) -> str:
    version = escape(e.version or "?")
    stage = escape(e.stage or "?")
    text = {
        "register": f"released {version}",
        "deregister": f"deregistered {escape(e.tag.split('@', 1)[1].split('!')[0]) if '@' in e.tag else version}",
        "assign": f"{version} promoted to <span class=\"badge stage\">&#9873; {stage}</span>",
        "unassign": f"{version} removed from <span class=\"badge stage\">&#9873; {stage}</span>",
        "deprecate": "model deprecated",
    }.get(e.action, escape(e.action))
    return text + (f' <span class="muted">· {_date(e.date)}</span>' if with_date else "")


def _date(iso: str) -> str:
    if not iso:
        return '<span class="muted">?</span>'
    shown = iso[:16].replace("T", " ")
    tz = iso[19:]
    shown += " UTC" if tz in ("Z", "+00:00") else (f" {tz}" if tz else "")
    return f'<time datetime="{escape(iso)}">{escape(shown)}</time>'


def _author(author: str) -> str:
    name, _, email = author.partition(" <")
    title = f' title="{escape(author)}"' if email else ""
    return f"<span{title}>{escape(name or author or '?')}</span>"


def _as_of(data: RegistryData) -> str:
    return f" · registry as of {_date(data.as_of)}" if data.as_of else ""


def _code(value: str | None) -> str:
    return f"<code>{escape(value)}</code>" if value else _unknown()


def _unknown() -> str:
    return '<span class="muted">not recorded</span>'


def _kind(old: str | None, new: str | None) -> str:
    return "added" if old is None else ("removed" if new is None else "changed")


def _previous(m: ModelData, v: VersionData) -> VersionData | None:
    i = m.versions.index(v)
    return m.versions[i - 1] if i > 0 else None


def _task(m: ModelData) -> str:
    for v in reversed(m.versions):
        loss = ((v.config.get("train") or {}).get("loss") if isinstance(v.config.get("train"), dict) else None)
        if loss in _REGRESSION_LOSSES:
            return "regression"
        if any(k.split("/")[-1] in ("mse", "mae") for k in v.metrics):
            return "regression"
    return "classification"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    points = sorted(points)
    if len(points) <= MAX_CURVE_POINTS:
        return points
    step = len(points) / MAX_CURVE_POINTS
    kept = [points[int(i * step)] for i in range(MAX_CURVE_POINTS - 1)]
    return [*kept, points[-1]]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"
    return str(value)


def _script_json(value: Any) -> str:
    text = jsonio.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def slug(name: str) -> str:
    """A file-name-safe form of a model or stage name (GTO names may hold '/')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def build_site(root: Path, backend: Any, out: Path, cache: Path | None = None) -> RegistryData:
    """Collect the registry from `backend` and write the site to `out` (atomically); returns the data."""
    from gitops.site.data import collect_registry

    check_target(Path(os.path.abspath(out)))  # fail before any download
    data = collect_registry(root, backend, cache)
    write_site(data, out)
    return data
