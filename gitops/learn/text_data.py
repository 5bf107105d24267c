"""Text for language models: UTF-8 documents, tokenized once into packed rows, read through the Grain pipeline.

Where documents come from (`documents`), numbered in order (listed paths sorted, then file order; empty
documents skipped): that number is a document's record index.

- dataset `text`: `.txt` files (one document each) and `.jsonl` files (one document per line, in
  `text_field`), either gzip-compressed (`.gz`). One file in the repository pinned by `sha256:`, or
  files/shards under a folder or URL prefix pinned by a checksum list (`checksums:` +
  `checksums_sha256:`, verified before anything is read, as every streaming source: `streaming.locate`);
- a `text:` column of a `parquet` source (one row group at a time), or a `text:` array of the `.npz`
  records of an `array_record` source (a str, bytes or uint8 array).

Bytes that are not UTF-8 stop with the file, line/row/record and byte offset (`encoding_errors:
replace` substitutes U+FFFD instead).

Splits are by document: several documents are shuffled by the split seed and test, then validation,
take documents until they hold their share of the characters; train keeps the rest. A single document
is cut into contiguous character ranges instead (train, validation, test). No text is in two splits.

Packing: each split's documents, in split order, are tokenized, each followed by the tokenizer's
end-of-document token, joined and cut into rows of `sequence_length + 1` tokens (the remainder is
dropped). A row's first `sequence_length` tokens are the inputs, the next token at every position the
labels.

The packed cache (this module owns its format): `<data cache>/text/<key>/` holds `rows.bin` (the rows,
uint16 or uint32 token ids, train rows then validation then test) and `meta.json` (row counts, dtype,
the SHA-256 of rows.bin, the key's document). The key is the SHA-256 of the pack version, the data's
pin, the reader settings, the splits, the tokenizer's fingerprint and `sequence_length`, so a second run
with the same data and tokenizer skips tokenization. An entry is built in a scratch folder (documents'
tokens spill to disk there, so memory holds only per-document offsets) and renamed into place: a killed
build leaves no entry, and its scratch folder is swept by the next build. An entry whose size or hash
is wrong is rebuilt.

Training reads the rows through `PackedSource` (reads by offset) as the source of a
`gitops.learn.streaming.StreamingDataset`: global shuffle by seed, per-process shards, worker processes,
the iterator's state in every checkpoint, like every other streaming source.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from gitops.checksums import sha256_file
from gitops.errors import IntegrityError, TrainingError
from gitops.learn.tokenize import Tokenizer, from_config
from gitops.repo.tree import inside_repository

PACK_VERSION = 2  # bump when documents, splits or packing change (part of the cache key)
SCRATCH = ".build-"  # scratch folders of builds in progress (gitops.scratch)
_BATCH_CHARS = 1 << 22  # documents tokenized together (encode_many) up to about this many characters
_FLUSH_TOKENS = 1 << 20


class TextError(TrainingError):
    """Text that cannot be read (not UTF-8, not JSON, a missing column); the message names the file (exit 1)."""


# --- documents -------------------------------------------------------------------------------------------


def _decode(raw: bytes, errors: str, where: str, base: int = 0) -> str:
    try:
        return raw.decode("utf-8", errors="strict" if errors == "strict" else "replace")
    except UnicodeDecodeError as exc:
        raise TextError(f"{where}: not UTF-8 at byte offset {base + exc.start} ({exc.reason}); fix the file "
                        "or set data.dataset.encoding_errors: replace") from None


def file_documents(path: Path, *, name: str | None = None, text_field: str = "text", errors: str = "strict",
                   label: str = "") -> Iterator[str]:
    """The documents of one .txt/.jsonl file (optionally .gz), decoded as UTF-8, streamed line by line.

    `name` is the listed name that tells the format (a fetched file's local name is its hash); a .txt
    file is one document, read whole. Byte offsets in messages count the decompressed bytes.

    Raises:
        TextError: bytes that are not UTF-8 (the file, line and byte offset), a JSON line that is not an
            object with a string `text_field`, or an unreadable or broken gzip file.
    """
    import json

    label = label or str(path)
    listed = name or path.name
    gz = listed.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:  # noqa: SIM115
            if not listed.removesuffix(".gz").endswith(".jsonl"):
                text = _decode(fh.read(), errors, label)
                if text:
                    yield text
                return
            offset = 0
            for number, line in enumerate(fh, start=1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                text = _decode(line, errors, f"{label}: line {number}", start)
                try:
                    item = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise TextError(f"{label}: line {number}: not JSON ({exc.msg})") from None
                if not isinstance(item, dict) or not isinstance(item.get(text_field), str):
                    raise TextError(f"{label}: line {number}: expected an object with a string {text_field!r}")
                if item[text_field]:
                    yield item[text_field]
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise TextError(f"{label}: not a readable{' gzip' if gz else ''} file ({exc})") from None


def parquet_documents(path: Path, column: str, errors: str = "strict") -> Iterator[str]:
    """The non-empty strings of a Parquet file's `column`, one row group at a time.

    Raises:
        TextError: no such column, a column that is not string/binary, or a value that is not UTF-8
            (the file, row and byte offset).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid and friends
        raise TextError(f"{path}: not a Parquet file ({exc})") from None
    names = handle.schema_arrow.names
    if column not in names:
        raise TextError(f"{path}: no column {column!r} (columns: {', '.join(names[:20])})")
    kind = handle.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise TextError(f"{path}: column {column!r} holds {kind}, not text")
    row = 0
    for g in range(handle.metadata.num_row_groups):
        try:
            values = handle.read_row_group(g, columns=[column], use_threads=False).column(0)
            values = values.cast(pa.large_binary()).to_pylist()  # bytes: decoded (and checked) here
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise TextError(f"{path}: cannot read row group {g}: {exc}") from None
        for raw in values:
            if raw:
                yield _decode(raw, errors, f"{path}: row {row} (column {column!r})")
            row += 1


def array_record_documents(path: Path, key: str, errors: str = "strict") -> Iterator[str]:
    """The texts of an ArrayRecord file whose records are `.npz` files with an array `key` (str, bytes or uint8).

    Raises:
        TextError: not ArrayRecord, a record without `key`, or text that is not UTF-8 (record and byte offset).
    """
    from grain.sources import ArrayRecordDataSource

    try:
        source = ArrayRecordDataSource([str(path)])
        count = len(source)
    except Exception as exc:  # noqa: BLE001 - array_record raises plain RuntimeErrors
        raise TextError(f"{path}: not an ArrayRecord file ({exc})") from None
    for start in range(0, count, 256):
        for i, raw in enumerate(source.__getitems__(list(range(start, min(count, start + 256)))), start):
            where = f"{path}: record {i}"
            try:
                with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                    value = npz[key]
            except (KeyError, ValueError, OSError) as exc:
                raise TextError(f"{where}: not an .npz with an array {key!r} ({exc})") from None
            if value.dtype.kind == "U":
                text = str(value.reshape(-1)[0]) if value.size else ""
            elif value.dtype.kind == "S":
                text = _decode(bytes(value.reshape(-1)[0]) if value.size else b"", errors, where)
            elif value.dtype == np.uint8:
                text = _decode(value.tobytes(), errors, where)
            else:
                raise TextError(f"{where}: array {key!r} holds {value.dtype}; expected a string, bytes or uint8")
            if text:
                yield text


def _sources(ds: Mapping[str, Any], root: Path) -> tuple[str, list[Callable[[], Iterator[str]]], str]:
    """(data pin, one document reader per input file in order, a label for messages), inputs verified.

    Raises:
        TrainingError / IntegrityError / GitopsError: a missing file or one that does not match its pin.
    """
    from gitops.learn import streaming

    errors = ds.get("encoding_errors", "strict")
    if ds["name"] == "text" and ds.get("sha256"):  # one file in the repository
        rel = ds["path"]
        path = inside_repository(root, rel, "text file")
        if not path.is_file():
            raise TrainingError(f"text file {rel} not found under {root}")
        actual = sha256_file(path)
        if actual != ds["sha256"]:
            raise IntegrityError(f"text file {rel}: SHA-256 mismatch (expected {ds['sha256']}, got {actual}); "
                                 "nothing was trained. Update data.dataset.sha256 if the change is intended")
        read = lambda: file_documents(path, text_field=ds.get("text_field", "text"), errors=errors,  # noqa: E731
                                      label=f"text file {rel}")
        return actual, [read], f"text file {rel}"
    files, _, label = streaming.locate(ds, root)
    readers: list[Callable[[], Iterator[str]]] = []
    for listed in sorted(files):
        local = files[listed]
        if ds["name"] == "parquet":
            readers.append(lambda p=local: parquet_documents(p, ds["text"], errors))
        elif ds["name"] == "array_record":
            readers.append(lambda p=local: array_record_documents(p, ds["text"], errors))
        else:
            name = PurePosixPath(listed).name
            if not name.removesuffix(".gz").endswith((".txt", ".jsonl")):
                raise TextError(f"{local}: a text dataset reads .txt and .jsonl files (optionally .gz), not {name}")
            readers.append(lambda p=local, n=name: file_documents(p, name=n, text_field=ds.get("text_field", "text"),
                                                                  errors=errors))
    return ds["checksums_sha256"], readers, label


def documents(readers: Iterable[Callable[[], Iterator[str]]]) -> Iterator[str]:
    """Every non-empty document of the readers, in order (one file open at a time)."""
    for read in readers:
        yield from read()


def iter_corpus_texts(path: Path, text_field: str = "text") -> Iterator[str]:
    """Every document of a corpus file (.txt/.jsonl, optionally .gz), or of every such file under a folder in
    sorted order (the order a `text` dataset reads them), streamed, for training a tokenizer on it.

    Raises:
        TextError: a file that is not UTF-8 or not JSON Lines (see `file_documents`), or a folder with no such file.
    """
    path = Path(path)
    if not path.is_dir():
        yield from file_documents(path, text_field=text_field)
        return
    from gitops.learn import checksum_list

    names = [n for n in checksum_list.list_files(path) if n.removesuffix(".gz").endswith((".txt", ".jsonl"))]
    if not names:
        raise TextError(f"{path}: holds no .txt or .jsonl file (optionally .gz)")
    for name in names:
        yield from file_documents(path / name, text_field=text_field)


# --- splits and packing -----------------------------------------------------------------------------------


def split_by_share(lengths: np.ndarray, validation: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) document indexes, each in the order it is packed: documents shuffled by `seed`;
    test takes them until it holds its share of the characters, then validation likewise; train the rest.
    """
    lengths = np.asarray(lengths, np.int64)
    order = np.random.default_rng(seed).permutation(len(lengths))
    total = float(lengths.sum())
    before = np.concatenate([[0], np.cumsum(lengths[order])[:-1]]).astype(np.float64)  # characters taken so far
    to_test = (before < test * total) if test else np.zeros(len(order), bool)
    to_val = ~to_test & (before < (test + validation) * total) if validation else np.zeros(len(order), bool)
    return order[~to_test & ~to_val], order[to_val], order[to_test]


def split_single(text: str, validation: float, test: float) -> tuple[str, str, str]:
    """(train, val, test) contiguous character ranges of one document (test and validation rounded up)."""
    n = len(text)
    n_test, n_val = math.ceil(n * test), math.ceil(n * validation)
    a, b = n - n_test - n_val, n - n_test
    return text[:a], text[a:b], text[b:]


class _RowWriter:
    """Joins token arrays and writes whole rows of `width` tokens to `fh`; counts the rows (the rest is dropped)."""

    def __init__(self, fh: Any, width: int, dtype: np.dtype):
        self.fh, self.width, self.dtype = fh, width, dtype
        self.parts: list[np.ndarray] = []
        self.held = 0
        self.rows = 0

    def add(self, ids: np.ndarray) -> None:
        self.parts.append(ids)
        self.held += len(ids)
        if self.held >= _FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        joined = np.concatenate(self.parts).astype(self.dtype, copy=False)
        whole = (len(joined) // self.width) * self.width
        self.fh.write(joined[:whole].tobytes())
        self.rows += whole // self.width
        rest = joined[whole:]
        self.parts, self.held = ([rest] if len(rest) else []), len(rest)

    def finish(self) -> int:
        """Write what makes whole rows, drop the remainder; returns the rows written."""
        self.flush()
        self.parts, self.held = [], 0
        return self.rows


def _with_eos(ids: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    if tokenizer.eos_id is None:
        return ids
    return np.concatenate([ids, np.asarray([tokenizer.eos_id], ids.dtype if len(ids) else np.int64)])


def build_rows(docs: Iterable[str], tokenizer: Tokenizer, length: int, splits: Mapping[str, Any], folder: Path,
               dtype: np.dtype, label: str = "the inputs") -> dict[str, int]:
    """Tokenize `docs` and write the packed rows of train, val and test to `folder/rows.bin`; returns row counts.

    The documents' tokens spill to `folder/docs.bin` (removed at the end), so memory holds per-document
    offsets only. Raises TextError when there is no text at all.
    """
    from array import array

    store = folder / "docs.bin"
    starts, sizes, chars = array("q"), array("q"), array("q")  # 8 bytes a document
    first: str | None = None  # kept while there is only one document (it is then cut by characters)
    total = 0
    with open(store, "wb") as fh:
        batch: list[str] = []
        held = 0

        def spill() -> None:
            nonlocal total
            for ids in tokenizer.encode_many(batch):
                ids = np.asarray(ids, dtype)
                fh.write(ids.tobytes())
                starts.append(total)
                sizes.append(len(ids))
                total += len(ids)
            batch.clear()

        for doc in docs:
            first = doc if not chars else None
            chars.append(len(doc))
            batch.append(doc)
            held += len(doc)
            if held >= _BATCH_CHARS:
                spill()
                held = 0
        spill()
    if not chars:
        raise TextError(f"{label}: no text")
    width = length + 1
    counts = {}
    with open(folder / "rows.bin", "wb") as out:
        if len(chars) == 1:
            for name, part in zip(("train", "val", "test"), split_single(first or "", splits["validation"],
                                                                       splits["test"]), strict=True):
                writer = _RowWriter(out, width, dtype)
                if part:
                    writer.add(_with_eos(np.asarray(tokenizer.encode(part), dtype), tokenizer))
                counts[name] = writer.finish()
        else:
            parts = split_by_share(np.frombuffer(chars, np.int64), splits["validation"], splits["test"], splits["seed"])
            size = dtype.itemsize
            with open(store, "rb") as tokens:  # read by offset, not mapped: mapped pages would count as memory
                for name, order in zip(("train", "val", "test"), parts, strict=True):
                    writer = _RowWriter(out, width, dtype)
                    for i in order.tolist():
                        raw = os.pread(tokens.fileno(), sizes[i] * size, starts[i] * size)
                        writer.add(_with_eos(np.frombuffer(raw, dtype), tokenizer))
                    counts[name] = writer.finish()
    store.unlink()
    counts["documents"] = len(chars)
    return counts


# --- the packed cache --------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where packed entries live: `<data cache>/text` (`$GITOPS_DATA_CACHE`, else ~/.cache/gitops/data)."""
    from gitops.learn import remote_data

    return remote_data.cache_dir() / "text"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id of a vocabulary (uint16 up to 65,536 tokens)."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _read_entry(folder: Path, key: str) -> dict | None:
    """The entry's meta when `folder` is a complete, intact entry for `key`; None otherwise."""
    from gitops import jsonio

    try:
        meta = jsonio.loads((folder / "meta.json").read_text(encoding="utf-8"))
        rows = folder / "rows.bin"
        width = int(meta["sequence_length"]) + 1
        expected = sum(int(meta["rows"][s]) for s in ("train", "val", "test")) * width * np.dtype(meta["dtype"]).itemsize
        if meta.get("key") != key or rows.stat().st_size != expected or sha256_file(rows) != meta["sha256"]:
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def packed(key_doc: Mapping[str, Any], docs: Callable[[], Iterable[str]], tokenizer: Tokenizer, length: int,
           splits: Mapping[str, Any], label: str = "the inputs") -> tuple[Path, dict]:
    """(the entry's folder, its meta) of the packed rows for `key_doc`, built when missing or damaged."""
    from gitops import jsonio, scratch
    from gitops.config import sha256_json

    key = sha256_json(dict(key_doc))
    root = cache_root()
    final = root / key
    meta = _read_entry(final, key)
    if meta is not None:
        return final, meta
    try:
        scratch.sweep(root, SCRATCH)  # builds killed before they finished
        work = scratch.make(root, SCRATCH)
    except OSError as exc:
        raise TrainingError(f"cannot write the packed text cache under {root} ({exc}); set $GITOPS_DATA_CACHE "
                            "to a writable folder") from None
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        counts = build_rows(docs(), tokenizer, length, splits, work, dtype, label)
        meta = {"key": key, "key_doc": dict(key_doc), "sequence_length": length, "dtype": dtype.name,
                "rows": {s: counts[s] for s in ("train", "val", "test")}, "documents": counts["documents"],
                "sha256": sha256_file(work / "rows.bin")}
        (work / "meta.json").write_text(jsonio.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        work.chmod(0o755)  # mkdtemp made it private; the entry is as readable as the rest of the data cache
        return final, _install(work, final, key, meta)
    except OSError as exc:
        raise TrainingError(f"cannot write the packed text cache under {root} ({exc}); set $GITOPS_DATA_CACHE "
                            "to a folder with room") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(work: Path, final: Path, key: str, meta: dict) -> dict:
    """Rename the finished build `work` to `final` (atomic); returns the meta of the entry now at `final`.

    A damaged entry there is moved aside first; an intact one another process finished meanwhile wins.
    """
    if final.exists():
        done = _read_entry(final, key)
        if done is not None:
            return done
        aside = work.with_name(work.name + "-damaged")  # a scratch name: swept if this process dies now
        try:
            os.rename(final, aside)
        except FileNotFoundError:  # another process moved it first
            pass
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(work, final)
    except OSError:  # another process renamed its (identical) entry first
        done = _read_entry(final, key)
        if done is None:
            raise
        return done
    return meta


class PackedSource:
    """Random access over packed rows (Grain's data-source protocol): `[i]` -> (inputs, labels).

    inputs: (sequence_length,) float32 token ids; labels: (sequence_length,) int32, the next token at
    each position. Rows are read by offset (`os.pread`) from a file opened on first use in each process
    (picklable for Grain workers); nothing is memory-mapped, so what a process holds does not grow with
    the file.
    """

    def __init__(self, path: Path, dtype: str, length: int, rows: int):
        self.path, self.dtype, self.length, self.rows = str(path), str(dtype), int(length), int(rows)
        self.row_bytes = (self.length + 1) * np.dtype(self.dtype).itemsize
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def __len__(self) -> int:
        return self.rows

    def _read(self, index: int) -> bytes:
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} of {self.rows}")
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        raw = os.pread(self._fd, self.row_bytes, index * self.row_bytes)
        if len(raw) != self.row_bytes:
            raise TextError(f"{self.path}: row {index} is cut short (the packed text cache changed while in use)")
        return raw

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        row = np.frombuffer(self._read(int(index)), self.dtype)
        return row[:-1].astype(np.float32), row[1:].astype(np.int32)

    def read_batch(self, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows `indexes` at once, as `[i]` gives them stacked: inputs (n, sequence_length) float32, labels
        (n, sequence_length) int32 (the streaming pipeline reads a batch through it,
        `gitops.learn.sources.read_batch`; a benchmark may hold a split in memory).
        """
        flat = np.asarray(indexes, np.int64).reshape(-1).tolist()
        rows = np.frombuffer(b"".join(self._read(i) for i in flat), self.dtype).reshape(len(flat), self.length + 1)
        return rows[:, :-1].astype(np.float32), rows[:, 1:].astype(np.int32)


# --- the entry point ----------------------------------------------------------------------------------------


def reader_settings(ds: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset keys that change which documents are read (part of the cache key)."""
    if ds["name"] == "text":
        return {"name": "text", "text_field": ds.get("text_field", "text"),
                "errors": ds.get("encoding_errors", "strict")}
    return {"name": ds["name"], "text": ds["text"], "errors": ds.get("encoding_errors", "strict")}


def load(doc: Mapping[str, Any], root: Path) -> Any:
    """Verify, tokenize once (cached) and index a language-modelling dataset (data.yaml as a dict).

    Returns a `gitops.learn.streaming.StreamingDataset` whose source is the packed rows: train rows,
    then validation, then test.

    Raises:
        TrainingError: a missing file, text that is not UTF-8, a missing text column, a training split
            shorter than one row.
        IntegrityError: a file or the tokenizer does not match its pin.
    """
    from gitops.learn import streaming
    from gitops.learn.preprocessing import Preprocessing

    ds, splits = doc["dataset"], doc["splits"]
    root = Path(root)
    tokenizer = from_config(ds.get("tokenizer") or {"name": "byte"}, root)
    length = int(ds["sequence_length"])
    pin, readers, label = _sources(ds, root)
    key_doc = {"v": PACK_VERSION, "data": pin, "reader": reader_settings(ds),
               "tokenizer": tokenizer.spec.get("sha256", "byte"), "sequence_length": length,
               "splits": {k: splits[k] for k in ("validation", "test", "seed")}}
    folder, meta = packed(key_doc, lambda: documents(readers), tokenizer, length, splits, label)
    rows = meta["rows"]
    if rows["train"] == 0:
        raise TrainingError(f"{label}: the training split holds fewer than sequence_length + 1 = {length + 1} tokens")
    n_train, n_val, n_test = rows["train"], rows["val"], rows["test"]
    source = PackedSource(folder / "rows.bin", meta["dtype"], length, n_train + n_val + n_test)
    prep = Preprocessing("none", None, None, [length], "language_modeling", None, tokenizer.vocab_size,
                         dict(tokenizer.spec))
    part = lambda a, b: streaming.StreamSplit(np.arange(a, b, dtype=np.int64))  # noqa: E731
    return streaming.StreamingDataset(source, part(0, n_train), part(n_train, n_train + n_val),
                                      part(n_train + n_val, n_train + n_val + n_test), prep, seed=int(splits["seed"]),
                                      workers=int(ds.get("workers", 0)), prefetch=int(ds.get("prefetch", 2)))
