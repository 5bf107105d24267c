"""Build models/stdlib-lm's corpus: source files of the Python standard library, as JSON Lines, gzipped.

Real text that ships with every Python install and that no one on this project wrote. The file list is
fixed below and read from CPython 3.11's standard library (the version this corpus was made with), in
this order; the output is deterministic (gzip mtime 0, sorted JSON keys), so running this script again
on Python 3.11 writes the same bytes. The PSF licence of these files is copied beside the corpus.

    python scripts/make_stdlib_corpus.py [--out data/stdlib-lm]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import sysconfig
from pathlib import Path

PYTHON = (3, 11)
FILES = [
    "abc.py", "argparse.py", "base64.py", "bisect.py", "calendar.py", "cmd.py", "code.py", "codeop.py",
    "colorsys.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
    "filecmp.py", "fileinput.py", "fnmatch.py", "fractions.py", "functools.py", "getopt.py", "gettext.py",
    "glob.py", "graphlib.py", "gzip.py", "hashlib.py", "heapq.py", "hmac.py", "imghdr.py", "ipaddress.py",
    "keyword.py", "linecache.py", "locale.py", "mimetypes.py", "netrc.py", "numbers.py", "operator.py",
    "optparse.py", "pprint.py", "queue.py", "quopri.py", "random.py", "reprlib.py", "sched.py", "secrets.py",
    "selectors.py", "shlex.py", "shutil.py", "signal.py", "statistics.py", "string.py", "stringprep.py",
    "textwrap.py", "this.py", "timeit.py", "token.py", "tokenize.py", "trace.py", "traceback.py",
    "tracemalloc.py", "types.py", "uuid.py", "warnings.py", "weakref.py", "zipapp.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/stdlib-lm", help="Output folder (corpus.jsonl.gz, LICENSE, SHA256SUMS).")
    args = parser.parse_args()
    if sys.version_info[:2] != PYTHON:
        print(f"warning: this corpus was made with Python {PYTHON[0]}.{PYTHON[1]}; Python "
              f"{sys.version_info[0]}.{sys.version_info[1]} gives other bytes", file=sys.stderr)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for name in FILES:
        text = (stdlib / name).read_text(encoding="utf-8")
        lines.append(json.dumps({"path": f"Lib/{name}", "text": text}, sort_keys=True, ensure_ascii=False))
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl.gz").write_bytes(buffer.getvalue())
    (out / "LICENSE").write_text(
        f"The text in corpus.jsonl.gz is source code of the Python {PYTHON[0]}.{PYTHON[1]} standard library,\n"
        "Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved,\n"
        "distributed under the PSF License Agreement reproduced below.\n\n"
        + (stdlib / "LICENSE.txt").read_text(encoding="utf-8"), encoding="utf-8")
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    (out / "SHA256SUMS").write_text(f"{digest}  corpus.jsonl.gz\n", encoding="utf-8")
    print(f"{out / 'corpus.jsonl.gz'}: {len(FILES)} files, {len(raw):,} bytes of text, "
          f"{len(buffer.getvalue()):,} compressed, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
