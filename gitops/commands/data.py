"""`gitops data ...`: commands that prepare data (thin adapters over the data modules): `checksums` writes the
list that pins a streaming dataset (gitops.learn.checksum_list), `tokenizer` trains a tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gitops.cli_app import app, command, out
from gitops.helptext import GitopsGroup

data_app = typer.Typer(help="Data commands: checksum lists of streaming datasets.", no_args_is_help=True,
                       cls=GitopsGroup, rich_markup_mode=None)
app.add_typer(data_app, name="data")


@command("tokenizer", group=data_app)
def tokenizer_cmd(
    corpus: Annotated[Path, typer.Argument(help="A .txt or .jsonl file (optionally .gz) of UTF-8 text, or a folder of "
                                                "them (read in sorted order).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the tokenizer JSON.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=260, max=1_000_000, help="Tokens in the vocabulary.")] = 4096,
    text_field: Annotated[str, typer.Option("--text-field", help="The string field of each .jsonl line.")] = "text",
) -> None:
    """Train a byte-level BPE tokenizer on a corpus, offline; print the lines that pin it in data.yaml.

    Examples:
      gitops data tokenizer data/stdlib-lm/corpus.jsonl.gz --out data/stdlib-lm/tokenizer.json --vocab-size 2048
      gitops data tokenizer data/corpus/ --out data/tokenizer.json
    """
    from gitops.errors import UsageError
    from gitops.learn import text_data, tokenize

    if not corpus.exists():
        raise UsageError(f"{corpus}: no such file or folder")
    digest = tokenize.train_bpe(list(text_data.iter_corpus_texts(corpus, text_field)), vocab_size, out_file)
    typer.echo(f"wrote {out_file} ({vocab_size} tokens); pin it in data.yaml:", err=True)
    out(f"tokenizer: {{name: file, path: {out_file.as_posix()}, sha256: {digest}}}")


@command("checksums", group=data_app)
def checksums_cmd(
    path: Annotated[Path, typer.Argument(help="The dataset folder (an image folder, Parquet or ArrayRecord files), "
                                             "or a dataset's one file.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the list here (else to stdout); prints the pin for data.yaml.")
    ] = None,
) -> None:
    """Hash every file under PATH (streamed, in parallel) into a sha256sum-format list, paths relative to PATH
    (PATH a file: the list names that file alone).

    Put the list in the repository, point `data.dataset.checksums` at it and set `checksums_sha256` to the
    pin printed here: then `ci plan` and the fingerprints notice any data change without reading the data.
    """
    from gitops.learn import checksum_list

    progress = _progress() if out_file is not None and sys.stderr.isatty() else None
    try:
        text, total = checksum_list.write(path, out_file, progress=progress.update if progress else None)
    finally:
        if progress:
            progress.stop()
    import hashlib  # not at start-up (tests/test_startup.py)

    pin = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if out_file is None:
        out(text)
        return
    files = text.count("\n")
    out(f"wrote {out_file}: {files} file{'s' if files != 1 else ''}, {total / 1024**2:.1f} MiB")
    out(f"checksums_sha256: {pin}")


class _progress:
    """A rich progress bar over bytes hashed (on a terminal only)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.bar = Progress(TextColumn("hashing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("hash", total=None)

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def stop(self) -> None:
        self.bar.stop()
