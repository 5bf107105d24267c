"""`gitops data ...`: commands that prepare data (thin adapters over the data modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitops.cli_app import app, command, out

data_app = typer.Typer(help="Data commands: checksum lists of streaming datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@command("tokenizer", group=data_app)
def tokenizer_cmd(
    corpus: Annotated[Path, typer.Argument(help="A .txt or .jsonl file (optionally .gz) of UTF-8 text.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the tokenizer JSON.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=260, max=1_000_000, help="Tokens in the vocabulary.")] = 4096,
    text_field: Annotated[str, typer.Option("--text-field", help="The string field of each .jsonl line.")] = "text",
) -> None:
    """Train a byte-level BPE tokenizer on a corpus, offline; print the lines that pin it in data.yaml.

    Examples:
      gitops data tokenizer data/stdlib-lm/corpus.jsonl.gz --out data/stdlib-lm/tokenizer.json --vocab-size 2048
    """
    from gitops import text_data, tokenize
    from gitops.errors import UsageError

    if not corpus.is_file():
        raise UsageError(f"{corpus}: no such file")
    digest = tokenize.train_bpe(list(text_data.iter_corpus_texts(corpus, text_field)), vocab_size, out_file)
    typer.echo(f"wrote {out_file} ({vocab_size} tokens); pin it in data.yaml:", err=True)
    out(f"tokenizer: {{name: file, path: {out_file.as_posix()}, sha256: {digest}}}")
