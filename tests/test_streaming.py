"""Streaming datasets (gitops.learn.streaming): checksum lists, image folders, Parquet, ArrayRecord, resume, bad input.

Each test builds a small repository in a temporary folder: a few dozen tiny PNGs or a small Parquet
table, its checksum list written by `gitops data checksums`, and a model pointing at it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from gitops import config
from gitops.errors import GitopsError
from gitops.learn import streaming

pytestmark = pytest.mark.slow

CLASSES = ("ring", "bar", "dot")


def _png(path: Path, kind: str, rng: np.random.Generator, side: int = 8) -> None:
    from PIL import Image

    img = rng.integers(0, 40, size=(side, side)).astype(np.uint8)
    c = int(rng.integers(2, side - 2))
    if kind == "ring":
        img[1, :] = img[-2, :] = img[:, 1] = img[:, -2] = 230
    elif kind == "bar":
        img[:, c] = 230
    else:
        img[c - 1:c + 1, c - 1:c + 1] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _cli(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch):
    from gitops.cli import app

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CI", "1")
    return CliRunner().invoke(app, args)


def _write_model(repo: Path, name: str, dataset: dict, *, steps: int = 40, batch: int = 8, extra_train: str = "",
                 splits: str = "validation: 0.2\n  test: 0.2\n") -> None:
    folder = repo / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.yaml").write_text(
        "dataset:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in dataset.items())
        + f"splits:\n  {splits}preprocessing:\n  scale: minmax\n", encoding="utf-8")
    arch = "architecture: mlp\nhidden_sizes: [16]\n"
    (folder / "model.yaml").write_text(arch, encoding="utf-8")
    (folder / "train.yaml").write_text(
        f"seed: 0\nbatch_size: {batch}\nsteps: {steps}\noptimizer: {{name: adam, learning_rate: 1e-2}}\n"
        f"eval_every: 10\nlog_every: 10\ncheckpoint: {{every_steps: 10, keep: 50}}\n{extra_train}", encoding="utf-8")
    (folder / "release.yaml").write_text("description: streaming test\n", encoding="utf-8")


def _pin(repo: Path, folder: str, listing: str, monkeypatch: pytest.MonkeyPatch) -> str:
    done = _cli(["data", "checksums", folder, "--out", listing], repo, monkeypatch)
    assert done.exit_code == 0, done.output
    pin = done.output.strip().splitlines()[-1].split(": ")[1]
    assert pin == hashlib.sha256((repo / listing).read_bytes()).hexdigest()
    return pin


def _image_repo(repo: Path, monkeypatch: pytest.MonkeyPatch, *, per_class: int = 16, split_folders: bool = False,
                **dataset) -> dict:
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        for n in range(per_class):
            split = ("train/" if n < per_class - 4 else "test/") if split_folders else ""
            _png(repo / "imgs" / f"{split}{kind}" / f"{n:03d}.png", kind, rng)
    spec = {"name": "image_folder", "path": "imgs", "checksums": "imgs.sha256",
            "checksums_sha256": _pin(repo, "imgs", "imgs.sha256", monkeypatch), "image_size": [8, 8], "channels": 1,
            **dataset}
    _write_model(repo, "shapes", spec)
    return spec


@pytest.fixture(autouse=True)
def _data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITOPS_DATA_CACHE", str(tmp_path / "data-cache"))


# --- checksum lists and pins -------------------------------------------------------------------------


def test_checksums_command_writes_what_sha256sum_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image_repo(tmp_path, monkeypatch, per_class=2)
    listing = (tmp_path / "imgs.sha256").read_text()
    assert len(listing.splitlines()) == 6 and listing.splitlines()[0].endswith("  bar/000.png")
    done = subprocess.run(["sha256sum", "-c", "--quiet", str(tmp_path / "imgs.sha256")], cwd=tmp_path / "imgs",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = _cli(["data", "checksums", "imgs"], tmp_path, monkeypatch)
    assert printed.exit_code == 0 and printed.output == listing


def test_fingerprint_follows_the_pin_not_the_data_nor_the_worker_count(tmp_path: Path, monkeypatch) -> None:
    _image_repo(tmp_path, monkeypatch, per_class=2)
    base = config.load("shapes", tmp_path)
    for f in (tmp_path / "imgs").rglob("*.png"):
        f.unlink()  # the fingerprint never opens the data
    same = config.load("shapes", tmp_path, ["data.dataset.workers=3", "data.dataset.prefetch=7"])
    assert (same.data_fingerprint, same.training_fingerprint) == (base.data_fingerprint, base.training_fingerprint)
    (tmp_path / "imgs.sha256").write_text((tmp_path / "imgs.sha256").read_text() + "0" * 64 + "  bar/new.png\n")
    other_pin = hashlib.sha256((tmp_path / "imgs.sha256").read_bytes()).hexdigest()
    with pytest.raises(GitopsError, match="imgs.sha256 has SHA-256 " + other_pin):
        config.load("shapes", tmp_path)  # a list that changed without its pin is refused at validation
    moved = config.load("shapes", tmp_path, [f"data.dataset.checksums_sha256={other_pin}"])
    assert moved.data_fingerprint != base.data_fingerprint


# --- sources -----------------------------------------------------------------------------------------


def test_image_folder_labels_splits_and_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from gitops.learn import data

    _image_repo(tmp_path, monkeypatch, split_folders=True)
    cfg = config.load("shapes", tmp_path)
    ds = data.load(cfg.data, tmp_path)
    assert ds.preprocessing.labels == sorted(CLASSES)
    assert ds.preprocessing.input_shape == [8, 8, 1] and ds.preprocessing.num_classes == 3
    assert len(ds.test) == 12 and len(ds.train) + len(ds.val) == 36 and len(ds.val) == 8  # val: 0.2 of train/
    x = np.stack([ds.source[int(i)][0] for i in ds.train.indexes]).reshape(len(ds.train), -1)
    assert np.allclose(ds.preprocessing.shift, x.min(0)) and np.allclose(
        ds.preprocessing.divisor, np.where(x.max(0) - x.min(0) > 1e-8, x.max(0) - x.min(0), 1.0))
    # re-encoding the files (other bytes, same pixels) keeps every split: they come from record indexes
    for f in (tmp_path / "imgs").rglob("*.png"):
        Image.open(f).save(f, optimize=True, compress_level=1)
    pin = _pin(tmp_path, "imgs", "imgs.sha256", monkeypatch)
    again = data.load(config.load("shapes", tmp_path, [f"data.dataset.checksums_sha256={pin}"]).data, tmp_path)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(ds, split).indexes, getattr(again, split).indexes)


def test_parquet_streams_row_groups_and_each_epoch_reads_every_row_once(tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gitops.learn import data

    rng = np.random.default_rng(1)
    (tmp_path / "table").mkdir()
    for part in range(2):
        x = rng.normal(size=(150, 3)).astype(np.float32)
        columns = {"a_x": x[:, 0], "a_y": x[:, 1], "a_z": x[:, 2], "other": x[:, 0],
                   "target": (x[:, 0] > 0).astype(np.int64) + part, "fold": np.where(np.arange(150) < 120, "train", "test")}
        pq.write_table(pa.table(columns), tmp_path / "table" / f"part-{part}.parquet", row_group_size=40)
    spec = {"name": "parquet", "path": "table", "checksums": "table.sha256",
            "checksums_sha256": _pin(tmp_path, "table", "table.sha256", monkeypatch), "feature_prefix": "a_",
            "label": "target", "split_column": "fold"}
    _write_model(tmp_path, "tab", spec, splits="validation: 0.0\n  test: 0.0\n")
    ds = data.load(config.load("tab", tmp_path).data, tmp_path)
    assert ds.preprocessing.input_shape == [3] and ds.preprocessing.num_classes == 3
    assert len(ds.train) == 240 and len(ds.test) == 60
    feed = streaming.Feed(ds, 16, seed=5)
    seen = [feed.next()[0] for _ in range(2 * (240 // 16))]
    feed.close()
    raw = np.concatenate([pq.read_table(tmp_path / "table" / f"part-{p}.parquet").to_pandas()[["a_x", "a_y", "a_z"]]
                          .to_numpy(np.float32)[:120] for p in range(2)])
    scaled = (raw - np.asarray(ds.preprocessing.shift)) / np.asarray(ds.preprocessing.divisor)
    for epoch in range(2):  # every training row exactly once per epoch, in a different order each epoch
        rows = np.concatenate(seen[epoch * 15:(epoch + 1) * 15])
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        assert rows.shape == scaled.shape
        np.testing.assert_allclose(order(rows), order(scaled), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(np.concatenate(seen[:15]), np.concatenate(seen[15:]))


def test_parquet_records_keep_neither_their_row_group_nor_every_file_open(tmp_path: Path) -> None:
    """Memory that grew with the table: records were views pinning their whole row group (a batch drawn
    from many groups held them all), and every file stayed open with its footer."""
    import gc
    import weakref

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gitops.learn.sources import ParquetSource

    files = []
    for part in range(6):
        path = tmp_path / f"p{part}.parquet"
        pq.write_table(pa.table({"a": np.arange(30, dtype=np.float32) + 100 * part, "y": np.arange(30) % 2}), path,
                       row_group_size=10)
        files.append(str(path))
    source = ParquetSource(files, [[10, 10, 10]] * 6, ["a"], "y", "classification")
    x, y = source[3]
    assert x.tolist() == [3.0] and y == 1
    group = weakref.ref(source._cache[0][0])
    for index in range(10, 180, 10):  # a row of every other group: the first one leaves the cache
        assert source[index][0].tolist() == [float(index % 30 + 100 * (index // 30))]
    gc.collect()
    assert group() is None, "a record still holds its row group"
    assert x.tolist() == [3.0] and len(source._handles) == ParquetSource.OPEN_FILES


def test_array_record_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    from gitops.learn import data

    (tmp_path / "shards").mkdir()
    rng = np.random.default_rng(2)
    for shard in range(2):
        writer = ArrayRecordWriter(str(tmp_path / "shards" / f"s{shard}.array_record"), "group_size:1")
        for _ in range(30):
            buf = io.BytesIO()
            label = int(rng.integers(0, 2))
            np.savez(buf, x=rng.normal(size=4).astype(np.float32) + 3 * label, y=np.int64(label))
            writer.write(buf.getvalue())
        writer.close()
    spec = {"name": "array_record", "path": "shards", "checksums": "shards.sha256",
            "checksums_sha256": _pin(tmp_path, "shards", "shards.sha256", monkeypatch), "input_shape": [4],
            "num_classes": 2}
    _write_model(tmp_path, "rec", spec)
    ds = data.load(config.load("rec", tmp_path).data, tmp_path)
    assert len(ds.source) == 60 and ds.preprocessing.input_shape == [4]
    x, y = ds.source[31]
    assert x.shape == (4,) and y.dtype == np.int32


# --- bad input: one clear error naming the file, exit 1, no run folder -----------------------------------


def _train_fails(repo: Path, monkeypatch, match: str, *sets: str) -> None:
    args = ["train", "shapes", *(a for s in sets for a in ("--set", s))]
    done = _cli(args, repo, monkeypatch)
    assert done.exit_code == 1, done.output
    assert match in done.output, done.output
    assert "Traceback" not in done.output
    assert not (repo / "runs" / "shapes").exists() or not any((repo / "runs" / "shapes").iterdir())


def test_bad_inputs_name_the_file_and_leave_no_run_folder(tmp_path: Path, monkeypatch) -> None:
    _image_repo(tmp_path, monkeypatch, per_class=4)
    target = tmp_path / "imgs" / "bar" / "001.png"
    original = target.read_bytes()
    target.write_bytes(original[:-9] + b"xxxxxxxxx")  # changed bytes
    _train_fails(tmp_path, monkeypatch, f"{target}: SHA-256 mismatch")
    target.unlink()  # a listed file that is missing
    _train_fails(tmp_path, monkeypatch, "lists bar/001.png, but")
    target.write_bytes(b"not a png at all")  # undecodable, but listed with its hash
    pin = _pin(tmp_path, "imgs", "imgs.sha256", monkeypatch)
    _train_fails(tmp_path, monkeypatch, f"{target}: cannot decode the image", f"data.dataset.checksums_sha256={pin}")
    # skip_bad: the run trains without it, and the manifest counts it
    done = _cli(["train", "shapes", "--set", f"data.dataset.checksums_sha256={pin}", "--set", "data.dataset.skip_bad=true",
                 "--set", "train.steps=2", "--set", "train.batch_size=2"], tmp_path, monkeypatch)
    assert done.exit_code == 0, done.output
    manifest = json.loads(next((tmp_path / "runs" / "shapes").glob("*/manifest.json")).read_text())
    assert manifest["data"]["skipped"] == 1 and manifest["data"]["skipped_files"] == ["imgs/bar/001.png"]
    assert "skipped 1 file that did not decode (data.dataset.skip_bad; manifest.json lists them): imgs/bar/001.png" \
        in done.output


def test_label_folder_in_one_split_only_and_empty_lists(tmp_path: Path, monkeypatch) -> None:
    _image_repo(tmp_path, monkeypatch, per_class=6, split_folders=True)
    stray = tmp_path / "imgs" / "train" / "star" / "000.png"
    _png(stray, "dot", np.random.default_rng(3))
    pin = _pin(tmp_path, "imgs", "imgs.sha256", monkeypatch)
    _train_fails(tmp_path, monkeypatch, "imgs/train/star/000.png: the label folder 'star' appears in split train but not in test",
                 f"data.dataset.checksums_sha256={pin}")
    (tmp_path / "imgs.sha256").write_text("# nothing\n")
    pin = hashlib.sha256(b"# nothing\n").hexdigest()
    _train_fails(tmp_path, monkeypatch, "imgs.sha256: lists no files: the dataset is empty",
                 f"data.dataset.checksums_sha256={pin}")


def test_a_dataset_of_one_file_and_lists_validate_checks(tmp_path: Path, monkeypatch) -> None:
    # `path` may name one Parquet file: `gitops data checksums FILE` lists it by its file name and
    # training reads it; an empty folder is bad data (exit 1), not a bad command line; and what training
    # would refuse in the list itself (no files, a split_files pattern that matches nothing) `validate`
    # reports with its position in data.yaml
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"f_a": np.arange(40, dtype=np.float32), "y": np.arange(40) % 2}), tmp_path / "t" / "one.parquet")
    pin = _pin(tmp_path, "t/one.parquet", "one.sha256", monkeypatch)
    listed = (tmp_path / "one.sha256").read_text()
    assert listed.endswith("  one.parquet\n") and listed.count("\n") == 1
    spec = {"name": "parquet", "path": "t/one.parquet", "checksums": "one.sha256", "checksums_sha256": pin,
            "feature_prefix": "f_", "label": "y"}
    _write_model(tmp_path, "shapes", spec, steps=4, batch=4)
    done = _cli(["train", "shapes"], tmp_path, monkeypatch)
    assert done.exit_code == 0, done.output
    (tmp_path / "other.sha256").write_text(listed.replace("one.parquet", "two.parquet"))
    other = hashlib.sha256((tmp_path / "other.sha256").read_bytes()).hexdigest()
    _write_model(tmp_path, "wrong", {**spec, "checksums": "other.sha256", "checksums_sha256": other})
    done = _cli(["train", "wrong"], tmp_path, monkeypatch)
    assert done.exit_code == 1 and "other.sha256:1: lists two.parquet, but the dataset's path is the one file" in done.output

    (tmp_path / "empty").mkdir()
    done = _cli(["data", "checksums", "empty", "--out", "empty.sha256"], tmp_path, monkeypatch)
    assert done.exit_code == 1 and "empty: holds no files to list" in done.output, done.output
    assert not (tmp_path / "empty.sha256").exists()
    (tmp_path / "empty.sha256").write_text("# nothing yet\n")
    empty = hashlib.sha256(b"# nothing yet\n").hexdigest()
    _write_model(tmp_path, "nothing", {**spec, "path": "empty", "checksums": "empty.sha256", "checksums_sha256": empty})
    done = _cli(["validate", "models/nothing"], tmp_path, monkeypatch)
    assert done.exit_code == 1 and "data.yaml:" in done.output, done.output
    assert "data.dataset.checksums: empty.sha256: lists no files: the dataset is empty" in done.output
    _write_model(tmp_path, "nothing", {**spec, "split_files": {"train": ["one.parquet"], "test": ["tst.parquet"]}})
    done = _cli(["validate", "models/nothing"], tmp_path, monkeypatch)
    assert done.exit_code == 1, done.output
    assert "data.dataset.split_files.test: 'tst.parquet' matches no file of one.sha256" in done.output
    assert "one.sha256: one.parquet matches" not in done.output  # the file is in exactly one split


def test_parquet_without_the_named_column(tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"f1": np.zeros(20, np.float32), "y": np.zeros(20, np.int64)}), tmp_path / "t" / "a.parquet")
    spec = {"name": "parquet", "path": "t", "checksums": "t.sha256",
            "checksums_sha256": _pin(tmp_path, "t", "t.sha256", monkeypatch), "features": ["f1", "f2"], "label": "y"}
    _write_model(tmp_path, "shapes", spec)
    _train_fails(tmp_path, monkeypatch, f"{tmp_path / 't' / 'a.parquet'}: no column 'f2' (columns: f1, y)")


# --- training: resume after kill -9 is bit-identical, also with worker processes ------------------------


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process /proc lists now."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry)] = (int(fields[1]), fields[0])
    return found


def _descendants(pid: int) -> list[int]:
    """The PIDs of `pid`'s children, their children, and so on."""
    table, found, todo = _processes(), [], [pid]
    while todo:
        kids = [p for p, (parent, _) in table.items() if parent == todo[-1]]
        todo.pop()
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Still running (an exited process that no one has reaped yet, state Z, is not)."""
    return _processes().get(pid, (0, "Z"))[1] != "Z"


def _shared_memory(pids: list[int]) -> set[str]:
    """The /dev/shm/psm_* segments (Python's multiprocessing.shared_memory) that `pids` have mapped now."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names.update(word for word in maps.split() if word.startswith("/dev/shm/psm_"))
    return names


def _wait_until_gone(pids: list[int], seconds: float = 30) -> list[int]:
    """Poll until none of `pids` runs (at most `seconds`); returns those still running."""
    deadline = time.monotonic() + seconds
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


def _kill_survivors(proc: subprocess.Popen, pids: list[int]) -> None:
    """After a failed test: SIGKILL `proc` and whatever of `pids` still runs, so no test leaves processes behind."""
    for pid in [proc.pid, *pids]:
        if _running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_sigkill_mid_epoch_ends_the_workers_and_resume_with_two_workers_is_bit_identical(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    """`kill -9` of the trainer alone, as a user does: its Grain workers and multiprocessing's resource tracker
    end too (they used to live on with parent PID 1), the tracker unlinks the shared memory they had mapped,
    and `--resume` goes on to the same weights as a run never interrupted."""
    from gitops.learn import train
    from gitops.learn.checkpoint import restore_plain

    _image_repo(tmp_path, monkeypatch, per_class=16)
    # 28 training images / batch 8: 3 steps per epoch, so checkpoints every 10 steps fall mid-epoch
    sets = ["train.steps=60", "train.checkpoint.every_steps=10", "train.eval_every=200", "data.dataset.workers=2"]
    cfg = config.load("shapes", tmp_path, sets)
    ckpt_dir = tmp_path / "runs" / "shapes" / cfg.short_fingerprint / "checkpoints"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "1", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "gitops.cli", "train", "shapes", *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline, committed, children = time.monotonic() + 120, [], []
        while time.monotonic() < deadline and proc.poll() is None:
            committed = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()] if ckpt_dir.is_dir() else []
            if any(step >= 20 for step in committed):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        children = _descendants(proc.pid)
        workers = [p for p in children if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2, [_cmdline(p) for p in children]
        mapped = _shared_memory([proc.pid, *children])
        proc.kill()  # SIGKILL to the trainer only: no cleanup runs in it
        proc.wait()
        left = [_cmdline(p) or str(p) for p in _wait_until_gone(children)]
    finally:
        _kill_survivors(proc, children)
    assert not left, f"outlived the killed trainer: {left}"
    assert not [name for name in mapped if Path(name).exists()], "shared memory left behind"
    assert committed
    resumed = subprocess.run([*argv, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr and "resuming from step 0" not in resumed.stderr

    reference = tmp_path / "reference"  # uninterrupted, in-process, with no worker processes at all
    ref_cfg = config.load("shapes", tmp_path, [*sets[:-1], "data.dataset.workers=0"])
    assert ref_cfg.training_fingerprint == cfg.training_fingerprint
    train.train_and_evaluate(ref_cfg, reference, root=tmp_path)
    a, b = _flat(restore_plain(ckpt_dir / "60")), _flat(restore_plain(reference / "checkpoints" / "60"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the trial processes through /proc")
def test_sigkill_of_a_parallel_sweep_ends_its_trials_and_their_workers(tmp_path: Path, monkeypatch) -> None:
    """`kill -9` of `gitops sweep --parallel`: each trial (`gitops train --trial N`) sees its parent gone,
    SIGTERMs itself and stops (exit 143, its workers closed), instead of training on beside a later sweep."""
    _image_repo(tmp_path, monkeypatch, per_class=16, workers=2)
    (tmp_path / "models" / "shapes" / "sweep.yaml").write_text(
        "method: grid\ntrials: 1\nmetric: val/accuracy\n"
        "parameters:\n  train.steps: {values: [100000]}\n", encoding="utf-8")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "1", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "gitops.cli", "sweep", "shapes", "--parallel", "2"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, tree = time.monotonic() + 120, []
        while time.monotonic() < deadline and proc.poll() is None:
            tree = _descendants(proc.pid)  # the trial, its resource tracker and its 2 workers
            if sum("spawn_main" in _cmdline(p) for p in tree) == 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]
        assert any("--trial" in _cmdline(p) for p in tree), [_cmdline(p) for p in tree]
        proc.kill()
        proc.wait()
        left = [_cmdline(p) or str(p) for p in _wait_until_gone(tree)]
    finally:
        _kill_survivors(proc, tree)
    assert not left, f"outlived the killed sweep: {left}"
    log = (tmp_path / "runs" / ".sweeps" / "logs" / "shapes-trial0.log").read_text(encoding="utf-8")
    assert "terminated (SIGTERM)" in log, log


def test_dry_run_reports_input_throughput_and_the_bottleneck(tmp_path: Path, monkeypatch) -> None:
    _image_repo(tmp_path, monkeypatch, per_class=8)
    done = _cli(["train", "shapes", "--dry-run"], tmp_path, monkeypatch)
    assert done.exit_code == 0, done.output
    assert "input pipeline: " in done.output and " examples/s (0 worker processes); the step takes " in done.output
    assert "bottleneck: " in done.output
    assert not (tmp_path / "runs").exists()


# --- the examples: trained once for the suite (conftest.trained_examples), released, predicted ---------------


def test_streaming_examples_report_release_and_predict_labels(trained_examples, example_repo: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    for name in ("shapes-cnn", "tabular-mlp"):
        run = trained_examples[name]
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["data"] == {"skipped": 0, "skipped_files": [], "workers": 0}
        done = _cli(["report", str(run)], example_repo, monkeypatch)
        assert done.exit_code == 0, done.output  # its gates pass
        done = _cli(["release", name, "--run", str(run)], example_repo, monkeypatch)
        assert done.exit_code == 0, done.output
    images = REPO / "models" / "shapes-cnn" / "images" / "test"
    files = [(kind, f) for kind in ("circle", "cross", "square", "triangle") for f in sorted((images / kind).glob("*.png"))[:5]]
    pixels = np.stack([np.asarray(Image.open(f).convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32)[..., None]
                       for _, f in files])  # raw pixels 0..255: predict applies the saved min-max scaling
    np.save(tmp_path / "x.npy", pixels)
    done = _cli(["predict", "shapes-cnn@v1.0.0", "--input", str(tmp_path / "x.npy")], example_repo, monkeypatch)
    assert done.exit_code == 0, done.output
    predicted = [p["label"] for p in json.loads(done.output)["predictions"]]
    assert sum(p == kind for p, (kind, _) in zip(predicted, files, strict=True)) >= 16, predicted


def test_feed_state_resumes_the_same_batches_with_the_same_or_another_worker_count(tmp_path: Path, monkeypatch) -> None:
    from gitops.learn import data

    _image_repo(tmp_path, monkeypatch, per_class=8)
    ds = data.load(config.load("shapes", tmp_path).data, tmp_path)
    whole = streaming.Feed(ds, 4, seed=3)
    batches = [whole.next()[0] for _ in range(9)]  # 14 training images: 3 batches per epoch, 3 epochs
    whole.close()
    first = streaming.Feed(ds, 4, seed=3)
    for _ in range(4):
        first.next()
    saved = json.loads(json.dumps(first.state()))  # what a checkpoint's meta keeps
    first.close()
    assert saved["batches"] == 4 and saved["workers"] == 0 and saved["grain"]
    for state in (saved, {**saved, "workers": 2}):  # Grain's set_state, then the start-at-batch path
        again = streaming.Feed(ds, 4, seed=3)
        again.restore(state)
        rest = [again.next()[0] for _ in range(5)]
        assert again.state()["batches"] == 9
        again.close()
        for a, b in zip(rest, batches[4:], strict=True):
            assert np.array_equal(a, b)


# --- data.dataset.remainder: drop or pad the epoch's last batch ------------------------------------------


def _table_repo(repo: Path, monkeypatch: pytest.MonkeyPatch, rows: int = 30, **dataset) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    (repo / "table").mkdir()
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    pq.write_table(pa.table({"f_a": x[:, 0], "f_b": x[:, 1], "f_c": x[:, 2], "target": (x[:, 0] > 0).astype(np.int64)}),
                   repo / "table" / "part-0.parquet", row_group_size=8)
    spec = {"name": "parquet", "path": "table", "checksums": "table.sha256",
            "checksums_sha256": _pin(repo, "table", "table.sha256", monkeypatch), "feature_prefix": "f_",
            "label": "target", "num_classes": 2, **dataset}
    _write_model(repo, "tab", spec, splits="validation: 0.0\n  test: 0.0\n")
    return spec


def test_remainder_pad_feeds_every_record_once_per_epoch_and_drop_the_same_order(tmp_path: Path, monkeypatch) -> None:
    from gitops.learn import data

    _table_repo(tmp_path, monkeypatch, rows=30)
    drop = data.load(config.load("tab", tmp_path).data, tmp_path)
    pad = data.load(config.load("tab", tmp_path, ["data.dataset.remainder=pad"]).data, tmp_path)
    assert (drop.steps_per_epoch(8), pad.steps_per_epoch(8)) == (3, 4)
    drop_feed, pad_feed = streaming.Feed(drop, 8, seed=1), streaming.Feed(pad, 8, seed=1)
    dropped = [drop_feed.next() for _ in range(6)]
    padded = [pad_feed.next() for _ in range(8)]
    saved = json.loads(json.dumps(pad_feed.state()))
    drop_feed.close()
    pad_feed.close()
    assert all(len(b) == 2 for b in dropped) and all(len(b) == 3 for b in padded)
    raw = np.concatenate([drop.source[i][0][None] for i in range(30)])
    scaled = (raw - np.asarray(drop.preprocessing.shift)) / np.asarray(drop.preprocessing.divisor)
    for epoch in range(2):
        batches = padded[4 * epoch:4 * epoch + 4]
        w = np.concatenate([b[2] for b in batches])
        assert w.dtype == np.float32 and w.tolist() == [1.0] * 30 + [0.0] * 2  # padding only ends the epoch
        rows = np.concatenate([b[0] for b in batches])[:30]
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(rows), order(scaled), rtol=1e-5, atol=1e-5)  # every record once
        for d, p in zip(dropped[3 * epoch:3 * epoch + 3], batches[:3], strict=True):  # drop's batches are pad's first
            assert np.array_equal(d[0], p[0]) and np.array_equal(d[1], p[1])
    # a resume continues the padded stream exactly (Grain's state, or from the batch count)
    for state in (saved, {**saved, "workers": 2}):
        again = streaming.Feed(pad, 8, seed=1)
        again.restore({**state, "batches": 8} if state["workers"] == 2 else state)
        more = again.next()
        again.close()
        whole = streaming.Feed(pad, 8, seed=1)
        expected = [whole.next() for _ in range(9)][-1]
        whole.close()
        assert all(np.array_equal(a, b) for a, b in zip(more, expected, strict=True))


def test_padding_rows_count_in_no_loss_gradient_or_metric(tmp_path: Path, monkeypatch) -> None:
    import jax
    import jax.numpy as jnp

    from gitops.learn import data, train

    _table_repo(tmp_path, monkeypatch, rows=30)
    for accumulate in (1, 2):
        cfg = config.load("tab", tmp_path, ["data.dataset.remainder=pad", "train.batch_size=8",
                                            f"train.gradient_accumulation={accumulate}"])
        session = train.build_session(cfg, data.load(cfg.data, tmp_path))
        session.feed.close()
        assert session.steps_per_epoch == 4
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 3)).astype(np.float32)
        y = (np.arange(8) % 2).astype(np.int32)
        w = np.asarray([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
        garbage = x.copy()
        garbage[4:] = 1e4  # what padding rows hold must not matter

        def step(*batch, session=session):
            key = session.device["base_key"]
            state = jax.tree.map(jnp.copy, session.state)
            state, acc, _ = session.batch_fn(state, session.zero_metrics(), session.no_divergence(), np.int32(0),
                                             batch[0], batch[1], key, np.bool_(False), *batch[2:])
            return jax.tree.leaves(state), {k: (float(s), float(c)) for k, (s, c) in acc.items()}

        padded, padded_acc = step(garbage, y, w)
        alone, alone_acc = step(x[:4], y[:4])  # the four real rows as a batch of their own
        assert padded_acc["loss"][1] == 4.0 and padded_acc["accuracy"][1] == 4.0
        np.testing.assert_allclose(padded_acc["loss"][0], alone_acc["loss"][0], rtol=1e-5)
        for a, b in zip(padded, alone, strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-5, atol=1e-6)


def test_remainder_is_stated_only_where_it_can_be_honoured(tmp_path: Path, monkeypatch) -> None:
    _table_repo(tmp_path, monkeypatch)
    base = config.load("tab", tmp_path)
    assert base.data.dataset["remainder"] == "drop"
    assert config.load("tab", tmp_path, ["data.dataset.remainder=drop"]).training_fingerprint == base.training_fingerprint
    assert config.load("tab", tmp_path, ["data.dataset.remainder=pad"]).training_fingerprint != base.training_fingerprint
    data_yaml = tmp_path / "models" / "tab" / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace("  label:", "  remainder: pad\n  label:"))
    (tmp_path / "models" / "tab" / "model.yaml").write_text("architecture: resnet\n")
    done = _cli(["validate", "models/tab"], tmp_path, monkeypatch)
    assert done.exit_code == 1 and "data.dataset.remainder: pad puts weight-0 rows into BatchNorm" in done.output, done.output
    # packed text rows (language modelling) always drop: pad is refused there too
    with pytest.raises(GitopsError, match="remainder: pad is for record datasets"):
        config.load("stdlib-lm", REPO, ["data.dataset.remainder=pad"])
    # in-memory sources draw their batches on the device and always drop the remainder: the key is refused
    data_yaml.write_text("dataset:\n  name: iris\n  remainder: pad\n")
    (tmp_path / "models" / "tab" / "model.yaml").write_text("architecture: mlp\n")
    done = _cli(["validate", "models/tab"], tmp_path, monkeypatch)
    assert done.exit_code == 1 and "remainder" in done.output, done.output


# --- predefined splits from files (split_files) -----------------------------------------------------------


def _shards(folder: Path, name: str, labels: list[int]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = ArrayRecordWriter(str(folder / name), "group_size:1")
    for label in labels:
        buf = io.BytesIO()
        np.savez(buf, x=np.full(2, label, np.float32), y=np.int64(label))
        writer.write(buf.getvalue())
    writer.close()


def test_split_files_take_predefined_splits_from_parquet_files_and_array_record_shards(tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gitops.learn import data

    (tmp_path / "t").mkdir()
    for name, rows in (("test.parquet", 10), ("train.parquet", 30)):
        pq.write_table(pa.table({"f_a": np.arange(rows, dtype=np.float32), "y": np.arange(rows) % 2}), tmp_path / "t" / name)
    spec = {"name": "parquet", "path": "t", "checksums": "t.sha256", "checksums_sha256": _pin(tmp_path, "t", "t.sha256", monkeypatch),
            "feature_prefix": "f_", "label": "y", "split_files": {"train": ["train*.parquet"], "test": ["test*.parquet"]}}
    _write_model(tmp_path, "tab", spec)  # splits: validation 0.2 is cut from train; test 0.2 is not used
    ds = data.load(config.load("tab", tmp_path).data, tmp_path)
    # record indexes follow the list order: test.parquet's 10 rows first, then train.parquet's 30
    assert ds.test.indexes.tolist() == list(range(10))
    assert sorted([*ds.train.indexes, *ds.val.indexes]) == list(range(10, 40)) and len(ds.val) == 6
    assert {float(ds.source[int(i)][0][0]) for i in ds.test.indexes} == set(map(float, range(10)))

    # array_record: per-split shards in folders; a val/ shard gives the validation split
    for shard, labels in (("train/a.array_record", [0, 1] * 8), ("train/b.array_record", [1, 0] * 4),
                          ("val/a.array_record", [0, 1, 1]), ("test/a.array_record", [1, 0])):
        _shards(tmp_path / "s" / Path(shard).parent, Path(shard).name, labels)
    spec = {"name": "array_record", "path": "s", "checksums": "s.sha256", "num_classes": 2, "input_shape": [2],
            "checksums_sha256": _pin(tmp_path, "s", "s.sha256", monkeypatch),
            "split_files": {"train": ["train/*"], "validation": ["val/*"], "test": ["test/*"]}}
    _write_model(tmp_path, "rec", spec)
    ds = data.load(config.load("rec", tmp_path).data, tmp_path)
    # sorted list: test/a (2), train/a (16), train/b (8), val/a (3)
    assert ds.test.indexes.tolist() == [0, 1] and ds.train.indexes.tolist() == list(range(2, 26))
    assert ds.val.indexes.tolist() == [26, 27, 28] and int(ds.source[26][1]) == 0


def test_split_files_errors_name_the_file_or_the_pattern(tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t").mkdir()
    for name in ("train.parquet", "test.parquet", "extra.parquet"):
        pq.write_table(pa.table({"f_a": np.arange(12, dtype=np.float32), "y": np.arange(12) % 2}), tmp_path / "t" / name)
    spec = {"name": "parquet", "path": "t", "checksums": "t.sha256", "checksums_sha256": _pin(tmp_path, "t", "t.sha256", monkeypatch),
            "feature_prefix": "f_", "label": "y", "split_files": {"train": ["train.parquet"], "test": ["test.parquet"]}}
    _write_model(tmp_path, "shapes", spec)
    _train_fails(tmp_path, monkeypatch, "t.sha256: extra.parquet is in no split: it matches none of data.dataset.split_files")
    _train_fails(tmp_path, monkeypatch, "t.sha256: extra.parquet matches the split_files patterns of both train and test",
                 'data.dataset.split_files={"train": ["t*.parquet", "extra.parquet"], "test": ["test.parquet", "e*"]}')
    _train_fails(tmp_path, monkeypatch, "data.dataset.split_files.test: 'tst.parquet' matches no file of t.sha256",
                 'data.dataset.split_files={"train": ["*"], "test": ["tst.parquet"]}')
    # the list is all these checks read: validate reports the first one too, at its place in data.yaml
    done = _cli(["validate", "models/shapes", "--json"], tmp_path, monkeypatch)
    assert done.exit_code == 1, done.output
    (problem,) = json.loads(done.output)["models"]["shapes"]
    assert problem["file"] == "models/shapes/data.yaml" and problem["path"] == "data.dataset.split_files"
    assert problem["message"] == "t.sha256: extra.parquet is in no split: it matches none of data.dataset.split_files"
    data_yaml = tmp_path / "models" / "shapes" / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace("  label:", '  split_column: "y"\n  label:'))
    done = _cli(["validate", "models/shapes"], tmp_path, monkeypatch)
    assert done.exit_code == 1 and "set split_files or split_column, not both" in done.output, done.output
    data_yaml.write_text(data_yaml.read_text().replace('  split_column: "y"\n', ""))
    # records only the test split holds are read before the run too: a label out of range, a missing label
    pq.write_table(pa.table({"f_a": np.arange(4, dtype=np.float32), "y": [0, 1, 5, 1]}), tmp_path / "t" / "test.parquet")
    pin = _pin(tmp_path, "t", "t.sha256", monkeypatch)
    files = 'data.dataset.split_files={"train": ["train.parquet", "extra.parquet"], "test": ["test.parquet"]}'
    _train_fails(tmp_path, monkeypatch, f"{tmp_path / 't' / 'test.parquet'}: row group 0, row 2: label 5: labels must be "
                 "class indexes 0..1 (found 0..5)", files,
                 f"data.dataset.checksums_sha256={pin}", "data.dataset.num_classes=2")
    pq.write_table(pa.table({"f_a": np.arange(4, dtype=np.float32), "y": pa.array([0, None, 1, 1], pa.int64())}),
                   tmp_path / "t" / "test.parquet")
    pin = _pin(tmp_path, "t", "t.sha256", monkeypatch)
    _train_fails(tmp_path, monkeypatch, f"{tmp_path / 't' / 'test.parquet'}: row group 0: the label column 'y' has missing values",
                 files, f"data.dataset.checksums_sha256={pin}")


# --- bad input of every source: one clear error naming the file, exit 1, no traceback, no run folder -----------


def _two_files(repo: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[Path]]:
    """A small dataset of `name` in two files under repo/d; (dataset spec without the pin, the files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = repo / "d"
    if name == "parquet":
        files = [folder / "a.parquet", folder / "b.parquet"]
        folder.mkdir()
        for f in files:
            pq.write_table(pa.table({"f_a": np.arange(12, dtype=np.float32), "y": np.arange(12) % 2}), f)
        spec = {"name": "parquet", "feature_prefix": "f_", "label": "y"}
    elif name == "array_record":
        files = [folder / "a.array_record", folder / "b.array_record"]
        for f in files:
            _shards(folder, f.name, [0, 1] * 6)
        spec = {"name": "array_record", "num_classes": 2, "input_shape": [2]}
    else:
        rng = np.random.default_rng(5)
        files = [folder / kind / f"{n}.png" for kind in ("bar", "dot") for n in range(6)]
        for f in files:
            _png(f, f.parent.name, rng)
        spec = {"name": "image_folder", "image_size": [8, 8], "channels": 1}
    return {**spec, "path": "d", "checksums": "d.sha256"}, files


def _pinned(repo: Path, spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_model(repo, "shapes", {**spec, "checksums_sha256": _pin(repo, "d", "d.sha256", monkeypatch)}, steps=2, batch=2)


@pytest.mark.parametrize("source", ["image_folder", "parquet", "array_record"])
def test_bad_input_of_every_source(tmp_path: Path, monkeypatch, source: str) -> None:
    spec, files = _two_files(tmp_path, source, monkeypatch)
    _pinned(tmp_path, spec, monkeypatch)
    bad = files[1]
    kept = bad.read_bytes()
    bad.unlink()  # a checksum line for a missing file
    _train_fails(tmp_path, monkeypatch, f"d.sha256:2: lists {bad.relative_to(tmp_path / 'd').as_posix()}, but {bad} does not exist")
    bad.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))  # other bytes than the list says
    _train_fails(tmp_path, monkeypatch, f"{bad}: SHA-256 mismatch")
    bad.write_bytes(b"\x00not what it claims to be" * 8)  # listed with its own hash, but undecodable
    _pinned(tmp_path, spec, monkeypatch)
    expected = {"image_folder": "cannot decode the image", "parquet": "not a Parquet file",
                "array_record": "not an ArrayRecord file"}[source]
    _train_fails(tmp_path, monkeypatch, f"{bad}: {expected}")
    if source == "array_record":  # an ArrayRecord file whose records are not .npz
        from array_record.python.array_record_module import ArrayRecordWriter

        writer = ArrayRecordWriter(str(bad), "group_size:1")
        writer.write(b"raw bytes, not an npz")
        writer.close()
        _pinned(tmp_path, spec, monkeypatch)
        _train_fails(tmp_path, monkeypatch, f"of {files[0]}, {bad}: not an .npz with arrays 'x' and 'y'")
        _shards(bad.parent, bad.name, [1, 0, 3, 1])  # record 2 holds a label beyond num_classes: 2
        _pinned(tmp_path, spec, monkeypatch)
        _train_fails(tmp_path, monkeypatch, f"{bad}: record 2: label 3: labels must be class indexes 0..1")
    # an empty dataset: files that hold no records
    for f in files:
        f.unlink()
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"f_a": np.zeros(0, np.float32), "y": np.zeros(0, np.int64)}), files[0])
    elif source == "array_record":
        _shards(files[0].parent, files[0].name, [])
    else:  # only files that are not images, skipped on request: nothing left
        files[0].write_bytes(b"not an image")
        spec = {**spec, "skip_bad": True}
    _pinned(tmp_path, spec, monkeypatch)
    _train_fails(tmp_path, monkeypatch, "d.sha256: the dataset d holds no records")
