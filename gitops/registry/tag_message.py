"""The release tag's message: written and read back here, and nowhere else.

An annotated release tag carries a summary line, `key: value` lines for people, the objects of an
artifact store, and the release metadata as a fenced JSON block. This module is a leaf (it imports
no other gitops module but `jsonio`), so config-time code such as `parent_ref` can read a parent's
tag without importing the registry.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gitops import jsonio

RELEASE_JSON_RE = re.compile(r"```json\n(?P<body>.*?)\n```", re.S)


# --- release tag messages ----------------------------------------------------------------------


def tag_message(cfg: Any, version: str, bump: str, reason: str, meta: dict) -> str:
    """The annotated release tag's message: a summary line, `key: value` lines for people, the objects
    of an artifact store, and `meta` as a fenced JSON block (what `release_metadata` reads back).

    `cfg` is the released `gitops.config.ResolvedConfig` (not imported: this module stays a leaf)."""
    head_name = cfg.headline_metric()
    metrics = meta.get("metrics", {})
    headline_text = headline(metrics, head_name) or "no metrics"
    summary = f"{cfg.name} {version}: {headline_text} ({bump}: {reason})"
    body = [
        summary if len(summary) <= 200 else summary[:197] + "...",
        "",
        f"bump: {bump}",
        f"reason: {reason}",
        f"training_fingerprint: {cfg.training_fingerprint}",
        f"release_fingerprint: {cfg.release_fingerprint}",
        f"data_fingerprint: {cfg.data_fingerprint}",
        f"headline: {head_name}={metrics.get(head_name, 'n/a')}",
        "",
        *[f"object: {o.get('url')} ({o.get('size')} bytes, sha256 {o.get('sha256')})" for o in meta.get("objects") or []],
        "",
        "```json",
        jsonio.dumps(meta, sort_keys=True, indent=1),
        "```",
        "",
    ]
    return "\n".join(body)


def release_metadata(message: str) -> dict:
    """The JSON block of a release tag's message ({} for tags made by other tools)."""
    m = RELEASE_JSON_RE.search(message or "")
    if not m:
        return {}
    try:
        data = jsonio.loads(m.group("body"))  # bare NaN of old tags still reads
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def headline(metrics: dict, name: str | None) -> str:
    """`name value` of the headline metric, else the first two metrics by name ("" when none)."""
    if name and name in metrics:
        return f"{name} {format_number(metrics[name])}"
    return ", ".join(f"{k} {format_number(v)}" for k, v in sorted(metrics.items())[:2])


def format_number(value: Any) -> str:
    """A metric value for people: ints as they are, floats to 4 significant digits (tiny ones in e-notation)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


# --- refs ---------------------------------------------------------------------------------------
