"""`train.start_from` (issue 21): a child model initialised from a release of this registry or from a
pinned weights file, frozen paths, lineage in manifest/tag/release.json, `lineage`, `ci stale`, and the
bad inputs (no such parent, cycles, shapes, checksums) that must stop before any run folder exists."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
from conftest import git, make_example_repo
from typer.testing import CliRunner

from gitops import api, config
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.errors import ConfigError, ServiceError
from gitops.learn import start_from
from gitops.registry import versions

pytestmark = pytest.mark.slow

CHILD = "digits-mlp-finetune"


def _shorten(repo, model: str, steps: int) -> None:
    path = repo / "models" / model / "train.yaml"
    text = path.read_text()
    lines = [f"steps: {steps}" if line.startswith("steps:") else line for line in text.splitlines()]
    if not any(line.startswith("steps:") for line in lines):
        lines.append(f"steps: {steps}")
    path.write_text("\n".join(lines) + "\n")


def _commit(repo, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def _meta(repo, tag: str) -> dict:
    return versions.release_metadata(git(repo, "tag", "-l", "--format=%(contents)", tag))


def _params(folder) -> dict:
    from flax import nnx

    from gitops import api

    return start_from.flatten(nnx.to_pure_dict(nnx.state(api.load(folder).model, nnx.Param)))


@pytest.fixture(scope="module")
def parented(tmp_path_factory):
    """A repository whose digits-mlp v1.0.0 (150 steps) holds the production stage."""
    repo = make_example_repo(tmp_path_factory.mktemp("start-from") / "repo")
    _shorten(repo, "digits-mlp", 150)
    _shorten(repo, CHILD, 100)
    _commit(repo, "short runs")
    backend = LocalBackend(repo)
    api.release(repo, backend, "digits-mlp")
    versions.promote(backend, "digits-mlp@v1.0.0", "production")
    return repo


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_child_fine_tunes_from_production_records_lineage_and_follows_a_stage_move(parented, monkeypatch):
    repo = parented
    monkeypatch.chdir(repo)
    dry = _run("train", CHILD, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "start from: digits-mlp@v1.0.0 (digits-mlp@production, sha256 " in dry.stdout
    assert "frozen (2): hidden/0/bias, hidden/0/kernel" in dry.stdout
    assert not (repo / "runs" / CHILD).exists()  # a dry run writes nothing

    result = _run("train", CHILD)
    assert result.exit_code == 0, result.output
    cfg = config.load(CHILD, repo)
    run = repo / "runs" / CHILD / cfg.short_fingerprint
    manifest = json.loads((run / "manifest.json").read_text())
    parent_sha = _meta(repo, "digits-mlp@v1.0.0")["sha256"]
    record = manifest["start_from"]
    assert (record["model"], record["version"], record["sha256"], record["ref"]) == (
        "digits-mlp", "v1.0.0", parent_sha, "digits-mlp@production")
    assert record["loaded"] == ["head/bias", "head/kernel", "hidden/0/bias", "hidden/0/kernel", "hidden/1/bias",
                                "hidden/1/kernel"]
    assert record["frozen"] == ["hidden/0/bias", "hidden/0/kernel"]
    parent, child = _params(repo / ".gitops/pulled/digits-mlp/v1.0.0"), _params(run)
    for path in ("hidden/0/kernel", "hidden/0/bias"):  # frozen: exactly the parent's
        assert np.array_equal(np.asarray(parent[path]), np.asarray(child[path]))
    for path in ("hidden/1/kernel", "head/kernel"):  # trained on from the parent
        assert not np.array_equal(np.asarray(parent[path]), np.asarray(child[path]))

    done = api.release(repo, LocalBackend(repo), CHILD)
    assert done.tag == f"{CHILD}@v1.0.0"
    meta = _meta(repo, done.tag)
    assert meta["start_from"]["version"] == "v1.0.0" and meta["start_from"]["sha256"] == parent_sha
    archive = repo / ".gitops/releases" / CHILD / "v1.0.0" / f"{CHILD}-v1.0.0.tar.gz"
    with tarfile.open(archive) as tar:
        inside = json.loads(tar.extractfile("release.json").read())
    assert inside["start_from"]["frozen"] == ["hidden/0/bias", "hidden/0/kernel"]
    history = _run("history", CHILD)
    assert "parents (train.start_from):" in history.stdout
    assert re.search(r"\n\s*v1\.0\.0\s+digits-mlp@v1\.0\.0 \(digits-mlp@production, sha256 [0-9a-f]{12}\)", history.stdout)
    lineage = _run("lineage", "digits-mlp@v1.0.0")
    assert lineage.exit_code == 0, lineage.output
    assert lineage.stdout.splitlines()[:2] == ["digits-mlp@v1.0.0  [production] <", f"  -> {CHILD}@v1.0.0"]
    doc = json.loads(_run("lineage", f"{CHILD}@v1.0.0", "--json").stdout)
    assert [(a["model"], a["version"]) for a in doc["ancestors"]] == [("digits-mlp", "v1.0.0")]
    assert "no child's parent stage has moved" in _run("ci", "stale").stdout

    # the parent moves on: a pinned version keeps its fingerprint, the stage reference does not
    pinned = ["train.start_from.model=digits-mlp@v1.0.0"]
    pinned_fp = config.load(CHILD, repo, pinned).training_fingerprint
    _shorten(repo, "digits-mlp", 170)
    _commit(repo, "digits-mlp: 170 steps")
    assert api.release(repo, LocalBackend(repo), "digits-mlp").tag == "digits-mlp@v1.1.0"
    assert config.load(CHILD, repo).training_fingerprint == cfg.training_fingerprint  # promotion decides, not release
    versions.promote(LocalBackend(repo), "digits-mlp@v1.1.0", "production")
    assert config.load(CHILD, repo, pinned).training_fingerprint == pinned_fp
    moved = config.load(CHILD, repo)
    assert moved.training_fingerprint != cfg.training_fingerprint
    assert moved.train.start_from["resolved"]["version"] == "v1.1.0"
    stale = _run("ci", "stale")
    assert f"{CHILD}: parent digits-mlp@production moved v1.0.0 -> v1.1.0 (latest release v1.0.0)" in stale.stdout
    head = git(repo, "rev-parse", "HEAD").strip()
    plan = json.loads(_run("ci", "plan", "--base", head, "--head", head).stdout)
    assert [(c["model"], c["reason"]) for c in plan["train"]] == [
        (CHILD, "parent digits-mlp@production moved v1.0.0 -> v1.1.0")]
    again = api.release(repo, LocalBackend(repo), CHILD)
    assert (again.tag, again.bump, again.reason) == (
        f"{CHILD}@v1.1.0", "minor", "parent digits-mlp@production moved v1.0.0 -> v1.1.0")
    assert "no child's parent stage has moved" in _run("ci", "stale").stdout
    chain = _run("lineage", f"{CHILD}@v1.1.0").stdout
    assert chain.splitlines()[0] == "digits-mlp@v1.1.0  [production]"

    # a parent deprecated later: the child's PR report and its lineage say so
    assert _run("deprecate", "digits-mlp").exit_code == 0
    child_run = repo / "runs" / CHILD / config.load(CHILD, repo).short_fingerprint
    report = _run("report", str(child_run))
    assert report.exit_code == 0, report.output
    assert "Starts from: digits-mlp@v1.1.0 (digits-mlp@production, sha256 " in report.stdout
    assert "the parent model digits-mlp is deprecated" in report.stdout
    assert "digits-mlp@v1.1.0  model deprecated" in _run("lineage", f"{CHILD}@v1.1.0").stdout
    site = _run("site", "--out", str(repo / "site"))
    assert site.exit_code == 0, site.output
    page = (repo / "site/models" / f"{CHILD}.html").read_text()
    assert ('Starts from</dt><dd><a href="digits-mlp.html#v1.1.0">digits-mlp@v1.1.0</a> '
            '<span class="muted">(digits-mlp@production)</span> · params: all · frozen: <code>hidden/0/bias</code>') in page


def test_shapes_that_do_not_fit_stop_before_a_run_folder_and_strict_false_skips_them(parented, monkeypatch):
    monkeypatch.chdir(parented)
    wider = ["model.hidden_sizes=[128, 32]"]  # hidden/1 and head change shape; hidden/0 still fits
    result = _run("train", CHILD, *(a for s in wider for a in ("--set", s)))
    assert result.exit_code == 1
    assert "strict: true): parameters don't fit: head/kernel (parent (64, 10), this model (32, 10))" in result.output
    assert "Traceback" not in result.output
    fp = config.load(CHILD, parented, wider).short_fingerprint
    assert not (parented / "runs" / CHILD / fp).exists()
    from gitops.learn import data

    loose = config.load(CHILD, parented, [*wider, "train.start_from.strict=false", "train.start_from.params=backbone"])
    init = start_from.prepare(loose, parented, data.load(loose.data, parented).preprocessing)
    assert init.record["loaded"] == ["hidden/0/bias", "hidden/0/kernel"]  # the head is never in a backbone
    assert [s.split(" ")[0] for s in init.record["skipped"]] == ["hidden/1/bias", "hidden/1/kernel"]
    bad = _run("train", CHILD, "--set", "train.start_from.freeze=[encoder/*]")
    assert bad.exit_code == 1 and "freeze: encoder/* match no parameter" in bad.output


def test_pinned_weights_file_loads_and_a_wrong_checksum_stops(parented, monkeypatch, tmp_path):
    from safetensors.numpy import save_file

    from gitops.learn import data

    monkeypatch.chdir(parented)
    from gitops.registry import pull

    parent = _params(pull.pull(parented, LocalBackend(parented), "digits-mlp@v1.0.0"))
    weights = parented / "weights"
    weights.mkdir(exist_ok=True)
    save_file({k.replace("/", "."): np.asarray(v) for k, v in parent.items()}, str(weights / "digits.safetensors"))
    np.savez(weights / "digits.npz", **{k: np.asarray(v) for k, v in parent.items() if not k.startswith("head")})
    folder = parented / "models" / "digits-from-file"
    folder.mkdir()
    for kind in ("model", "data", "release"):
        (folder / f"{kind}.yaml").write_text("extends: ../digits-mlp\n")
    sha = start_from._sha256(weights / "digits.safetensors")
    (folder / "train.yaml").write_text(
        "extends: ../digits-mlp\nsteps: 150\nstart_from:\n  path: weights/digits.safetensors\n"
        f"  sha256: {sha}\n  format: safetensors\n  params: backbone\n")
    assert _run("validate", "models/digits-from-file").exit_code == 0
    cfg = config.load("digits-from-file", parented)
    prep = data.load(cfg.data, parented).preprocessing
    init = start_from.prepare(cfg, parented, prep)
    assert init.record["loaded"] == ["hidden/0/bias", "hidden/0/kernel", "hidden/1/bias", "hidden/1/kernel"]
    assert np.array_equal(init.values["hidden/1/kernel"], np.asarray(parent["hidden/1/kernel"]))
    npz = config.load("digits-from-file", parented, ["train.start_from.path=weights/digits.npz",
                                                     f"train.start_from.sha256={start_from._sha256(weights / 'digits.npz')}",
                                                     "train.start_from.format=npz"])
    assert start_from.prepare(npz, parented, prep).record["format"] == "npz"
    assert npz.training_fingerprint != cfg.training_fingerprint  # the pin is in the fingerprint
    # the same file from a URL (real HTTP on 127.0.0.1), downloaded once into the cache by checksum
    import functools
    import http.server
    import threading

    monkeypatch.setenv("GITOPS_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(weights))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/digits.safetensors"
        with pytest.raises(ConfigError, match="train.start_from"):  # path and url together
            config.load("digits-from-file", parented, [f"train.start_from.url={url}"])
        (folder / "train.yaml").write_text((folder / "train.yaml").read_text().replace(
            "path: weights/digits.safetensors", f"url: {url}"))
        remote = config.load("digits-from-file", parented)
        init = start_from.prepare(remote, parented, prep)
        assert init.record["url"] == url and len(init.record["loaded"]) == 4
        assert (tmp_path / "cache" / "weights" / sha).is_file()
        server.shutdown()
        server.server_close()  # nothing listens any more
        assert start_from.prepare(remote, parented, prep).record["loaded"] == init.record["loaded"]  # from the cache
        gone = config.load("digits-from-file", parented, [f"train.start_from.url={url}x",
                                                          "train.start_from.sha256=" + "e" * 64])  # not cached
        with pytest.raises(ServiceError, match="download failed"):  # the server is down: exit 3, no traceback
            start_from.prepare(gone, parented, prep)
    finally:
        server.shutdown()
        server.server_close()
    (folder / "train.yaml").write_text((folder / "train.yaml").read_text().replace(
        f"url: {url}", "path: weights/digits.safetensors"))
    wrong = "f" * 64
    result = _run("train", "digits-from-file", "--set", f"train.start_from.sha256={wrong}")
    assert result.exit_code == 1 and f"has sha256 {sha}, the config pins {wrong}" in result.output
    assert not (parented / "runs" / "digits-from-file").exists()


def test_pinned_orbax_folder_loads_from_a_path_and_a_url_and_refuses_what_its_list_does_not_pin(
        parented, monkeypatch, tmp_path):
    """An Orbax pytree folder from outside, pinned by a checksum list (`gitops data checksums`) and the
    list's own sha256, loads from the repository and from a URL prefix; a changed or unlisted file stops it."""
    import functools
    import http.server
    import shutil
    import threading

    import orbax.checkpoint as ocp

    from gitops.errors import GitopsError, IntegrityError
    from gitops.learn import data
    from gitops.registry import pull

    monkeypatch.chdir(parented)
    monkeypatch.setenv("GITOPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GITOPS_DATA_CACHE", str(tmp_path / "data-cache"))
    parent = _params(pull.pull(parented, LocalBackend(parented), "digits-mlp@v1.0.0"))
    nested: dict = {}
    for key, value in parent.items():  # what a Flax user saves: the nested dict of parameters
        node = nested
        *head, leaf = key.split("/")
        for part in head:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(value)
    ckpt = parented / "weights" / "digits-orbax"
    with ocp.StandardCheckpointer() as checkpointer:  # saves asynchronously; leaving waits for the commit
        checkpointer.save(ckpt, nested)
    listed = _run("data", "checksums", "weights/digits-orbax", "--out", "weights/digits-orbax.sha256")
    assert listed.exit_code == 0, listed.output
    pin = re.search(r"checksums_sha256: ([0-9a-f]{64})", listed.output).group(1)
    folder = parented / "models" / "digits-from-orbax"
    folder.mkdir()
    for kind in ("model", "data", "release"):
        (folder / f"{kind}.yaml").write_text("extends: ../digits-mlp\n")
    (folder / "train.yaml").write_text(
        "extends: ../digits-mlp\nsteps: 150\nstart_from:\n  path: weights/digits-orbax\n  format: orbax\n"
        f"  checksums: weights/digits-orbax.sha256\n  checksums_sha256: {pin}\n  freeze: [hidden/0]\n")
    assert _run("validate", "models/digits-from-orbax").exit_code == 0
    cfg = config.load("digits-from-orbax", parented)
    prep = data.load(cfg.data, parented).preprocessing
    init = start_from.prepare(cfg, parented, prep)
    assert len(init.record["loaded"]) == len(parent) and init.record["format"] == "orbax"
    assert init.record["checksums_sha256"] == pin and init.frozen == ["hidden/0/bias", "hidden/0/kernel"]
    assert np.array_equal(init.values["head/kernel"], np.asarray(parent["head/kernel"]))
    assert "Orbax folder, checksum list sha256 " + pin[:12] in __import__("gitops.registry.lineage", fromlist=["describe_parent"]).describe_parent(
        init.record)
    # the same folder from a URL prefix (real HTTP on 127.0.0.1): fetched file by file, assembled once
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ckpt))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(ConfigError, match="train.start_from"):  # path and url together
            config.load("digits-from-orbax", parented, [f"train.start_from.url={url}"])
        (folder / "train.yaml").write_text((folder / "train.yaml").read_text().replace(
            "path: weights/digits-orbax", f"url: {url}"))
        remote = config.load("digits-from-orbax", parented)
        got = start_from.prepare(remote, parented, prep)
        assert got.record["url"] == url and got.record["loaded"] == init.record["loaded"]
        assert (tmp_path / "cache" / "weights" / f"orbax-{pin}" / "_METADATA").is_file()
    finally:
        server.shutdown()
        server.server_close()
    assert start_from.prepare(remote, parented, prep).record["loaded"] == init.record["loaded"]  # cached folder
    # a changed file, an unlisted file, a changed list: exit 1 before any run folder
    (folder / "train.yaml").write_text((folder / "train.yaml").read_text().replace(f"url: {url}",
                                                                                   "path: weights/digits-orbax"))
    (ckpt / "stray.bin").write_bytes(b"unpinned")
    with pytest.raises(GitopsError, match="stray.bin not in the checksum list"):
        start_from.prepare(config.load("digits-from-orbax", parented), parented, prep)
    (ckpt / "stray.bin").unlink()
    victim = next(p for p in sorted(ckpt.rglob("*")) if p.is_file() and p.stat().st_size > 64 and p.name != "_METADATA")
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = _run("train", "digits-from-orbax")
    assert result.exit_code == 1 and "SHA-256 mismatch" in result.output and "Traceback" not in result.output
    assert not (parented / "runs" / "digits-from-orbax").exists()
    victim.write_bytes(original)
    wrong = "f" * 64
    with pytest.raises(IntegrityError, match=f"the config pins {wrong}"):
        start_from.prepare(config.load("digits-from-orbax", parented, [f"train.start_from.checksums_sha256={wrong}"]),
                           parented, prep)
    shutil.rmtree(folder)


def test_a_parent_without_releases_validates_but_does_not_train_or_plan(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    assert _run("validate").exit_code == 0  # a fresh clone without tags validates
    result = _run("train", CHILD)
    assert result.exit_code == 1
    assert "train.start_from: parent digits-mlp@production: digits-mlp has no releases" in result.output
    assert not (example_repo / "runs").exists()
    base = git(example_repo, "rev-parse", "HEAD").strip()
    (example_repo / "models" / CHILD / "train.yaml").write_text(
        (example_repo / "models" / CHILD / "train.yaml").read_text().replace("steps: 300", "steps: 200"))
    assert "steps: 200" in (example_repo / "models" / CHILD / "train.yaml").read_text()
    _commit(example_repo, "child changes")
    head = git(example_repo, "rev-parse", "HEAD").strip()
    plan = _run("ci", "plan", "--base", base, "--head", head)
    assert plan.exit_code == 1 and f"{CHILD}: train.start_from: parent digits-mlp@production" in plan.output


@pytest.mark.parametrize(("text", "message"), [
    ("start_from: {model: digits-mlp}", "must name a version (MODEL@v1.2.0) or a stage (MODEL@production)"),
    ("start_from: {model: digits-mlp@v1}", "not a semantic version"),
    (f"start_from: {{model: {CHILD}@production}}", f"start_from forms a cycle: {CHILD} -> {CHILD}"),
    ("start_from: {model: digits-mlp@production, path: w.safetensors, sha256: " + "a" * 64 + "}", "train.start_from"),
    ("start_from: {path: ../outside.npz, sha256: " + "a" * 64 + ", format: npz}", "must be a path inside the repository"),
    ("start_from: {path: w, format: orbax, sha256: " + "a" * 64 + "}", "format: orbax needs checksums"),
    ("start_from: {path: w.npz, checksums: w.sha256, checksums_sha256: " + "a" * 64 + "}",
     "a checksum list pins an Orbax folder: add format: orbax"),
])
def test_start_from_form_errors_are_config_errors(example_repo, monkeypatch, text, message):
    monkeypatch.chdir(example_repo)
    path = example_repo / "models" / CHILD / "train.yaml"
    rest = path.read_text().split("seed: 0", 1)[1]
    path.write_text(text + "\nseed: 0" + rest)
    result = _run("validate", f"models/{CHILD}")
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert "models/digits-mlp-finetune/train.yaml:" in result.output


def test_a_cycle_through_a_descendant_is_refused(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    path = example_repo / "models" / "digits-mlp" / "train.yaml"
    path.write_text(path.read_text() + f"start_from:\n  model: {CHILD}@v1.0.0\n")
    result = _run("validate", "models/digits-mlp")
    assert result.exit_code == 1
    assert f"start_from forms a cycle: digits-mlp -> {CHILD} -> digits-mlp" in result.output
