"""The registry site: data collected from a real local registry, HTML, links, charts, diffs, atomic writes.

The registry is built once per session by the real loop: two tiny models trained on CPU, released
with `gitops.registry.release.release`, promoted with `versions.promote` (wine-mlp v1.0.0 -> v1.1.0
(learning rate) -> v2.0.0 (hidden sizes), digits-mlp v1.0.0 -> v1.0.1 (release.yaml only)).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_VOID_OK = {"path", "use", "rect", "circle", "stop", "ellipse", "line", "polyline", "polygon"}

TRAIN_YAML = """# yaml-language-server: $schema=../../schemas/train.schema.json
seed: 0
batch_size: 32
steps: 60
optimizer:
  name: adam
  learning_rate: 0.01
eval_every: 20
log_every: 10
checkpoint:
  every_steps: 60
  best_metric: val/loss
"""
RELEASE_YAML = """# yaml-language-server: $schema=../../schemas/release.schema.json
description: {description}
owners: ["@ml-platform"]
headline_metric: test/accuracy
gates:
  - metric: test/accuracy
    min: 0.2
"""


# --- the registry (built once per session, shared with test_site_browser.py) -------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, message: str) -> None:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def build_registry(base: Path) -> Path:
    """A git repository with two released models, several versions and stage moves (idempotent)."""
    repo = base / "site-registry"
    if (repo / ".done").is_file():
        return repo
    from gitops.api import release
    from gitops.backends.local import LocalBackend
    from gitops.registry import versions

    shutil.rmtree(repo, ignore_errors=True)
    (repo / "models").mkdir(parents=True)
    shutil.copytree(REPO / "schemas", repo / "schemas")
    for name, source, description in (("wine-mlp", "wine-mlp", "Wine cultivars from 13 measurements."),
                                      ("digits-mlp", "digits-mlp", "Handwritten 8x8 digits.")):
        folder = repo / "models" / name
        folder.mkdir()
        for kind in ("model", "data"):
            shutil.copyfile(REPO / "models" / source / f"{kind}.yaml", folder / f"{kind}.yaml")
        (folder / "train.yaml").write_text(TRAIN_YAML, encoding="utf-8")
        (folder / "release.yaml").write_text(RELEASE_YAML.format(description=description), encoding="utf-8")
    _edit(repo / "models/digits-mlp/model.yaml", "[128, 64]", "[32]")
    (repo / ".gitignore").write_text("runs/\n.gitops/\n.jax_cache/\nsite/\n", encoding="utf-8")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Ada Lovelace")
    _git(repo, "config", "user.email", "ada@example.com")
    _git(repo, "config", "commit.gpgsign", "false")
    _git(repo, "config", "tag.gpgsign", "false")
    _commit(repo, "Add wine-mlp and digits-mlp (#1)")
    backend = LocalBackend(repo)

    release(repo, backend, "wine-mlp")
    release(repo, backend, "digits-mlp")
    versions.promote(backend, "wine-mlp@v1.0.0", "staging")

    _edit(repo / "models/wine-mlp/train.yaml", "learning_rate: 0.01", "learning_rate: 0.02")
    _commit(repo, "wine-mlp: faster learning rate (#2)")
    release(repo, backend, "wine-mlp")
    versions.promote(backend, "wine-mlp@v1.1.0", "production")

    _edit(repo / "models/digits-mlp/release.yaml", "Handwritten 8x8 digits.", "Handwritten 8x8 digits, 0-9.")
    _commit(repo, "digits-mlp: describe the labels (#3)")
    release(repo, backend, "digits-mlp")
    versions.promote(backend, "digits-mlp@v1.0.1", "production")

    _edit(repo / "models/wine-mlp/model.yaml", "hidden_sizes: [32]", "hidden_sizes: [48, 24]")
    _commit(repo, "wine-mlp: two hidden layers (#4)")
    release(repo, backend, "wine-mlp")
    versions.promote(backend, "wine-mlp@v2.0.0", "staging")
    (repo / ".done").write_text("", encoding="utf-8")
    return repo


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_registry(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def site(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gitops site --out site` run in the registry, exactly as the release workflow runs it."""
    import os

    from gitops.cli import app

    old = Path.cwd()
    os.chdir(registry)
    try:
        result = CliRunner().invoke(app, ["site", "--out", "site", "--backend", "local"])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    assert "2 model(s), 5 version(s)" in result.output
    return registry / "site"


# --- HTML helpers ----------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Checks nesting as it parses and collects links, ids, scripts and SVG texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.errors: list[str] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("href", "src", "xlink:href", "action"):
            if a.get(key) and not (tag == "use" and a[key].startswith("#")):
                self.links.append(a[key])
        if tag == "script":
            self._script = a.get("id") or f"inline-{len(self.scripts)}"
            self.scripts[self._script] = ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}> at {self.getpos()}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()

    def handle_data(self, data):
        if self._script is not None:
            self.scripts[self._script] += data


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors, page.errors[:5]
    assert page.stack == [], page.stack
    return page


def embedded_configs(page: Path) -> dict[str, dict[str, str]]:
    return json.loads(parse_page(page).scripts["configs"])


# --- tests -------------------------------------------------------------------------------------------------


def test_collect_registry_reads_tags_and_archives(registry: Path):
    from gitops.backends.local import LocalBackend
    from gitops.site.data import collect_registry

    data = collect_registry(registry, LocalBackend(registry), cache=registry / ".gitops/cache/test")
    assert [m.name for m in data.models] == ["digits-mlp", "wine-mlp"]
    digits, wine = data.models
    assert [v.version for v in wine.versions] == ["v1.0.0", "v1.1.0", "v2.0.0"]
    assert wine.stages == {"production": "v1.1.0", "staging": "v2.0.0"}
    assert [v.stages for v in wine.versions] == [[], ["production"], ["staging"]]
    assert [v.bump for v in wine.versions] == ["initial", "minor", "major"]
    assert [v.pr for v in wine.versions] == [1, 2, 4]
    assert [v.version for v in digits.versions] == ["v1.0.0", "v1.0.1"] and digits.versions[1].bump == "patch"
    # A patch release reuses the previous run, whose config.resolved.yaml predates the release.yaml edit.
    assert digits.description in ("Handwritten 8x8 digits, 0-9.", "Handwritten 8x8 digits.")
    head = _git(registry, "rev-parse", "HEAD")
    for v in wine.versions + digits.versions:
        assert v.note is None, v.note
        assert v.author == "Ada Lovelace <ada@example.com>" and len(v.commit) == 40
        assert 0.0 <= v.metrics["test/accuracy"] <= 1.0 and v.headline_metric == "test/accuracy"
        assert v.packages["jax"] and v.packages["python"] and v.device == "cpu x1"
        assert len(v.training_fingerprint or "") == 64 and len(v.data_fingerprint or "") == 64
        assert {row["split"] for row in v.curve} == {"train", "val"} and v.curve[-1]["step"] == 60
        assert v.config["model"]["architecture"] == "mlp"
    assert wine.versions[-1].commit == head
    assert wine.versions[0].config["train"]["optimizer"]["learning_rate"] == 0.01
    assert wine.versions[2].config["model"]["hidden_sizes"] == [48, 24]
    events = [(e.action, e.version, e.stage) for e in wine.events]
    # Tag dates have one-second resolution: within a second, a version's registration comes first.
    assert events.index(("register", "v2.0.0", None)) < events.index(("assign", "v2.0.0", "staging"))
    # a second collection reads the cache, not the archives
    for archive in (registry / ".gitops/releases").rglob("*.tar.gz"):
        archive.rename(archive.with_suffix(".moved"))
    try:
        again = collect_registry(registry, LocalBackend(registry), cache=registry / ".gitops/cache/test")
        assert again == data
    finally:
        for moved in (registry / ".gitops/releases").rglob("*.moved"):
            moved.rename(moved.with_suffix(".gz"))


def test_index_lists_models_with_latest_stages_and_headline(site: Path):
    text = (site / "index.html").read_text(encoding="utf-8")
    page = parse_page(site / "index.html")
    assert "filter" in page.ids and "models" in page.ids
    for model, latest in (("wine-mlp", "v2.0.0"), ("digits-mlp", "v1.0.1")):
        row = re.search(rf'<tr data-search="{model}[^"]*">(.*?)</tr>', text, re.S)
        assert row, model
        assert f'href="models/{model}.html#{latest}">{latest}</a>' in row.group(1)
        assert "test/accuracy" in row.group(1)
    wine_row = re.search(r'<tr data-search="wine-mlp[^"]*">(.*?)</tr>', text, re.S).group(1)
    assert "production v1.1.0" in wine_row and "staging v2.0.0" in wine_row
    assert "v2.0.0 promoted to" in wine_row  # the last change
    assert text.index(">digits-mlp</a>") < text.index(">wine-mlp</a>")


def test_pages_parse_and_every_link_is_relative_and_resolves(site: Path):
    pages = sorted(site.rglob("*.html"))
    assert [p.relative_to(site).as_posix() for p in pages] == [
        "index.html", "models/digits-mlp.html", "models/wine-mlp.html"]
    ids = {p: set(parse_page(p).ids) for p in pages}
    checked = 0
    all_links: list[str] = []
    for page in pages:
        parsed = parse_page(page)
        assert len(parsed.ids) == len(set(parsed.ids)), "duplicate ids"
        for link in parsed.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc and not link.startswith("/"), (page, link)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            assert target.is_file() and target.is_relative_to(site.resolve()), (page, link)
            if parts.fragment:
                assert unquote(parts.fragment) in ids[target], (page, link)
            checked += 1
            all_links.append(link)
    assert checked > 15
    text = "".join(p.read_text(encoding="utf-8") for p in pages)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    assert "https://" not in text and not any("//" in link for link in all_links)


def test_model_page_versions_lineage_and_copy_lines(site: Path, registry: Path):
    text = (site / "models/wine-mlp.html").read_text(encoding="utf-8")
    for version in ("v1.0.0", "v1.1.0", "v2.0.0"):
        assert f'<details class="version" id="{version}"' in text
        assert f"gitops pull wine-mlp@{version}</code>" in text
        assert f'model = gitops.load("wine-mlp@{version}")' in text
    assert '<details class="version" id="v2.0.0" open>' in text and '<details class="version" id="v1.0.0">' in text
    assert "parameter shapes changed" in text and "training config changed" in text
    commit = _git(registry, "rev-parse", "wine-mlp@v1.1.0^{commit}")
    assert f"<code>{commit}</code>" in text and f'title="{commit}">{commit[:10]}</code>' in text
    assert "<dt>Pull request</dt><dd>#2</dd>" in text
    assert "<dt>Device</dt><dd>cpu x1</dd>" in text and "jax 0." in text
    assert re.search(r"<dt>Training fingerprint</dt><dd><code>[0-9a-f]{64}</code>", text)
    assert re.search(r"<dt>Data fingerprint</dt><dd><code>[0-9a-f]{64}</code>", text)
    assert "Ada Lovelace" in text and "promoted to" in text


def test_svg_charts_have_axis_labels_units_titles_and_unique_ids(site: Path):
    text = (site / "models/wine-mlp.html").read_text(encoding="utf-8")
    svgs = re.findall(r"<svg\b.*?</svg>", text, re.S)
    across = [s for s in svgs if "version (release order)" in s]
    curves = [s for s in svgs if "step (optimizer updates)" in s]
    assert len(across) >= 4  # test/val accuracy and loss
    assert len(curves) == 6  # loss and accuracy for each of three versions
    assert len(across) + len(curves) == len(svgs)
    for svg in across:
        assert "<title>" in svg and re.search(r"\((fraction, 0–1|cross-entropy, nats)\)", svg)
        for version in ("v1.0.0", "v1.1.0", "v2.0.0"):
            assert f">{version}<" in svg  # tick labels are text, not paths (svg.fonttype none)
    for svg in curves:
        assert ">train " in svg and ">val " in svg  # direct labels at the ends of the lines
        assert re.search(r'stroke-dasharray', svg)  # the second series is dashed, not only another colour
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', text))
    assert refs <= set(ids)


def test_charts_are_deterministic():
    from gitops.site import charts

    points = [("v1.0.0", 0.9), ("v1.1.0", 0.93)]
    a = charts.metric_across_versions("k", "test/accuracy", points, higher_is_better=True)
    b = charts.metric_across_versions("k", "test/accuracy", points, higher_is_better=True)
    assert a == b and "<dc:date>" not in a and "higher is better" in a


def test_embedded_configs_and_diffs_are_right(site: Path, registry: Path):
    from gitops.config.yamlio import load_yaml_text
    from gitops.site.data import config_diff, flatten_config

    configs = embedded_configs(site / "models/wine-mlp.html")
    assert sorted(configs) == ["v1.0.0", "v1.1.0", "v2.0.0"]
    for version, flat in configs.items():
        with tarfile.open(registry / f".gitops/releases/wine-mlp/{version}/wine-mlp-{version}.tar.gz") as tar:
            resolved = load_yaml_text(tar.extractfile("config.resolved.yaml").read()).data
        assert flat == flatten_config(resolved)

    def changed(a: str, b: str) -> dict:
        return {k: (x, y) for k, x, y in config_diff(_unflat(configs[a]), _unflat(configs[b]))}

    assert changed("v1.0.0", "v1.1.0") == {"train.optimizer.learning_rate": ("0.01", "0.02")}
    assert changed("v1.1.0", "v2.0.0") == {"model.hidden_sizes": ("[32]", "[48, 24]")}
    assert set(changed("v1.0.0", "v2.0.0")) == {"train.optimizer.learning_rate", "model.hidden_sizes"}
    assert changed("v2.0.0", "v2.0.0") == {}
    digits = embedded_configs(site / "models/digits-mlp.html")
    assert {k for k in digits["v1.0.1"] if digits["v1.0.1"][k] != digits["v1.0.0"].get(k)} <= {"release.description"}
    # the no-script fallback: each version lists its changes from the one before
    text = (site / "models/wine-mlp.html").read_text(encoding="utf-8")
    section = text[text.index('id="v1.1.0"'):text.index('id="v1.0.0"')]
    assert '<td class="key">train.optimizer.learning_rate</td><td class="old">0.01</td><td class="new">0.02</td>' in section


def _unflat(flat: dict[str, str]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = json.loads(value)
    return out


def test_flatten_and_diff_edge_cases():
    from gitops.site.data import config_diff, flatten_config

    assert flatten_config({"a": {"b": 1, "c": [1, 2]}, "d": {}, "e": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "{}", "e": "null"}
    assert config_diff({"a": 1, "b": 2}, {"a": 1.5, "c": 3}) == [("a", "1", "1.5"), ("b", "2", None), ("c", None, "3")]


def test_site_is_deterministic_and_written_atomically(site: Path, registry: Path, tmp_path: Path, monkeypatch):
    from gitops.backends.local import LocalBackend
    from gitops.site import render

    out = tmp_path / "site"
    render.build_site(registry, LocalBackend(registry), out)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full while rendering")

    monkeypatch.setattr(render, "render_model", boom)
    with pytest.raises(RuntimeError):
        render.build_site(registry, LocalBackend(registry), out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folders left behind
    monkeypatch.undo()
    render.build_site(registry, LocalBackend(registry), out)  # replacing an earlier site works
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_refuses_to_replace_a_folder_it_did_not_write(registry: Path, tmp_path: Path, monkeypatch):
    from gitops.cli import app

    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "notes.md").write_text("mine", encoding="utf-8")
    monkeypatch.chdir(registry)
    result = CliRunner().invoke(app, ["site", "--out", str(precious), "--backend", "local"])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (precious / "notes.md").read_text(encoding="utf-8") == "mine"
    result = CliRunner().invoke(app, ["site", "--out", ".", "--backend", "local"])
    assert result.exit_code == 2 and "repository" in result.output


def test_empty_registry_gives_an_index(tmp_path: Path, monkeypatch):
    from gitops.cli import app

    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["site", "--out", "out", "--backend", "local"])
    assert result.exit_code == 0, result.output
    assert "No releases yet" in (tmp_path / "out/index.html").read_text(encoding="utf-8")
    parse_page(tmp_path / "out/index.html")


class _Assets:
    """A backend stand-in serving release assets from a dict (for checksum and archive tests)."""

    name = "fake"

    def __init__(self, assets: dict[str, bytes]):
        self.assets = assets

    def list_assets(self, tag):
        return sorted(self.assets)

    def download_asset(self, tag, asset, dest):
        dest.write_bytes(self.assets[asset])
        return dest


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_archive_reading_is_safe_and_checksummed(tmp_path: Path):
    import hashlib

    from gitops.errors import GitopsError
    from gitops.registry import tags
    from gitops.site.data import read_members, release_files

    archive = _tar([
        (_member("../manifest.json"), b'{"evil": 1}'),
        (_member("metrics.json", tarfile.SYMTYPE, "/etc/passwd"), None),
        (_member("run/metrics.json"), b'{"test/accuracy": 0.5}'),
        (_member("manifest.json"), b'{"device_kind": "cpu"}'),
        (_member("config/manifest.json"), b"{}"),
        (_member("a/b/history.jsonl"), b"{}"),
    ])
    path = tmp_path / "x.tar.gz"
    path.write_bytes(archive)
    assert read_members(path) == {"metrics.json": b'{"test/accuracy": 0.5}', "manifest.json": b'{"device_kind": "cpu"}'}
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path.parent / "manifest.json").exists()

    vs = tags.VersionState("v1.0.0", "c" * 40, "m@v1.0.0", "2026-01-01T00:00:00+00:00", "A <a@x>", "")
    digest = hashlib.sha256(archive).hexdigest()
    good = _Assets({"m-v1.0.0.tar.gz": archive, "SHA256SUMS": f"{digest}  m-v1.0.0.tar.gz\n".encode()})
    assert "manifest.json" in release_files(good, vs, {"sha256": digest}, tmp_path / "cache")
    bad = _Assets({"m-v1.0.0.tar.gz": archive + b"x", "SHA256SUMS": f"{digest}  m-v1.0.0.tar.gz\n".encode()})
    with pytest.raises(GitopsError, match="checksum"):
        release_files(bad, vs, {}, tmp_path / "cache2")
    sums = f"{hashlib.sha256(archive + b'x').hexdigest()}  m-v1.0.0.tar.gz\n".encode()
    with pytest.raises(GitopsError, match="disagrees with the tag's recorded checksum"):  # both swapped
        release_files(_Assets({"m-v1.0.0.tar.gz": archive + b"x", "SHA256SUMS": sums}), vs, {"sha256": digest},
                      tmp_path / "cache3")
    with pytest.raises(GitopsError, match="no SHA256SUMS"):  # unverifiable archives are refused
        release_files(_Assets({"m-v1.0.0.tar.gz": archive}), vs, {"sha256": digest}, tmp_path / "cache6")
    half = len(archive) // 2
    parts = _Assets({"m-v1.0.0.tar.gz.part000": archive[:half], "m-v1.0.0.tar.gz.part001": archive[half:],
                     "SHA256SUMS": (f"{digest}  m-v1.0.0.tar.gz\n"
                                    f"{hashlib.sha256(archive[:half]).hexdigest()}  m-v1.0.0.tar.gz.part000\n"
                                    f"{hashlib.sha256(archive[half:]).hexdigest()}  m-v1.0.0.tar.gz.part001\n").encode()})
    assert release_files(parts, vs, {"sha256": digest}, tmp_path / "cache4")["metrics.json"].startswith(b"{")
    with pytest.raises(GitopsError, match="no SHA256SUMS"):
        release_files(_Assets({}), vs, {}, tmp_path / "cache5")


def test_version_without_archive_still_shows_its_tag_facts(registry: Path, tmp_path: Path):
    from gitops.backends.local import LocalBackend
    from gitops.site import render
    from gitops.site.data import collect_registry

    copy = tmp_path / "copy"
    shutil.copytree(registry, copy, ignore=shutil.ignore_patterns("site", "cache"))
    shutil.rmtree(copy / ".gitops/releases/wine-mlp/v1.0.0")
    data = collect_registry(copy, LocalBackend(copy))
    wine = data.models[1]
    assert "has no SHA256SUMS" in wine.versions[0].note and wine.versions[0].metrics
    render.write_site(data, copy / "site")
    text = (copy / "site/models/wine-mlp.html").read_text(encoding="utf-8")
    assert "Details from the release archive are missing" in text
    assert '<option value="v1.0.0" disabled>v1.0.0 (config unavailable)</option>' in text


def test_serve_previews_and_rebuilds_when_tags_change(registry: Path, tmp_path: Path):
    from gitops.backends.local import LocalBackend
    from gitops.registry import versions
    from gitops.site.render import build_site
    from gitops.site.serve import serve

    copy = tmp_path / "copy"
    shutil.copytree(registry, copy, ignore=shutil.ignore_patterns("site"))
    backend = LocalBackend(copy)
    started: dict = {}
    ready = threading.Event()

    def on_ready(server, watcher):
        started.update(server=server, watcher=watcher)
        ready.set()

    thread = threading.Thread(target=serve, kwargs=dict(
        build=lambda folder: build_site(copy, backend, folder), backend=backend, out=None, host="127.0.0.1",
        port=0, interval=0.2, log=lambda s: None, ready=on_ready), daemon=True)
    thread.start()
    assert ready.wait(60)
    server, watcher = started["server"], started["watcher"]
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = urllib.request.urlopen(f"{base}/models/digits-mlp.html", timeout=10).read().decode()
        assert "staging" not in page
        versions.promote(backend, "digits-mlp@v1.0.0", "staging")
        deadline = time.monotonic() + 30
        while watcher.rebuilds < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        page = urllib.request.urlopen(f"{base}/models/digits-mlp.html", timeout=10).read().decode()
        assert "&#9873; staging" in page or "⚑ staging" in page
        assert urllib.request.urlopen(f"{base}/site.css", timeout=10).status == 200
    finally:
        server.shutdown()
        thread.join(10)
    assert not thread.is_alive()


def test_pages_job_form_on_the_github_backend(registry: Path, site: Path, tmp_path: Path, monkeypatch,
                                              github_server, github_env):
    """`gitops site --out site` inside GitHub Actions reads tags and assets from GitHub (the emulator)."""
    from gitops.backends.github import GitHubBackend
    from gitops.backends.local import LocalBackend
    from gitops.cli import app

    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    gh = GitHubBackend.from_env()
    for tag in LocalBackend(registry).list_tags():
        name, _, email = tag.tagger.partition(" <")
        github_server.add_annotated_tag(tag.name, tag.commit, tag.message, tagger=name, email=email.rstrip(">"),
                                        date=tag.date)
        folder = registry / ".gitops/releases" / tag.name.replace("@", "/")
        if "@v" in tag.name and folder.is_dir():
            gh.publish_release(tag.name, tag.name, "notes", sorted(p for p in folder.iterdir() if not p.name.startswith(".")))
    copy = tmp_path / "checkout"
    shutil.copytree(registry, copy, ignore=shutil.ignore_patterns("site", ".gitops"))  # a fresh CI checkout
    monkeypatch.chdir(copy)
    result = CliRunner().invoke(app, ["site", "--out", "site"])
    assert result.exit_code == 0, result.output
    assert github_server.requests_matching("GET", r"/releases/assets/|/download/")  # archives came from GitHub
    for page in ("index.html", "models/wine-mlp.html", "models/digits-mlp.html"):
        ours = (copy / "site" / page).read_text(encoding="utf-8")
        local = (site / page).read_text(encoding="utf-8")
        assert ours == local.replace("from the local backend", "from the github backend"), page
