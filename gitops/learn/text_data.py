"""The `text` dataset: UTF-8 documents from a pinned file, tokenized and packed for language modelling.

The file is `.txt` (one document), `.jsonl` (one document per line, in `text_field`), either of them
gzip-compressed (`.gz`). Documents are split by `data.splits` into test, validation and train (whole
documents, shuffled by the split seed, by their share of bytes; a single document is cut into
contiguous byte ranges instead, train first), so no text is in two splits. Each split's documents are
tokenized, joined with the tokenizer's end-of-document token and cut into rows of
`sequence_length + 1` tokens (the remainder dropped): inputs are a row's first `sequence_length`
tokens, labels the next token at every position.

Tokenized splits are cached under the data cache, keyed by the file's and the tokenizer's SHA-256 and
the packing settings, so a second run skips tokenization.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gitops.checksums import sha256_file
from gitops.errors import IntegrityError, TrainingError
from gitops.learn.tokenize import Tokenizer, from_config
from gitops.repo.tree import inside_repository

PACK_VERSION = 1  # bump when the packing rule changes (it is part of the cache key)


def read_documents(path: Path, *, text_field: str = "text", errors: str = "strict", label: str = "") -> list[str]:
    """The documents of a .txt/.jsonl file (optionally .gz), decoded as UTF-8.

    Raises:
        TrainingError: bytes that are not UTF-8 (naming the file, line and byte offset; set
            `encoding_errors: replace` to substitute U+FFFD), a JSON line that is not an object with
            a string `text_field`, or no documents at all.
    """
    label = label or str(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise TrainingError(f"{label}: not a gzip file ({exc})") from None
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        docs = []
        offset = 0
        for number, line in enumerate(io.BytesIO(raw), start=1):
            start = offset
            offset += len(line)
            if not line.strip():
                continue
            text = _decode(line, errors, f"{label}: line {number}", start)
            try:
                item = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{label}: line {number}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get(text_field), str):
                raise TrainingError(f"{label}: line {number}: expected an object with a string {text_field!r}")
            docs.append(item[text_field])
    else:
        docs = [_decode(raw, errors, label, 0)]
    docs = [d for d in docs if d]
    if not docs:
        raise TrainingError(f"{label}: no text")
    return docs


def _decode(raw: bytes, errors: str, where: str, base: int) -> str:
    try:
        return raw.decode("utf-8", errors="strict" if errors == "strict" else "replace")
    except UnicodeDecodeError as exc:
        raise TrainingError(f"{where}: not UTF-8 at byte offset {base + exc.start} ({exc.reason}); fix the file "
                            "or set data.dataset.encoding_errors: replace") from None


def split_documents(docs: list[str], validation: float, test: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) documents: whole documents by share of bytes, or byte ranges of a single one.

    Several documents are shuffled with `seed`; test takes documents until it holds its share of the
    bytes, then validation likewise, and train keeps the rest.
    """
    if len(docs) == 1:
        data = docs[0]
        n = len(data)
        n_test, n_val = math.ceil(n * test), math.ceil(n * validation)
        a, b = n - n_test - n_val, n - n_test
        return [data[:a]], [data[a:b]] if n_val else [], [data[b:]] if n_test else []
    order = np.random.default_rng(seed).permutation(len(docs))
    total = float(sum(len(d) for d in docs))
    train, val, held = [], [], []
    taken = 0.0
    for i in order:
        doc = docs[int(i)]
        if test and taken < test * total:
            held.append(doc)
        elif validation and taken < (test + validation) * total:
            val.append(doc)
        else:
            train.append(doc)
        taken += len(doc)
    return train, val, held


def pack(docs: list[str], tokenizer: Tokenizer, length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs (rows, length) float32, labels (rows, length) int32, bytes of text) of a split."""
    ids: list[int] = []
    n_bytes = 0
    for doc in docs:
        ids.extend(tokenizer.encode(doc))
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        n_bytes += len(doc.encode("utf-8"))
    rows = len(ids) // (length + 1)
    table = np.asarray(ids[: rows * (length + 1)], dtype=np.int32).reshape(rows, length + 1)
    return table[:, :-1].astype(np.float32), table[:, 1:].copy(), n_bytes


def _cache_dir() -> Path:
    from gitops.learn import remote_data

    return remote_data.cache_dir() / "text"


def load_text(params: Mapping[str, Any], root: Path, splits: Mapping[str, Any]) -> dict[str, Any]:
    """Tokenized, packed splits of a `text` dataset: {"train"/"val"/"test": (x, y), "tokenizer", "bytes"}.

    Raises:
        TrainingError: a missing or unreadable file, non-UTF-8 text, a split too small for one row.
        IntegrityError: the file's or the tokenizer's SHA-256 differs from its pin.
    """
    rel = params["path"]
    path = inside_repository(root, rel, "text file")
    if not path.is_file():
        raise TrainingError(f"text file {rel} not found under {root}")
    actual = sha256_file(path)
    if actual != params["sha256"]:
        raise IntegrityError(f"text file {rel}: SHA-256 mismatch (expected {params['sha256']}, got {actual}); "
                             "nothing was trained. Update data.dataset.sha256 if the change is intended")
    tokenizer = from_config(params.get("tokenizer") or {"name": "byte"}, Path(root))
    length = int(params["sequence_length"])
    key_doc = {"v": PACK_VERSION, "file": actual, "tokenizer": tokenizer.spec.get("sha256", "byte"),
               "length": length, "splits": dict(splits), "field": params.get("text_field", "text"),
               "errors": params.get("encoding_errors", "strict")}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, allow_nan=False).encode()).hexdigest()
    cached = _cache_dir() / f"{key}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                out = {s: (npz[f"{s}_x"], npz[f"{s}_y"]) for s in ("train", "val", "test")}
                out["bytes"] = {s: int(npz[f"{s}_bytes"]) for s in ("train", "val", "test")}
            out["tokenizer"] = tokenizer
            return out
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    docs = read_documents(path, text_field=params.get("text_field", "text"),
                          errors=params.get("encoding_errors", "strict"), label=f"text file {rel}")
    parts = split_documents(docs, splits["validation"], splits["test"], splits["seed"])
    out: dict[str, Any] = {"tokenizer": tokenizer, "bytes": {}}
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        x, y, n_bytes = pack(part, tokenizer, length)
        out[name] = (x, y)
        out["bytes"][name] = n_bytes
    if len(out["train"][0]) == 0:
        raise TrainingError(f"text file {rel}: the training split holds fewer than sequence_length + 1 = "
                            f"{length + 1} tokens")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp.npz")
        np.savez(tmp, **{f"{s}_x": out[s][0] for s in ("train", "val", "test")},
                 **{f"{s}_y": out[s][1] for s in ("train", "val", "test")},
                 **{f"{s}_bytes": np.int64(out["bytes"][s]) for s in ("train", "val", "test")})
        tmp.replace(cached)
    except OSError:
        pass  # an unwritable cache only costs the time
    return out


def iter_corpus_texts(path: Path, text_field: str = "text") -> Iterator[str]:
    """Every document of a corpus file, for training a tokenizer on it."""
    yield from read_documents(path, text_field=text_field, label=str(path))
