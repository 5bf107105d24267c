"""Language-modelling text through the streaming pipeline (gitops.learn.text_data): the same documents as one
pinned file, as shards under a folder or a file:// URL prefix pinned by a checksum list, as a Parquet text
column and as ArrayRecord records pack into the same rows; the packed cache is keyed by the data, the
tokenizer and sequence_length, reused, and rebuilt when damaged or half-built; bad text gets one clear error.

The documents are real text: the first files of models/stdlib-lm's corpus (the Python standard library).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from gitops import config
from gitops.errors import GitopsError, TrainingError
from gitops.learn import checksum_list, text_data

SPLITS = {"validation": 0.1, "test": 0.1, "seed": 0}
LENGTH = 16


@pytest.fixture(autouse=True)
def _data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITOPS_DATA_CACHE", str(tmp_path / "data-cache"))


@pytest.fixture(scope="module")
def docs() -> list[str]:
    corpus = gzip.decompress((REPO / "data/stdlib-lm/corpus.jsonl.gz").read_bytes()).decode("utf-8")
    return [json.loads(line)["text"][:1500] for line in corpus.splitlines()[:11]]


def _jsonl(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs).encode("utf-8")


def _listed(root: Path, folder: str) -> dict:
    text, _ = checksum_list.write(root / folder, root / f"{folder}.sha256")
    return {"path": folder, "checksums": f"{folder}.sha256", "checksums_sha256": hashlib.sha256(text.encode()).hexdigest()}


def _rows(ds) -> dict[str, np.ndarray]:
    """Every split's packed rows (inputs and the last label: the whole row of sequence_length + 1 tokens)."""
    out = {}
    for split in ("train", "val", "test"):
        indexes = getattr(ds, split).indexes
        rows = [ds.source[int(i)] for i in indexes]
        out[split] = np.stack([np.concatenate([x, y[-1:]]) for x, y in rows]) if rows else np.zeros((0, LENGTH + 1))
        x, y = ds.source.read_batch(indexes)  # the bulk read gives the same rows
        assert np.array_equal(x, out[split][:, :-1]) and np.array_equal(y, out[split][:, 1:])
        assert np.array_equal(x[:, 1:], y[:, :-1])  # labels are the inputs shifted by one token
    return out


def _load(root: Path, **dataset):
    return text_data.load({"dataset": {"sequence_length": LENGTH, **dataset}, "splits": SPLITS}, root)


def test_every_text_source_packs_the_same_rows(tmp_path: Path, docs: list[str]) -> None:
    """One pinned file, shards (.jsonl.gz, .jsonl, .txt) in a folder and under a file:// prefix, a Parquet column and
    ArrayRecord records: the same documents in the same order give the same rows, split by document."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    (tmp_path / "all.jsonl").write_bytes(_jsonl(docs))
    pin = hashlib.sha256((tmp_path / "all.jsonl").read_bytes()).hexdigest()
    reference = _load(tmp_path, name="text", path="all.jsonl", sha256=pin)
    want = _rows(reference)
    assert all(len(want[s]) for s in want) and reference.preprocessing.task == "language_modeling"
    text = {s: bytes(int(t) for t in want[s].reshape(-1) if t < 256) for s in want}  # rows are the packed stream
    holders = [[s for s in text if d[700:760].encode() in text[s]] for d in docs]
    assert all(len(h) == 1 for h in holders), holders  # split by document: each in exactly one split
    assert sum(h == ["train"] for h in holders) >= 7

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl(docs[:5])))
    (shards / "b.jsonl").write_bytes(_jsonl(docs[5:10]))
    (shards / "c.txt").write_text(docs[10], encoding="utf-8")
    listed = _listed(tmp_path, "shards")
    from gitops.cli import app

    pins = []
    for corpus in ("all.jsonl", "shards"):  # a tokenizer trained on the folder reads the same documents
        done = CliRunner().invoke(app, ["data", "tokenizer", str(tmp_path / corpus), "--out", str(tmp_path / "t.json"),
                                        "--vocab-size", "300"])
        assert done.exit_code == 0, done.output
        pins.append(done.stdout.split("sha256: ")[1].strip())
    assert pins[0] == pins[1]
    for path in ("shards", (tmp_path / "shards").as_uri()):  # a repository folder, then a URL prefix
        got = _rows(_load(tmp_path, name="text", **{**listed, "path": path}))
        for split in want:
            assert np.array_equal(got[split], want[split]), (path, split)

    (tmp_path / "table").mkdir()
    for part, chunk in enumerate((docs[:6], docs[6:])):
        table = pa.table({"id": np.arange(len(chunk)), "body": chunk})
        pq.write_table(table, tmp_path / "table" / f"part-{part}.parquet", row_group_size=2)
    got = _rows(_load(tmp_path, name="parquet", text="body", **_listed(tmp_path, "table")))
    for split in want:
        assert np.array_equal(got[split], want[split]), split

    (tmp_path / "records").mkdir()
    writer = ArrayRecordWriter(str(tmp_path / "records" / "r.array_record"), "group_size:1")
    for i, doc in enumerate(docs):
        buf = io.BytesIO()  # str, bytes and uint8 arrays are all text
        value = [np.asarray(doc), np.asarray(doc.encode()), np.frombuffer(doc.encode(), np.uint8)][i % 3]
        np.savez(buf, body=value)
        writer.write(buf.getvalue())
    writer.close()
    got = _rows(_load(tmp_path, name="array_record", text="body", **_listed(tmp_path, "records")))
    for split in want:
        assert np.array_equal(got[split], want[split]), split


def test_the_packed_cache_is_keyed_reused_and_rebuilt_when_damaged(tmp_path: Path, docs: list[str], monkeypatch) -> None:
    from gitops import scratch
    from gitops.learn import tokenize

    (tmp_path / "all.jsonl").write_bytes(_jsonl(docs))
    spec = {"name": "text", "path": "all.jsonl", "sha256": hashlib.sha256(_jsonl(docs)).hexdigest()}
    built: list[int] = []
    real_build = text_data.build_rows
    monkeypatch.setattr(text_data, "build_rows", lambda *a, **k: built.append(1) or real_build(*a, **k))

    first = _rows(_load(tmp_path, **spec))
    entries = [p for p in text_data.cache_root().iterdir() if not p.name.startswith(".")]
    assert built == [1] and len(entries) == 1
    assert _rows(_load(tmp_path, **spec))["train"].tobytes() == first["train"].tobytes() and built == [1]  # reused

    rows = entries[0] / "rows.bin"
    raw = bytearray(rows.read_bytes())
    raw[100] ^= 0xFF  # a flipped byte: the entry's hash no longer matches
    rows.write_bytes(bytes(raw))
    again = _rows(_load(tmp_path, **spec))
    assert built == [1, 1] and all(np.array_equal(again[s], first[s]) for s in first)
    rows.write_bytes(rows.read_bytes()[:-7])  # a partial file
    _load(tmp_path, **spec)
    assert built == [1, 1, 1]

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = text_data.cache_root() / f"{text_data.SCRATCH}{scratch._host()}-{dead.stdout.strip()}-x"
    (stale / "docs.bin").parent.mkdir(parents=True)
    (stale / "docs.bin").write_bytes(b"\0" * 64)  # a build killed half-way
    _load(tmp_path, **{**spec, "sequence_length": LENGTH * 2})  # another key: another entry, the stale build swept
    assert not stale.exists() and built == [1, 1, 1, 1]
    _load(tmp_path, **{**spec, "encoding_errors": "replace"})  # the reader's settings are in the key too
    digest = tokenize.train_bpe(docs, 300, tmp_path / "tok.json")
    bpe = _load(tmp_path, **spec, tokenizer={"name": "file", "path": "tok.json", "sha256": digest})
    assert built == [1, 1, 1, 1, 1, 1] and bpe.preprocessing.num_outputs == 300
    assert len(bpe.train) < len(first["train"])  # several bytes per token: fewer rows
    names = {p.name for p in text_data.cache_root().iterdir()}
    assert len(names) == 4 and not any(n.startswith(".") for n in names)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("GITOPS_DATA_CACHE", str(tmp_path / "not-a-folder"))
    with pytest.raises(TrainingError, match="cannot write the packed text cache under .*GITOPS_DATA_CACHE"):
        _load(tmp_path, **spec)


def _lm_model(repo: Path, dataset: dict) -> None:
    folder = repo / "models" / "lm"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.yaml").write_text(
        "dataset:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in dataset.items())
        + "splits: {validation: 0.1, test: 0.1, seed: 0}\npreprocessing: {scale: none}\n", encoding="utf-8")
    (folder / "model.yaml").write_text("architecture: decoder\nnum_layers: 1\nnum_heads: 2\nembed_dim: 16\n"
                                       "mlp_dim: 32\nattention: plain\n", encoding="utf-8")
    (folder / "train.yaml").write_text("seed: 0\nbatch_size: 4\nsteps: 4\noptimizer: {name: adam, learning_rate: 1e-3}\n"
                                       "eval_every: 2\nlog_every: 2\ncheckpoint: {every_steps: 2}\n", encoding="utf-8")
    (folder / "release.yaml").write_text("description: text test\n", encoding="utf-8")


def _train(repo: Path, monkeypatch, *sets: str):
    from gitops.cli import app

    monkeypatch.chdir(repo)
    monkeypatch.setenv("CI", "1")
    return CliRunner().invoke(app, ["train", "lm", *(a for s in sets for a in ("--set", s))])


def _fails(repo: Path, monkeypatch, match: str, *sets: str) -> None:
    done = _train(repo, monkeypatch, *sets)
    assert done.exit_code == 1, done.output
    assert match in done.output and "Traceback" not in done.output, done.output
    assert not (repo / "runs").exists() or not any((repo / "runs").rglob("manifest.json"))


def test_bad_text_names_the_file_and_where(tmp_path: Path, docs: list[str], monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t").mkdir()
    bad = tmp_path / "t" / "b.jsonl.gz"
    bad.write_bytes(gzip.compress(_jsonl(docs[:2]) + b'{"text": "caf\xe9"}\n'))
    (tmp_path / "t" / "a.jsonl").write_bytes(_jsonl(docs[2:]))
    offset = len(_jsonl(docs[:2])) + len(b'{"text": "caf')
    _lm_model(tmp_path, {"name": "text", **_listed(tmp_path, "t"), "sequence_length": 8})
    _fails(tmp_path, monkeypatch, f"{bad}: line 3: not UTF-8 at byte offset {offset}")
    done = _train(tmp_path, monkeypatch, "data.dataset.encoding_errors=replace")  # the option that replaces
    assert done.exit_code == 0, done.output
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "t" / "a.jsonl").write_bytes(_jsonl(docs[3:]))  # a shard changed after its list was pinned
    _fails(tmp_path, monkeypatch, f"{tmp_path / 't' / 'a.jsonl'}: SHA-256 mismatch")

    (tmp_path / "p").mkdir()
    table = tmp_path / "p" / "x.parquet"
    pq.write_table(pa.table({"body": pa.array([d.encode() for d in docs[:3]] + [b"ok \xff\xfe"], pa.binary())}), table,
                   row_group_size=2)
    _lm_model(tmp_path, {"name": "parquet", **_listed(tmp_path, "p"), "text": "content", "sequence_length": 8})
    _fails(tmp_path, monkeypatch, f"{table}: no column 'content' (columns: body)")
    _fails(tmp_path, monkeypatch, f"{table}: row 3 (column 'body'): not UTF-8 at byte offset 3", "data.dataset.text=body")

    _lm_model(tmp_path, {"name": "parquet", **_listed(tmp_path, "p"), "text": "body"})  # no sequence_length
    done = _train(tmp_path, monkeypatch)
    assert done.exit_code == 1 and "a text column needs sequence_length" in done.output, done.output
    _lm_model(tmp_path, {"name": "text", **_listed(tmp_path, "t"), "sha256": "0" * 64})
    with pytest.raises(GitopsError, match="exactly one of sha256"):
        config.load("lm", tmp_path)
