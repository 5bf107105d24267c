"""Releases, pulls, stages, history, rollback and gc on a local registry, with fake run folders."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
from loop_support import commit_all, edit, fake_run, git
from typer.testing import CliRunner

from gitops import api
from gitops.backends.local import LocalBackend
from gitops.checksums import sha256_file
from gitops.cli import app
from gitops.errors import GitopsError, IntegrityError
from gitops.registry import release, rollback, tags, versions
from gitops.registry.archive import FIXED_MTIME, parse_sums, safe_extract

GOOD = {"test/accuracy": 0.95, "test/loss": 0.2}


@pytest.fixture
def repo(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    return example_repo


def _release(repo: Path, model: str = "wine-mlp", **kwargs) -> release.ReleaseResult:
    return api.release(repo, LocalBackend(repo), model, **kwargs)


def _meta(repo: Path, tag: str) -> dict:
    found = next(t for t in LocalBackend(repo).list_tags() if t.name == tag)
    return versions.release_metadata(found.message)


def test_first_release_tag_message_and_assets(repo):
    run = fake_run(repo, "wine-mlp", GOOD)
    result = _release(repo)
    assert result.tag == "wine-mlp@v1.0.0" and not result.trained and result.run == run
    tag = next(t for t in LocalBackend(repo).list_tags() if t.name == "wine-mlp@v1.0.0")
    assert tag.commit == git(repo, "rev-parse", "HEAD")
    first, *_ = tag.message.splitlines()
    assert first == "wine-mlp v1.0.0: test/accuracy 0.95 (initial: first release)"
    meta = versions.release_metadata(tag.message)
    for key in ("training_fingerprint", "release_fingerprint", "data_fingerprint", "sha256"):
        assert len(meta[key]) == 64
    assert meta["metrics"] == GOOD
    assert "bump: initial" in tag.message and "reason: first release" in tag.message
    folder = repo / ".gitops/releases/wine-mlp/v1.0.0"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "SHA256SUMS", "wine-mlp-v1.0.0.tar.gz"]
    with tarfile.open(folder / "wine-mlp-v1.0.0.tar.gz") as tar:
        names = tar.getnames()
        assert all(m.mtime == FIXED_MTIME and m.uid == 0 for m in tar.getmembers())
    for name in ("config/model.yaml", "config/train.yaml", "config/data.yaml", "config/release.yaml",
                 "config.resolved.yaml", "manifest.json", "metrics.json", "history.jsonl", "preprocessing.json",
                 "MODEL_CARD.md", "release.json", "checkpoints/100/state/params.bin"):
        assert name in names
    assert names == sorted(names)


def test_archives_are_reproducible(repo, tmp_path):
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    first = (repo / ".gitops/releases/wine-mlp/v1.0.0/SHA256SUMS").read_text()
    git(repo, "tag", "-d", "wine-mlp@v1.0.0")
    import shutil

    shutil.rmtree(repo / ".gitops/releases")
    _release(repo)
    assert (repo / ".gitops/releases/wine-mlp/v1.0.0/SHA256SUMS").read_text() == first


def test_bump_rules_and_idempotence(repo):
    fake_run(repo, "wine-mlp", GOOD)
    assert _release(repo).tag == "wine-mlp@v1.0.0"
    again = _release(repo)  # same release fingerprint: nothing
    assert again.version is None and "nothing to release" in again.message

    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    fake_run(repo, "wine-mlp", GOOD)
    minor = _release(repo)
    assert (minor.tag, minor.bump) == ("wine-mlp@v1.1.0", "minor")
    assert "train.optimizer.learning_rate" in minor.reason

    edit(repo, "models/wine-mlp/release.yaml", "min: 0.85", "min: 0.8")
    commit_all(repo, "gate")
    patch = _release(repo)  # same run: no new run folder needed
    assert (patch.tag, patch.bump) == ("wine-mlp@v1.1.1", "patch")
    assert _meta(repo, "wine-mlp@v1.1.1")["training_fingerprint"] == _meta(repo, "wine-mlp@v1.1.0")[
        "training_fingerprint"]

    edit(repo, "models/wine-mlp/model.yaml", "hidden_sizes: [32]", "hidden_sizes: [48]")
    commit_all(repo, "wider")
    fake_run(repo, "wine-mlp", GOOD)
    major = _release(repo)  # parameter shapes differ (abstract evaluation)
    assert (major.tag, major.bump) == ("wine-mlp@v2.0.0", "major")
    assert "parameter shapes changed" in major.reason and "model.hidden_sizes" in major.reason


def test_patch_release_without_local_run_reuses_the_released_archive(repo):
    run = fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    import shutil

    shutil.rmtree(run)  # e.g. a fresh CI checkout
    edit(repo, "models/wine-mlp/release.yaml", "min: 0.85", "min: 0.8")
    commit_all(repo, "gate")
    result = _release(repo)
    assert result.tag == "wine-mlp@v1.0.1" and not result.trained


def test_gate_failure_refuses_release(repo):
    fake_run(repo, "wine-mlp", {"test/accuracy": 0.5, "test/loss": 1.0})
    result = CliRunner().invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 1 and "quality gate failed" in result.output
    assert LocalBackend(repo).list_tags() == []


def test_run_of_another_config_is_refused(repo):
    other = fake_run(repo, "wine-mlp", GOOD)
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    from gitops import config

    result = CliRunner().invoke(app, ["release", "wine-mlp", "--run", str(other)])
    assert result.exit_code == 1 and "another config" in result.output  # state is wrong, not the command line
    assert other.name in result.output and config.load("wine-mlp", repo).short_fingerprint in result.output


def test_racing_identical_releases_make_one_version(repo):
    fake_run(repo, "wine-mlp", GOOD)
    results, errors = [], []

    def go():
        try:
            results.append(_release(repo))
        except Exception as exc:  # pragma: no cover - the failure we test against
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    released = sorted(r.tag for r in results if r.tag and r.version)
    assert released == ["wine-mlp@v1.0.0"], "the same release fingerprint is one version, whoever wins"
    assert all(r.message.startswith("nothing to release") for r in results if not r.version)
    assert [t.name for t in LocalBackend(repo).list_tags()] == ["wine-mlp@v1.0.0"]


def test_lost_tag_race_against_another_config_takes_the_next_version(repo):
    fake_run(repo, "wine-mlp", GOOD)
    backend = LocalBackend(repo)
    real_create = backend.create_tag
    calls = []

    def racing_create(name, commit, message):
        if not calls:  # another merge released a different config as v1.0.0 a moment earlier
            calls.append(name)
            other = message.replace('"release_fingerprint": "', '"release_fingerprint": "0')
            real_create(name, commit, other)
        return real_create(name, commit, message)

    backend.create_tag = racing_create
    result = api.release(repo, backend, "wine-mlp")
    assert calls == ["wine-mlp@v1.0.0"]
    assert result.tag == "wine-mlp@v1.1.0"


def test_split_archives_are_joined_by_pull(repo, monkeypatch):
    fake_run(repo, "wine-mlp", GOOD)
    monkeypatch.setenv("GITOPS_MAX_ASSET_BYTES", "1000")
    _release(repo)
    folder = repo / ".gitops/releases/wine-mlp/v1.0.0"
    parts = sorted(p.name for p in folder.glob("*.part*"))
    assert len(parts) >= 2 and parts[0] == "wine-mlp-v1.0.0.tar.gz.part000"
    assert not (folder / "wine-mlp-v1.0.0.tar.gz").exists()
    sums = parse_sums((folder / "SHA256SUMS").read_text())
    assert set(sums) == {"wine-mlp-v1.0.0.tar.gz", *parts}
    result = CliRunner().invoke(app, ["pull", "wine-mlp@1.0.0"])
    assert result.exit_code == 0, result.output
    target = repo / ".gitops/pulled/wine-mlp/v1.0.0"
    assert json.loads((target / "metrics.json").read_text()) == GOOD
    # the tag records every part, so a release that lost its last part is found incomplete
    assert _meta(repo, "wine-mlp@v1.0.0")["parts"] == len(parts)
    (folder / parts[-1]).unlink()
    assert versions.missing_assets(LocalBackend(repo), "wine-mlp@v1.0.0", _meta(repo, "wine-mlp@v1.0.0")) == [parts[-1]]


def test_tampered_asset_fails_and_leaves_nothing(repo):
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    archive = repo / ".gitops/releases/wine-mlp/v1.0.0/wine-mlp-v1.0.0.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["pull", "wine-mlp@v1.0.0", "--to", "out"])
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    assert not (repo / "out").exists()
    assert [p.name for p in repo.iterdir() if p.name.startswith(".pull")] == []
    # a swapped archive *and* SHA256SUMS still disagree with the checksum in the tag
    sums = repo / ".gitops/releases/wine-mlp/v1.0.0/SHA256SUMS"
    sums.write_text(f"{sha256_file(archive)}  wine-mlp-v1.0.0.tar.gz\n")
    result = CliRunner().invoke(app, ["pull", "wine-mlp@v1.0.0", "--to", "out"])
    assert result.exit_code == 1 and "recorded checksum" in result.output
    assert not (repo / "out").exists()


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            data = b"x" * info.size if info.isfile() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 3 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../x"), "outside"),
        (_member("a/../../x"), "outside"),
        (_member("/etc/passwd"), "absolute"),
        (_member("link", tarfile.SYMTYPE, "../../outside"), "links outside"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "links outside"),
        (_member("hard", tarfile.LNKTYPE, "../x"), "links outside"),
        (_member("inner-link", tarfile.SYMTYPE, "metrics.json"), "is a link"),
        (_member("fifo", tarfile.FIFOTYPE), "special file"),
        (_member("dev", tarfile.CHRTYPE), "special file"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, member, message):
    archive = _tar(tmp_path / "bad.tar.gz", [_member("ok.txt"), member])
    with pytest.raises(IntegrityError, match=message):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "x").exists() and not (tmp_path / "dest" / "ok.txt").exists()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_member("a", tarfile.DIRTYPE), _member("a")], "appears twice"),  # was IsADirectoryError
        ([_member("a"), _member("a")], "appears twice"),
        ([_member("a"), _member("a/b")], "which is a file"),
    ],
)
def test_colliding_archive_members_are_refused(tmp_path, members, message):
    archive = _tar(tmp_path / "odd.tar.gz", members)
    with pytest.raises(IntegrityError, match=message):
        safe_extract(archive, tmp_path / "dest")


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("lie", ["crc", "size"])
def test_zip_members_whose_headers_lie_are_an_error_not_a_traceback(tmp_path, lie):
    import struct

    from gitops.registry import artifacts

    data = bytearray(_zip(tmp_path / "a.zip", {"m/f/metrics.json": b"{}" * 1000}).read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the central directory entry, which zipfile trusts
    offset = central + (16 if lie == "crc" else 24)  # CRC-32, or the uncompressed size
    struct.pack_into("<I", data, offset, 100)  # (a larger size reads to the end and is harmless)
    (tmp_path / "a.zip").write_bytes(bytes(data))
    with pytest.raises(GitopsError, match="damaged"):
        artifacts.safe_extract_zip(tmp_path / "a.zip", tmp_path / "out", max_bytes=10**6)


def test_forged_cache_entry_is_skipped_with_a_warning(repo, tmp_path, monkeypatch, capsys):
    """A run cache entry whose manifest claims HEAD's fingerprint but whose own config is another one."""
    import gitops.learn.dispatch

    cache = tmp_path / "cache"
    monkeypatch.setenv("GITOPS_RUN_CACHE", str(cache))
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    forged = fake_run(repo, "wine-mlp", {"test/accuracy": 1.0, "test/loss": 0.0}, out=cache)
    git(repo, "checkout", "--", "models")
    head = config_of(repo)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["training_fingerprint"] = head.training_fingerprint
    target = cache / "wine-mlp" / head.short_fingerprint
    forged.rename(target)
    (target / "manifest.json").write_text(json.dumps(manifest))

    def no_training(*args, **kwargs):
        raise GitopsError("would train")

    monkeypatch.setattr(gitops.learn.dispatch, "train", no_training)
    with pytest.raises(GitopsError, match="would train"):
        _release(repo)
    assert "skipping it" in capsys.readouterr().err
    assert LocalBackend(repo).list_tags() == []


def test_the_library_release_never_trains(repo):
    """`gitops.registry.release.release` takes a finished run; training on demand is the command's (`api.release`)."""
    with pytest.raises(GitopsError, match=r"no finished run .* train it first \(`gitops train wine-mlp`\)"):
        release.release(repo, LocalBackend(repo), "wine-mlp")
    assert LocalBackend(repo).list_tags() == [] and not (repo / "runs").exists()


def config_of(repo: Path):
    from gitops import config

    return config.load("wine-mlp", repo)


def test_unsafe_archive_with_valid_checksums_is_refused_by_pull(repo):
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    folder = repo / ".gitops/releases/wine-mlp/v1.0.0"
    archive = _tar(folder / "wine-mlp-v1.0.0.tar.gz", [_member("../escape.txt")])
    (folder / "SHA256SUMS").write_text(f"{sha256_file(archive)}  {archive.name}\n")
    git(repo, "tag", "-d", "wine-mlp@v1.0.0")  # a forged tag without a recorded checksum
    git(repo, "tag", "-a", "wine-mlp@v1.0.0", "-m", "forged")
    result = CliRunner().invoke(app, ["pull", "wine-mlp@v1.0.0", "--to", "dest/v1"])
    assert result.exit_code == 1 and "outside" in result.output
    assert not (repo / "dest/escape.txt").exists() and not (repo / "dest/v1").exists()


def test_stages_history_and_deprecation(repo):
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    fake_run(repo, "wine-mlp", {"test/accuracy": 0.97, "test/loss": 0.1})
    _release(repo)
    runner = CliRunner()
    assert runner.invoke(app, ["promote", "wine-mlp@v1.0.0", "--to", "production"]).stdout.strip() == \
        "wine-mlp#production#1"
    assert runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "staging"]).exit_code == 0
    assert runner.invoke(app, ["promote", "wine-mlp@staging", "--to", "production"]).exit_code == 0
    backend = LocalBackend(repo)
    _, version = versions.resolve(backend, "wine-mlp@production")
    assert version.version == "v1.1.0"
    production_tag = next(t for t in backend.list_tags() if t.name == "wine-mlp#production#3")
    assert production_tag.commit == version.commit and "v1.1.0" in production_tag.message
    assert runner.invoke(app, ["demote", "wine-mlp", "--from", "staging"]).stdout.strip() == "wine-mlp#staging!#4"
    assert runner.invoke(app, ["deprecate", "wine-mlp@v1.0.0"]).stdout.strip() == "wine-mlp@v1.0.0!#5"
    doc = json.loads(runner.invoke(app, ["history", "wine-mlp", "--json"]).stdout)
    assert [v["version"] for v in doc["versions"]] == ["v1.0.0", "v1.1.0"]
    assert doc["versions"][0]["active"] is False
    assert doc["versions"][1]["headline"] == {"test/accuracy": 0.97}
    assert doc["versions"][1]["reason"].startswith("training config changed")
    assert doc["stages"] == {"production": "v1.1.0"}
    events = [(e["event"], e["stage"], e["version"]) for e in doc["events"]]
    assert events == [("register", None, "v1.0.0"), ("register", None, "v1.1.0"),
                      ("assign", "production", "v1.0.0"), ("assign", "staging", "v1.1.0"),
                      ("assign", "production", "v1.1.0"), ("unassign", "staging", "v1.1.0"),
                      ("deregister", None, "v1.0.0")]
    text = runner.invoke(app, ["history", "wine-mlp"]).stdout
    assert "v1.1.0" in text and "production <- v1.1.0" in text and "deregistered v1.0.0" in text
    assert runner.invoke(app, ["pull", "wine-mlp@v1.0.0"]).exit_code == 0  # still pullable
    assert runner.invoke(app, ["deprecate", "wine-mlp"]).stdout.strip() == "wine-mlp@deprecated#6"
    assert tags.model_state(backend.list_tags(), "wine-mlp").deprecated
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 2


def test_rollback_restores_config_and_rereleases_the_old_run(repo):
    old_run = fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    before = os.stat(old_run / "manifest.json").st_mtime_ns
    result = CliRunner().invoke(app, ["rollback", "wine-mlp", "--to", "v1.0.0"])
    assert result.exit_code == 0, result.output
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "rollback/wine-mlp-v1.0.0"
    assert git(repo, "rev-list", "--count", "main..HEAD") == "1"
    again = _release(repo)
    assert again.tag == "wine-mlp@v1.2.0" and again.run == old_run and not again.trained
    assert "same training run as v1.0.0" in again.reason
    assert os.stat(old_run / "manifest.json").st_mtime_ns == before
    assert _meta(repo, "wine-mlp@v1.2.0")["training_fingerprint"] == _meta(repo, "wine-mlp@v1.0.0")[
        "training_fingerprint"]


def test_rollback_inlines_files_whose_parent_changed(repo):
    fake_run(repo, "digits-mlp-wide", GOOD | {"test/accuracy": 0.99})
    _release(repo, "digits-mlp-wide")
    edit(repo, "models/digits-mlp/train.yaml", "learning_rate: 3e-3", "learning_rate: 1e-3")
    commit_all(repo, "parent lr")
    fake_run(repo, "digits-mlp-wide", GOOD | {"test/accuracy": 0.99})
    assert _release(repo, "digits-mlp-wide").tag == "digits-mlp-wide@v1.1.0"
    result = rollback.rollback(repo, LocalBackend(repo), "digits-mlp-wide", "1.0.0")
    assert result.inlined == ["train.yaml"]
    text = (repo / "models/digits-mlp-wide/train.yaml").read_text()
    assert "extends" not in text and "learning_rate: 0.003" in text
    assert result.training_fingerprint == _meta(repo, "digits-mlp-wide@v1.0.0")["training_fingerprint"]
    assert _release(repo, "digits-mlp-wide").tag == "digits-mlp-wide@v1.2.0"


def test_release_pending_and_gc(repo, tmp_path):
    others = [f"models/{p.name}" for p in (repo / "models").iterdir() if p.name not in ("wine-mlp", "digits-mlp")]
    git(repo, "rm", "-q", "-r", *others)  # they would train
    commit_all(repo, "two models")
    for model in ("wine-mlp", "digits-mlp"):
        fake_run(repo, model, GOOD | {"test/accuracy": 0.99})
    results, failures = api.release_pending(repo, LocalBackend(repo), dist=tmp_path / "dist")
    assert failures == []
    assert sorted(r.tag for r in results) == ["digits-mlp@v1.0.0", "wine-mlp@v1.0.0"]
    assert api.release_pending(repo, LocalBackend(repo)) == ([], [])  # nothing pending now
    assert (tmp_path / "dist/wine-mlp-v1.0.0.tar.gz").is_file()
    stale = repo / "runs/wine-mlp/0123456789ab"
    stale.mkdir(parents=True)
    result = CliRunner().invoke(app, ["gc", "--dry-run"])
    assert "would remove runs/wine-mlp/0123456789ab" in result.stdout and stale.exists()
    result = CliRunner().invoke(app, ["gc"])
    assert not stale.exists() and (repo / "runs/wine-mlp").is_dir()
    assert any((repo / "runs/wine-mlp").iterdir())


def test_pull_unknown_version_is_usage_error(repo):
    result = CliRunner().invoke(app, ["pull", "wine-mlp@v9.9.9"])
    assert result.exit_code == 2
    with pytest.raises(GitopsError):
        api.release(repo, LocalBackend(repo), "wine-mlp", bump="huge")


def test_release_promote_pull_history_on_the_github_backend(repo, github_env, github_server, monkeypatch):
    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # picks the github backend
    fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    result = runner.invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["release", "wine-mlp"]).stdout.startswith("nothing to release")
    assert runner.invoke(app, ["promote", "wine-mlp@v1.0.0", "--to", "production"]).exit_code == 0
    assert sorted(github_server.tag_names()) == ["wine-mlp#production#1", "wine-mlp@v1.0.0"]
    assert git(repo, "tag", "--list") == ""  # nothing local: the registry is GitHub
    result = runner.invoke(app, ["pull", "wine-mlp@production", "--to", "pulled"])
    assert result.exit_code == 0, result.output
    assert json.loads((repo / "pulled/metrics.json").read_text()) == GOOD
    doc = json.loads(runner.invoke(app, ["history", "wine-mlp", "--json"]).stdout)
    assert doc["stages"] == {"production": "v1.0.0"}


def test_release_pending_on_github_reuses_a_pr_run_only_with_provenance_from_github(
        repo, tmp_path, github_env, github_server, monkeypatch):
    """The PR comes from GitHub's commit-to-PR association (a squash commit is no descendant of the PR
    head); its run is reused only when GitHub's record of the workflow run vouches for it."""
    import io
    import zipfile

    import gitops.learn.dispatch

    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    git(repo, "rm", "-q", "-r", *[f"models/{p.name}" for p in (repo / "models").iterdir() if p.name != "wine-mlp"])
    base = commit_all(repo, "only wine-mlp")
    git(repo, "switch", "-q", "-c", "tune")
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    pr_head = commit_all(repo, "lr 0.04")
    git(repo, "switch", "-q", "main")
    git(repo, "merge", "-q", "--squash", "tune")
    squash = commit_all(repo, "lr 0.04 (#7)")  # what is released: not a descendant of pr_head
    assert git(repo, "branch", "--contains", pr_head) == "tune", "the squash commit does not contain the PR head"
    run = fake_run(repo, "wine-mlp", GOOD, out=tmp_path / "pr-runs")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # upload-artifact of `runs/`: <model>/<fp12>/...
        for f in sorted(run.rglob("*")):
            if f.is_file():
                zf.writestr(f.relative_to(tmp_path / "pr-runs").as_posix(), f.read_bytes())
    blob = buf.getvalue()
    name = f"run-wine-mlp-{run.name}"
    trained: list[str] = []

    def no_training(cfg, *args, **kwargs):
        trained.append(cfg.name)
        raise GitopsError("would train")

    monkeypatch.setattr(gitops.learn.dispatch, "train", no_training)
    from gitops.backends.github import GitHubBackend

    backend = GitHubBackend.from_env()
    me = github_server.full_name
    train_wf = ".github/workflows/pr-train.yml"

    def attempt() -> list:
        trained.clear()
        results, failures = api.release_pending(repo, backend, dist=tmp_path / "dist")
        return failures

    # 1. GitHub associates no PR with the released commit: retrain, even though an artifact exists
    github_server.add_workflow_run(11, path=train_wf, event="pull_request_target", head_sha=pr_head, head_branch="tune")
    github_server.add_artifact(name, blob, run_id=11)
    assert attempt() == [("wine-mlp", "would train")] and trained == ["wine-mlp"]
    # an open (unmerged) PR GitHub associates with the commit does not count either
    github_server.add_pull(8, head="tune", head_sha=pr_head, base_sha=base)
    github_server.commit_pulls.setdefault(squash, []).append(8)
    assert attempt() == [("wine-mlp", "would train")]
    github_server.commit_pulls[squash].remove(8)
    # 2. a fork's PR (same head, same fingerprint): its runs never feed a release
    github_server.add_pull(7, head="tune", head_sha=pr_head, base_sha=base, head_repo="mallory/models")
    github_server.merge_pull(7, squash)
    assert attempt() == [("wine-mlp", "would train")]
    # 3. a same-repository PR, but the artifact's run is not what GitHub says a trusted run is
    github_server.pulls[7]["head_repo"] = me
    github_server.artifacts.clear()
    spoofs = [  # (run id, event, workflow path, head repository): each one thing wrong
        (21, "pull_request", ".github/workflows/pr.yml", me),  # the PR's own copy of a workflow
        (22, "pull_request_target", train_wf, "mallory/models"),  # a fork's training run
        (23, "workflow_dispatch", train_wf, me),
        (24, "pull_request_target", ".github/workflows/other.yml", me),
    ]
    for run_id, event, path, head_repo in spoofs:
        github_server.add_workflow_run(run_id, path=path, event=event, head_sha=pr_head, head_repo=head_repo)
        github_server.add_artifact(name, blob, run_id=run_id)
    assert attempt() == [("wine-mlp", "would train")]
    assert len(github_server.requests_matching("GET", r"/actions/runs/2[1-4]$")) >= 4, "each run's record was read"
    assert not github_server.requests_matching("GET", r"/_artifacts/"), "nothing untrusted was downloaded"
    # 4. the trusted run (pull_request_target of pr-train.yml at the PR head, this repository): reused
    github_server.add_workflow_run(25, path=train_wf, event="pull_request_target", head_sha=pr_head)
    github_server.add_artifact(name, blob, run_id=25)
    assert attempt() == [] and trained == []
    assert github_server.requests_matching("GET", rf"/commits/{squash}/pulls$")
    assert sorted(github_server.release_assets("wine-mlp@v1.0.0")) == ["SHA256SUMS", "wine-mlp-v1.0.0.tar.gz"]
    assert (repo / "runs/wine-mlp" / run.name / "manifest.json").is_file()


def test_rollback_on_github_pushes_the_branch_and_opens_the_pr(repo, github_env, github_server, monkeypatch, tmp_path):
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    runner = CliRunner()
    fake_run(repo, "wine-mlp", GOOD)
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    fake_run(repo, "wine-mlp", GOOD)
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    result = runner.invoke(app, ["rollback", "wine-mlp", "--to", "v1.0.0"])
    assert result.exit_code == 0, result.output
    assert "rollback/wine-mlp-v1.0.0" in git(repo, "ls-remote", "--heads", "origin")
    opened = [p for p in github_server.pulls.values() if p["head"] == "rollback/wine-mlp-v1.0.0"]
    assert len(opened) == 1 and opened[0]["base"] == "main" and "v1.0.0" in opened[0]["title"]


def test_registry_commands_say_what_they_did_on_stderr_and_keep_stdout(repo):
    """promote/pull/rollback/demote explain themselves in prose on stderr; stdout stays what scripts read."""
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    runner = CliRunner()
    first = runner.invoke(app, ["promote", "wine-mlp@v1.0.0", "--to", "production"])
    assert first.stdout == "wine-mlp#production#1\n"
    assert "promoted wine-mlp v1.0.0 to production: wine-mlp@production now resolves to v1.0.0" in first.stderr
    assert "#1 counts every stage and lifecycle event of wine-mlp" in first.stderr
    runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "staging"])
    second = runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "production"])
    assert second.stdout == "wine-mlp#production#3\n"  # #3: the counter is shared with staging's #2
    assert "(it replaces v1.0.0)" in second.stderr
    demoted = runner.invoke(app, ["demote", "wine-mlp", "--from", "staging"])
    assert demoted.stdout == "wine-mlp#staging!#4\n" and "removed stage staging from wine-mlp" in demoted.stderr

    pulled = runner.invoke(app, ["pull", "wine-mlp@production", "--to", "out"])
    assert pulled.stdout == f"{Path('out')}\n"
    assert "pulled wine-mlp@v1.1.0 into out: wine-mlp-v1.1.0.tar.gz verified against SHA256SUMS and the sha256 " \
        "its tag records" in pulled.stderr
    again = runner.invoke(app, ["pull", "wine-mlp@production", "--to", "out"])
    assert again.stdout == pulled.stdout and "is already in out (same release" in again.stderr

    history = runner.invoke(app, ["history", "wine-mlp"]).stdout.splitlines()
    header = next(line for line in history if "VERSION" in line)
    row = next(line for line in history if line.strip().startswith("v1.0.0"))
    bump_col, reason_col = header.index("BUMP"), header.index("REASON")
    assert row[bump_col:reason_col].strip() == "initial"  # the bump no longer runs into the reason
    assert row[reason_col:].startswith("first release")

    rolled = runner.invoke(app, ["rollback", "wine-mlp", "--to", "v1.0.0"])
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.startswith("branch rollback/wine-mlp-v1.0.0 at ")
    assert "switched your checkout to the new branch rollback/wine-mlp-v1.0.0 (from main); go back with " \
        "`git switch main`" in rolled.stderr


def test_rollback_refuses_untracked_files_in_the_model_folder(repo):
    fake_run(repo, "wine-mlp", GOOD)
    _release(repo)
    (repo / "models" / "wine-mlp" / "scratch.yaml").write_text("x: 1\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["rollback", "wine-mlp", "--to", "v1.0.0"])
    assert result.exit_code == 2 and "models/wine-mlp/scratch.yaml" in result.stderr
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
