"""SHA-256 of files, streamed: pins of data files, release archives and their parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHUNK = 1 << 20
_SHA256: list[Any] = []  # the SHA-256 constructor `sha256_new` uses, found on first use


def sha256_file(path: Path) -> str:
    """Hex SHA-256 (64 lowercase characters) of the file at `path`, read in 1 MiB chunks so memory stays flat for
    large archives. Raises OSError (e.g. FileNotFoundError) if the file cannot be read.
    """
    import hashlib  # OpenSSL's SHA-256: the fastest for large files

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_new(data: bytes = b"") -> Any:
    """A SHA-256 hasher for small inputs (fingerprints, cache keys).

    Python's built-in `_sha2` (`_sha256` before 3.12) gives the same digests without importing
    hashlib, which loads OpenSSL: a few milliseconds of every `gitops validate`. Falls back to
    hashlib where the built-in module is missing.
    """
    if not _SHA256:  # looked up once: a failed import is tried again on every call (tens of us each)
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # Python >= 3.12
        except ImportError:
            try:
                from _sha256 import sha256  # type: ignore[import-not-found,no-redef]  # Python 3.11
            except ImportError:
                from hashlib import sha256  # type: ignore[no-redef]
        _SHA256.append(sha256)
    return _SHA256[0](data)
