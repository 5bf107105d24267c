"""Tokenizers of language models: bytes, or a Hugging Face `tokenizers` JSON file pinned by SHA-256.

A tokenizer travels with the model: its spec (and, for a file, the file's JSON text) is saved in the
run folder's `preprocessing.json`, which every release archive carries, so `load`, `predict` and
`serve` decode exactly what training encoded.

- `byte`: UTF-8 bytes are tokens 0-255; token 256 ends a document (EOS). Vocabulary 257.
- `file`: a `tokenizer.json` of the `tokenizers` library (BPE, WordPiece, Unigram, ...); documents
  end with its `eos_token` when it has one (`</s>`, `<|endoftext|>`, `[SEP]`), else nothing is added.
  `gitops data tokenizer` trains a byte-level BPE one on a corpus, offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops.errors import IntegrityError, TrainingError
from gitops.repo.tree import inside_repository

BYTE_VOCAB = 257
BYTE_EOS = 256
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]")


@dataclass(frozen=True)
class Tokenizer:
    """Encode text to token ids and back; `spec` is what preprocessing.json stores."""

    spec: Mapping[str, Any]
    vocab_size: int
    eos_id: int | None
    _hf: Any = None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: UTF-8 bytes (0..255) for the byte tokenizer, else the saved tokenizer's ids
        (no special tokens added).
        """
        if self._hf is None:
            return list(text.encode("utf-8"))
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_many(self, texts: list[str]) -> list[Any]:
        """Token ids of each text, as `encode` gives them (numpy uint8 arrays for the byte tokenizer; the
        saved tokenizer encodes the batch in its own threads, in order).
        """
        if self._hf is None:
            import numpy as np

            return [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts]
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, EOS dropped: UTF-8 with invalid bytes as U+FFFD (the byte tokenizer), else the
        saved tokenizer's decoding with special tokens skipped.
        """
        ids = [int(i) for i in ids if self.eos_id is None or int(i) != self.eos_id]
        if self._hf is None:
            return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        return self._hf.decode(ids, skip_special_tokens=True)

    def token_bytes(self) -> list[int]:
        """UTF-8 length of each token id's text (0 for EOS and special tokens): for bits per byte."""
        if self._hf is None:
            return [1] * 256 + [0]
        out = []
        for i in range(self.vocab_size):
            piece = self._hf.id_to_token(i)
            text = self._hf.decode([i], skip_special_tokens=True) if piece is not None else ""
            out.append(len(text.encode("utf-8")))
        return out


def _from_json(text: str, spec: Mapping[str, Any]) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:  # pragma: no cover - tokenizers is a dependency
        raise TrainingError("the `tokenizers` package is needed for tokenizer files: pip install tokenizers") from None
    try:
        hf = HFTokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
        raise TrainingError(f"tokenizer file is not a `tokenizers` JSON file: {str(exc)[:200]}") from None
    eos = next((hf.token_to_id(t) for t in EOS_CANDIDATES if hf.token_to_id(t) is not None), None)
    return Tokenizer(spec, hf.get_vocab_size(with_added_tokens=True), eos, hf)


def from_config(spec: Mapping[str, Any], root: Path) -> Tokenizer:
    """The tokenizer a data.yaml `tokenizer:` names, verified against its pin.

    Raises:
        TrainingError: the file is missing or not a tokenizer.
        IntegrityError: the file's SHA-256 differs from `sha256` (exit 1).
    """
    if spec.get("name", "byte") == "byte":
        return Tokenizer({"name": "byte"}, BYTE_VOCAB, BYTE_EOS)
    path = inside_repository(root, spec["path"], "tokenizer file")
    if not path.is_file():
        raise TrainingError(f"tokenizer file {spec['path']} not found under {root}")
    raw = path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != spec["sha256"]:
        raise IntegrityError(f"tokenizer file {spec['path']}: SHA-256 mismatch (expected {spec['sha256']}, got "
                             f"{actual}); update data.dataset.tokenizer.sha256 if the change is intended")
    text = raw.decode("utf-8")
    return _from_json(text, {"name": "file", "sha256": actual, "json": text})


def from_saved(spec: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer stored in a run folder's preprocessing.json (see the module docstring)."""
    if spec.get("name", "byte") == "byte":
        return Tokenizer({"name": "byte"}, BYTE_VOCAB, BYTE_EOS)
    text = spec["json"]
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != spec.get("sha256"):
        raise IntegrityError("the tokenizer saved with this model does not match its recorded SHA-256")
    return _from_json(text, spec)


def train_bpe(texts: list[str], vocab_size: int, out: Path, *, min_frequency: int = 2) -> str:
    """Train a byte-level BPE tokenizer on documents and write its JSON; returns the file's SHA-256.

    Deterministic for the same files and settings (the `tokenizers` trainer is single-pass and ordered).
    `<|endoftext|>` is the EOS token that ends each document.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    text = tok.to_str()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
