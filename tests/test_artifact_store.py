"""Release archives in an object store: a real S3-compatible server (moto, on 127.0.0.1) and file:// stores.

Covers issue 24: release to and pull from S3, parts of a configured size, a killed upload leaves no
version, a store that keeps failing leaves no tag (exit 3, no credential printed), a tampered object is
refused, and `gc --artifacts` removes orphans older than the grace period only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import S3_BUCKET
from loop_support import commit_all, fake_run
from typer.testing import CliRunner

from gitops import killpoints
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.registry import artifact_store, versions

REPO = Path(__file__).resolve().parents[1]
GOOD = {"test/accuracy": 0.95, "test/loss": 0.2}
BUCKET = S3_BUCKET  # the s3_server fixture (conftest.py) creates it
CREDS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-printed",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def gcs_server():
    """gcp-storage-emulator (PyPI) on a free 127.0.0.1 port, in memory, with one bucket; stopped at the end."""
    pytest.importorskip("gcsfs")
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


# Azurite's documented development account (public, the same in every installation).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite's blob service (npm) on a free 127.0.0.1 port, probed over HTTP until it answers; yields the
    connection string (the Azure SDK's own variable); its process group is stopped at the end.

    Installed into a temporary folder like the schema tests' npm tools. Its output goes to a file (a pipe
    nobody reads fills up and blocks the server), and telemetry is off (no network here)."""
    pytest.importorskip("adlfs")
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed: Azurite cannot be installed")
    prefix = tmp_path_factory.mktemp("azurite")
    binary = prefix / "node_modules" / ".bin" / "azurite-blob"
    env = {**os.environ, "npm_config_cache": str(prefix / ".npm"), "npm_config_update_notifier": "false"}
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                               "azurite@3"], capture_output=True, text=True, timeout=240, check=False, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install azurite timed out (no npm registry reachable)")
    if proc.returncode != 0 or not binary.is_file():
        pytest.skip(f"azurite could not be installed from npm: {proc.stderr.strip()[-300:]}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(prefix / "azurite.log", "wb")  # closed in the finally below
    server = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                               str(prefix / "data"), "--silent", "--skipApiVersionCheck", "--loose",
                               "--disableTelemetry"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # ready when the blob endpoint answers HTTP (any status: the probe is not signed)
            if server.poll() is not None:
                pytest.fail(f"azurite exited with {server.returncode}: {(prefix / 'azurite.log').read_text()[-500:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/devstoreaccount1?comp=list", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"azurite did not answer within 60 s: {(prefix / 'azurite.log').read_text()[-500:]}")
                time.sleep(0.2)
        yield (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@pytest.fixture
def repo(example_repo, monkeypatch, tmp_path):
    monkeypatch.chdir(example_repo)
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GITOPS_DATA_CACHE", str(tmp_path / "cache"))
    return example_repo


def _configure(repo: Path, url: str, **extra) -> None:
    lines = ["artifacts:", f"  url: {url}", "  backoff_s: 0"] + [f"  {k}: {v}" for k, v in extra.items()]
    (repo / "gitops.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    commit_all(repo, "store")


def _meta(repo: Path, tag: str = "wine-mlp@v1.0.0") -> dict:
    found = next(t for t in LocalBackend(repo).list_tags() if t.name == tag)
    return versions.release_metadata(found.message)


def _store(repo: Path) -> artifact_store.ArtifactStore:
    store = artifact_store.for_root(repo)
    assert store is not None
    return store


def test_release_to_and_pull_from_s3(repo, s3_server, tmp_path, monkeypatch):
    _configure(repo, f"s3://{BUCKET}/registry-a", endpoint_url=s3_server)
    fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    result = runner.invoke(app, ["release", "wine-mlp", "--dist", str(tmp_path / "dist")])
    assert result.exit_code == 0, result.output
    meta = _meta(repo)
    [obj] = meta["objects"]
    # --dist (what release.yml attests): the archive too, though the backend keeps only the small assets
    from gitops.checksums import sha256_file

    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        "SHA256SUMS", "wine-mlp-v1.0.0.tar.gz", "wine-mlp-v1.0.0.tar.gz.objects.json"]
    assert sha256_file(tmp_path / "dist/wine-mlp-v1.0.0.tar.gz") == obj["sha256"]
    assert obj["url"] == f"s3://{BUCKET}/registry-a/sha256/{obj['sha256'][:2]}/{obj['sha256']}"
    assert obj["sha256"] == meta["sha256"] and meta["parts"] == 0
    # the backend keeps only the small assets; the archive is in the store, nowhere else
    assert LocalBackend(repo).list_assets("wine-mlp@v1.0.0") == ["SHA256SUMS", "wine-mlp-v1.0.0.tar.gz.objects.json"]
    listing = json.loads((repo / ".gitops/releases/wine-mlp/v1.0.0/wine-mlp-v1.0.0.tar.gz.objects.json").read_text())
    assert listing["objects"] == meta["objects"]
    store = _store(repo)
    assert store.size_of(obj["sha256"]) == obj["size"]
    assert [key for sha, key, _ in store.list_objects() if not sha] == []  # no temporary keys left
    pulled = runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled"])
    assert pulled.exit_code == 0, pulled.output
    assert json.loads((repo / "pulled/metrics.json").read_text()) == GOOD
    assert (tmp_path / "cache" / obj["sha256"]).is_file()  # cached by hash, shared with remote data

    # someone overwrites the object in the bucket (same size, other bytes): a fresh pull refuses it
    key = store.key(obj["sha256"])
    data = bytearray(store.fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    store.fs.pipe_file(key, bytes(data))
    monkeypatch.setenv("GITOPS_DATA_CACHE", str(tmp_path / "fresh-cache"))
    refused = runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled-again"])
    assert refused.exit_code == 1 and "tampered" in refused.output, refused.output
    assert not (repo / "pulled-again").exists() and not (tmp_path / "fresh-cache" / obj["sha256"]).exists()


def test_parts_of_a_configured_size_and_skipped_reuploads(repo, s3_server):
    _configure(repo, f"s3://{BUCKET}/registry-b", endpoint_url=s3_server, part_size_mb=1, block_size_mb=5)
    run = fake_run(repo, "wine-mlp", GOOD)
    (run / "checkpoints/100/state/params.bin").write_bytes(os.urandom(2 * 1024**2 + 12345))  # incompressible
    assert CliRunner().invoke(app, ["release", "wine-mlp"]).exit_code == 0
    meta = _meta(repo)
    objects = meta["objects"]
    assert meta["parts"] == len(objects) == 3
    assert [o["size"] for o in objects[:2]] == [1024**2, 1024**2]
    sums = (repo / ".gitops/releases/wine-mlp/v1.0.0/SHA256SUMS").read_text().split("\n")
    assert [line.split("  ")[1] for line in sums if line] == [
        "wine-mlp-v1.0.0.tar.gz", *[f"wine-mlp-v1.0.0.tar.gz.part{i:03d}" for i in range(3)]]
    archive = LocalBackend(repo)
    pulled = CliRunner().invoke(app, ["pull", "wine-mlp", "--to", "pulled"])
    assert pulled.exit_code == 0, pulled.output
    assert (repo / "pulled/checkpoints/100/state/params.bin").read_bytes() == \
        (run / "checkpoints/100/state/params.bin").read_bytes()
    # a second upload of the same bytes is skipped: the objects keep their first write time
    store = _store(repo)
    before = {key: mtime for _, key, mtime in store.list_objects()}
    out_dir = repo / "again"
    out_dir.mkdir()
    archive_path = out_dir / "x.tar.gz"
    joined = b"".join(store.fetch(o).read_bytes() for o in artifact_store.objects_from_meta(meta))
    archive_path.write_bytes(joined)
    _, again = artifact_store.publish_archive(store, archive_path, out_dir)
    assert [o["sha256"] for o in again] == [o["sha256"] for o in objects]
    assert {key: mtime for _, key, mtime in store.list_objects()} == before
    assert archive.list_assets("wine-mlp@v1.0.0")


def test_failing_store_leaves_no_tag_and_exit_3_without_credentials(repo):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # nothing listens here once closed
    _configure(repo, f"s3://{BUCKET}/registry-c", endpoint_url=f"http://127.0.0.1:{dead}", attempts=2)
    fake_run(repo, "wine-mlp", GOOD)
    result = CliRunner().invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 3, result.output
    assert f"s3://{BUCKET}/registry-c/sha256/" in result.output and "2 attempts" in result.output
    for value in CREDS.values():
        if value != "us-east-1":
            assert value not in result.output
    assert LocalBackend(repo).list_tags() == []


def test_a_missing_bucket_is_a_config_error_and_leaves_no_tag(repo, s3_server):
    _configure(repo, "s3://no-such-bucket/x", endpoint_url=s3_server)
    fake_run(repo, "wine-mlp", GOOD)
    result = CliRunner().invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 1 and "does not exist" in result.output and "s3://no-such-bucket/x/sha256/" in \
        result.output, result.output
    assert LocalBackend(repo).list_tags() == []


def _kill_release_midway(repo: Path) -> None:
    env = {**os.environ, killpoints.ENV: "release.uploading", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "gitops.cli", "release", "wine-mlp"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert LocalBackend(repo).list_tags() == []


def test_killed_s3_upload_leaves_no_version_and_no_object(repo, s3_server):
    _configure(repo, f"s3://{BUCKET}/registry-d", endpoint_url=s3_server, block_size_mb=5)
    run = fake_run(repo, "wine-mlp", GOOD)
    # over two 5 MiB blocks: a multipart upload, killed after its parts are sent, before it completes
    (run / "checkpoints/100/state/params.bin").write_bytes(os.urandom(11 * 1024**2))
    _kill_release_midway(repo)
    assert _store(repo).list_objects() == []  # the multipart upload never completed: nothing visible
    runner = CliRunner()
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    assert [t.name for t in LocalBackend(repo).list_tags()] == ["wine-mlp@v1.0.0"]
    assert runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled"]).exit_code == 0


def test_killed_upload_leaves_no_version_and_the_rerun_completes(repo, tmp_path):
    store_dir = tmp_path / "store"
    _configure(repo, f"file://{store_dir}")
    fake_run(repo, "wine-mlp", GOOD)
    _kill_release_midway(repo)
    assert list((store_dir / "tmp").iterdir()) and not (store_dir / "sha256").exists()  # partial: never visible
    runner = CliRunner()
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    assert [t.name for t in LocalBackend(repo).list_tags()] == ["wine-mlp@v1.0.0"]
    assert runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled"]).exit_code == 0
    # the killed upload's temporary object is an orphan: gc takes it once past the grace period
    kept = runner.invoke(app, ["gc", "--artifacts"])
    assert kept.output.strip() == "nothing to remove"
    swept = runner.invoke(app, ["gc", "--artifacts", "--grace", "0s"])
    assert swept.exit_code == 0 and "/tmp/" in swept.output, swept.output
    assert list((store_dir / "tmp").iterdir()) == []


def test_tampered_object_is_refused(repo, tmp_path):
    store_dir = tmp_path / "store"
    _configure(repo, f"file://{store_dir}")
    fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    [obj] = _meta(repo)["objects"]
    path = store_dir / "sha256" / obj["sha256"][:2] / obj["sha256"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled"])
    assert result.exit_code == 1 and "tampered" in result.output, result.output
    assert not (repo / "pulled").exists()
    assert not (tmp_path / "cache" / obj["sha256"]).exists()  # never cached


def test_gc_removes_unreferenced_objects_past_the_grace_period(repo, tmp_path):
    store_dir = tmp_path / "store"
    _configure(repo, f"file://{store_dir}")
    fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    [obj] = _meta(repo)["objects"]
    orphan = store_dir / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a release whose tag went elsewhere")
    referenced = store_dir / "sha256" / obj["sha256"][:2] / obj["sha256"]
    old = referenced.stat().st_mtime - 3 * 86400
    os.utime(referenced, (old, old))
    assert runner.invoke(app, ["gc", "--artifacts"]).output.strip() == "nothing to remove"  # orphan is new
    os.utime(orphan, (old, old))
    dry = runner.invoke(app, ["gc", "--artifacts", "--dry-run", "--grace", "48h"])
    assert dry.exit_code == 0 and dry.output.strip() == f"would remove file://{store_dir}/sha256/ab/{'ab' * 32}"
    assert orphan.exists()
    assert runner.invoke(app, ["gc", "--artifacts", "--grace", "48h"]).exit_code == 0
    assert not orphan.exists() and referenced.exists()
    bad = runner.invoke(app, ["gc", "--artifacts", "--grace", "soon"])
    assert bad.exit_code == 2 and "--grace" in bad.output


def test_settings_refuse_a_bad_store_url(repo):
    (repo / "gitops.yaml").write_text("artifacts:\n  url: ftp://host/x\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1 and "gitops.yaml" in result.output and "artifacts" in result.output, result.output


def test_github_release_carries_the_sums_and_the_objects_list(repo, tmp_path, github_env, github_server,
                                                              monkeypatch):
    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    store_dir = tmp_path / "store"
    _configure(repo, f"file://{store_dir}")
    fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    result = runner.invoke(app, ["release", "wine-mlp", "--backend", "github"])
    assert result.exit_code == 0, result.output
    assets = github_server.release_assets("wine-mlp@v1.0.0")
    assert sorted(assets) == ["SHA256SUMS", "wine-mlp-v1.0.0.tar.gz.objects.json"]
    [release_doc] = [r for r in github_server.releases.values() if r["tag_name"] == "wine-mlp@v1.0.0"]
    [obj] = json.loads(assets["wine-mlp-v1.0.0.tar.gz.objects.json"])["objects"]
    assert f"object: {obj['url']}" in release_doc["body"]  # the notes link to the object
    pulled = runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled", "--backend", "github"])
    assert pulled.exit_code == 0, pulled.output
    assert json.loads((repo / "pulled/metrics.json").read_text()) == GOOD


def test_release_to_and_pull_from_a_gcs_emulator(repo, gcs_server, monkeypatch, tmp_path):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)  # gcsfs's own variable (as the Google SDKs')
    _configure(repo, f"gs://{BUCKET}/registry-g", part_size_mb=1)
    run = fake_run(repo, "wine-mlp", GOOD)
    (run / "checkpoints/100/state/params.bin").write_bytes(os.urandom(1024**2 + 999))
    runner = CliRunner()
    result = runner.invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 0, result.output
    objects = _meta(repo)["objects"]
    assert len(objects) == 2 and all(o["url"].startswith(f"gs://{BUCKET}/registry-g/sha256/") for o in objects)
    assert sorted(sha for sha, _, _ in _store(repo).list_objects()) == sorted(o["sha256"] for o in objects)
    pulled = runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled"])
    assert pulled.exit_code == 0, pulled.output
    assert (repo / "pulled/checkpoints/100/state/params.bin").read_bytes() == \
        (run / "checkpoints/100/state/params.bin").read_bytes()


def test_release_to_and_pull_from_azurite(repo, azurite, monkeypatch):
    """Azure Blob Storage through adlfs, against Azurite: parts of a configured size, gc, the key never shown."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)  # the Azure SDK's variable, never the config
    _configure(repo, f"az://{BUCKET}/registry-z", part_size_mb=1)
    _store(repo).fs.mkdir(BUCKET)  # a container
    run = fake_run(repo, "wine-mlp", GOOD)
    (run / "checkpoints/100/state/params.bin").write_bytes(os.urandom(1024**2 + 777))  # two parts
    runner = CliRunner()
    result = runner.invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 0, result.output
    objects = _meta(repo)["objects"]
    assert len(objects) == 2
    assert all(o["url"] == f"az://{BUCKET}/registry-z/sha256/{o['sha256'][:2]}/{o['sha256']}" for o in objects)
    assert sorted(sha for sha, _, _ in _store(repo).list_objects()) == sorted(o["sha256"] for o in objects)
    assert AZURITE_KEY not in result.output
    pulled = runner.invoke(app, ["pull", "wine-mlp", "--to", "pulled"])
    assert pulled.exit_code == 0, pulled.output
    assert (repo / "pulled/checkpoints/100/state/params.bin").read_bytes() == \
        (run / "checkpoints/100/state/params.bin").read_bytes()
    swept = runner.invoke(app, ["gc", "--artifacts", "--grace", "0s", "--dry-run"])
    assert swept.exit_code == 0 and swept.output.strip() == "nothing to remove", swept.output


@pytest.mark.parametrize("part_size_mb", [None, 1])
def test_uploads_report_progress(tmp_path, monkeypatch, capsys, part_size_mb):
    """Large archives print progress lines on stderr while they upload, whole or in parts side by side."""
    monkeypatch.setattr(artifact_store, "PROGRESS_MIN_BYTES", 1024**2)
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(os.urandom(3 * 1024**2))
    store = artifact_store.ArtifactStore(artifact_store.StoreSettings(url=f"file://{tmp_path / 'store'}",
                                                                      part_size_mb=part_size_mb))
    out = tmp_path / "out"
    out.mkdir()
    _, objects = artifact_store.publish_archive(store, archive, out)
    assert len(objects) == (3 if part_size_mb else 1)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("uploading big.tar.gz: ") for line in lines)
    assert lines[-1] == "uploading big.tar.gz: 3/3 MiB"
