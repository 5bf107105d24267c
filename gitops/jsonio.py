"""Strict JSON: everything gitops writes as JSON parses in every JSON parser.

JSON has no Infinity or NaN; Python's `json` writes them as bare `Infinity`/`NaN` unless told not to,
and strict parsers (JavaScript's `JSON.parse`, actions/github-script, `jq`) reject the whole document.
Metrics can be non-finite (a diverging validation loss, a split with no examples), so the rule, stated
once here (and in README.md, "Strict JSON"):

    A non-finite number is written as ``null``, and the mapping holding it gets a ``"non_finite"``
    key naming it and its value: ``{"val/loss": null, "non_finite": {"val/loss": "inf"}}``.
    Values are ``"inf"``, ``"-inf"`` or ``"nan"``. Inside a list, the item is ``null`` and the
    name is ``key[i]`` (``key[i][j]`` for nested lists) in the nearest mapping.

`loads` reads that back to Python floats (and still reads documents written before the rule, such as
release tag messages with a bare ``NaN``: Python's parser accepts those). `dumps` is the one writer;
every `json.dumps` of data that can hold a float goes through it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["NON_FINITE_KEY", "dumps", "encode", "loads", "restore"]

NON_FINITE_KEY = "non_finite"
_NAMES = {math.inf: "inf", -math.inf: "-inf"}
_VALUES = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_INDEXED = re.compile(r"(?P<key>.*?)(?P<index>(?:\[\d+\])+)")


def _name(x: float) -> str:
    return "nan" if math.isnan(x) else _NAMES[x]


def _non_finite(x: Any) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def encode(value: Any) -> Any:
    """A copy of `value` with every non-finite float replaced by null and named beside it.

    Mappings and lists are copied only when something in them changes. A non-finite float that is
    the document itself, or sits in a list with no enclosing mapping, becomes a bare null.
    """
    if _non_finite(value):
        return None
    if isinstance(value, dict):
        return _encode_dict(value)
    if isinstance(value, list | tuple):
        return [v for v, _ in (_encode_item(v, "") for v in value)]
    return value


def _encode_item(value: Any, name: str) -> tuple[Any, dict[str, str]]:
    """(encoded value, {name inside the enclosing mapping: "inf"|...}) for a value under `name`."""
    if _non_finite(value):
        return None, {name: _name(value)}
    if isinstance(value, dict):
        return _encode_dict(value), {}
    if isinstance(value, list | tuple):
        out, found = [], {}
        for i, item in enumerate(value):
            encoded, names = _encode_item(item, f"{name}[{i}]")
            out.append(encoded)
            found.update(names)
        return out, found
    return value, {}


def _encode_dict(value: dict) -> dict:
    out: dict[Any, Any] = {}
    found: dict[str, str] = {}
    for key, item in value.items():
        if key == NON_FINITE_KEY and isinstance(item, dict):  # already encoded (e.g. read back and written again)
            found.update(item)
            continue
        encoded, names = _encode_item(item, str(key))
        out[key] = encoded
        found.update(names)
    if found:
        out[NON_FINITE_KEY] = dict(sorted(found.items()))
    return out


def restore(value: Any) -> Any:
    """Undo `encode`: put the named non-finite floats back, drop the ``non_finite`` keys."""
    if isinstance(value, list):
        return [restore(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: restore(v) for k, v in value.items() if k != NON_FINITE_KEY}
    names = value.get(NON_FINITE_KEY)
    if not isinstance(names, dict):
        if NON_FINITE_KEY in value:
            out[NON_FINITE_KEY] = value[NON_FINITE_KEY]
        return out
    for name, text in names.items():
        number = _VALUES.get(text)
        if number is None:
            continue
        if name in out and out[name] is None:
            out[name] = number
            continue
        m = _INDEXED.fullmatch(name)
        if m and isinstance(out.get(m["key"]), list):
            _put(out[m["key"]], [int(i) for i in re.findall(r"\d+", m["index"])], number)
    return out


def _put(items: list, indices: list[int], number: float) -> None:
    for i in indices[:-1]:
        if not (isinstance(items, list) and i < len(items)):
            return
        items = items[i]
    if isinstance(items, list) and indices[-1] < len(items) and items[indices[-1]] is None:
        items[indices[-1]] = number


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that always writes strict JSON (see the module docstring); same keyword arguments."""
    kwargs.pop("allow_nan", None)
    try:  # the common document has nothing to encode: json's C encoder alone, no Python walk
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(encode(value), allow_nan=False, **kwargs)


def loads(text: str | bytes) -> Any:
    """`json.loads` followed by `restore`; also reads old documents with bare NaN/Infinity."""
    return restore(json.loads(text))
