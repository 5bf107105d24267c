"""The `schemas/` folder: every JSON Schema file editors load, rendered from the code that owns it.

The four model files' schemas come from `gitops.config.schema`, sweep.yaml's from `gitops.config.sweep`, gitops.yaml's
from `gitops.config.settings`; this module only gathers and writes them (`gitops schemas`, `gitops init`), so
none of those owners imports another.
"""

from __future__ import annotations

import json
from pathlib import Path

from gitops.config import schema
from gitops.config.settings import schema_text
from gitops.config.sweep import SWEEP_SCHEMA


def rendered_files() -> dict[str, str]:
    """{file name: text} of every schema in `schemas/`: the four model files, sweep.yaml, gitops.yaml."""
    rendered = {f"{kind}.schema.json": schema.render(kind) for kind in schema.KINDS}
    rendered["sweep.schema.json"] = json.dumps(SWEEP_SCHEMA, indent=2, allow_nan=False) + "\n"
    rendered["settings.schema.json"] = schema_text()
    return rendered


def write_schemas(directory: Path) -> list[Path]:
    """Write `schemas/<kind>.schema.json` (what editors load through the yaml-language-server header)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_files().items():
        path = directory / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
