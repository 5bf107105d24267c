"""JSON Schema tools with no knowledge of gitops' files: fragment builders, the strict validator,
error sentences, "did you mean", and fastjsonschema validators cached on disk.

`gitops.config.schema` (the model files), `gitops.config.settings` (gitops.yaml) and `gitops.config.sweep` (sweep.yaml)
all build and check their schemas with these, so none of them imports another for its tools.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# --- fragment builders (keep the declarations in gitops.config.catalog and gitops.config.settings readable) -------


def integer(description: str, default: Any = None, minimum: int | None = None, maximum: int | None = None) -> dict:
    """A JSON Schema fragment for an integer field: {type, description} plus minimum, maximum and default where given
    (None leaves a key out).
    """
    s: dict[str, Any] = {"type": "integer", "description": description}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if default is not None:
        s["default"] = default
    return s


def number(
    description: str,
    default: Any = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    exclusive_maximum: float | None = None,
) -> dict:
    """A JSON Schema fragment for a number field, with inclusive (`minimum`/`maximum`) and exclusive
    (`exclusiveMinimum`/`exclusiveMaximum`) bounds and a default where given (None leaves a key out).
    """
    s: dict[str, Any] = {"type": "number", "description": description}
    for key, val in (
        ("minimum", minimum),
        ("maximum", maximum),
        ("exclusiveMinimum", exclusive_minimum),
        ("exclusiveMaximum", exclusive_maximum),
    ):
        if val is not None:
            s[key] = val
    if default is not None:
        s["default"] = default
    return s


def boolean(description: str, default: bool) -> dict:
    """A JSON Schema fragment for a boolean field with its description and default."""
    return {"type": "boolean", "description": description, "default": default}


def enum(description: str, values: list[str], default: str | None = None) -> dict:
    """A JSON Schema fragment for a string that must be one of `values`, with a default where given."""
    s: dict[str, Any] = {"type": "string", "enum": values, "description": description}
    if default is not None:
        s["default"] = default
    return s


def int_list(description: str, default: list[int], minimum: int = 1, min_items: int = 0) -> dict:
    """A JSON Schema fragment for a list of integers >= `minimum`, `min_items` to 64 long, with its default (e.g. layer
    widths).
    """
    return {
        "type": "array",
        "items": {"type": "integer", "minimum": minimum},
        "minItems": min_items,
        "maxItems": 64,
        "description": description,
        "default": default,
    }


# --- validation ------------------------------------------------------------------------------------

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def whole_string_pattern(pattern: str) -> str:
    """A JSON Schema `pattern` for Python's `re`, with `$` meaning the end of the string.

    JSON Schema patterns are ECMA-262 regexes, where `$` matches only at the end of the input; in
    Python's `re`, `$` also matches before a final newline, so `"val/acc\\n"` would pass
    `^val/[a-z_]+$`. fastjsonschema makes the same substitution, so both validators agree.
    """
    return _UNESCAPED_DOLLAR.sub(r"\\Z", pattern)


def strict_validator_class():
    """jsonschema's Draft 2020-12 validator with ECMA-262 `$` in `pattern` (see whole_string_pattern)."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not re.search(whole_string_pattern(patrn), instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    return validators.extend(Draft202012Validator, {"pattern": pattern})


def format_path(path: tuple) -> str:
    """A JSON Schema error path as a config key path: `("train", "optimizer", "learning_rate")` ->
    `train.optimizer.learning_rate`, list indexes as `[i]` (`train.schedule.boundaries[0]`).
    """
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def suggest(word: Any, options: list[Any]) -> str | None:
    """The option `word` most likely meant: a case-insensitive match first, then a close spelling."""
    text = str(word)
    names = [str(o) for o in options]
    folded = [n for n in names if n.lower() == text.lower() or n.replace("_", "-").lower() == text.replace("_", "-").lower()]
    if folded:
        return folded[0]
    prefixed = [n for n in names if len(text) >= 3 and n.lower().startswith(text.lower())]
    if len(prefixed) == 1:  # `acc` -> accuracy
        return prefixed[0]
    close = difflib.get_close_matches(text.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    return next((n for n in names if n.lower() == close[0]), None) if close else None


def _suggest(word: str, options: list[str]) -> str:
    found = suggest(word, options)
    return f" (did you mean '{found}'?)" if found is not None else ""


_TYPE_NAMES = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}
_SCHEMA_TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
                      "number": "a number", "boolean": "true or false", "null": "null"}


def _type_name(value: Any) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    """A value as YAML would write it (true, null, 0.001), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}" if value == value and abs(value) != float("inf") else str(value)
    return str(value)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# What the schemas' patterns mean, for messages (the pattern itself helps nobody).
_PATTERN_FORMS = (
    ("^(train|val|test)/", "a metric name as <split>/<metric> with split train, val or test (e.g. test/accuracy)"),
    ("^val/", "a validation metric as val/<metric> (e.g. val/accuracy)"),
    (r"^\.\./", "'../<model-name>' (a sibling model folder)"),
    ("^[0-9a-f]{64}$", "a SHA-256 as 64 lower-case hex digits"),
    ("^(https?|s3|gs|file)://", "a URL starting with http://, https://, s3://, gs:// or file://"),
)


def describe_error(error) -> list[tuple[tuple, str, bool]]:
    """(relative path, message, point-at-key) triples for one jsonschema error.

    Every validator the schemas use gets a sentence that says what is expected ("must be at most
    1", "expected an integer, got string 'lots'"), never jsonschema's own phrasing.
    """
    path = tuple(error.absolute_path)
    validator, limit, value = error.validator, error.validator_value, error.instance
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        return [
            (path + (k,), f"unknown key '{k}'{_suggest(k, allowed)}; allowed here: {', '.join(allowed)}", True)
            for k in extras
        ]
    if validator == "required":
        missing = [k for k in limit if k not in error.instance]
        return [(path, f"missing required key '{k}'", False) for k in missing]
    if validator in ("enum", "const"):
        options = limit if validator == "enum" else [limit]
        shown = ", ".join(_shown(o) if not isinstance(o, str) else o for o in options)
        hint = _suggest(value, [o for o in options if isinstance(o, str)]) if isinstance(value, str) else ""
        if validator == "const":
            return [(path, f"must be {_shown(limit)}, got {_shown(value)}", False)]
        return [(path, f"{_shown(value)} is not one of: {shown}{hint}", False)]
    if validator == "type":
        expected = limit if isinstance(limit, list) else [limit]
        wanted = " or ".join(_SCHEMA_TYPE_NAMES.get(t, t) for t in expected)
        return [(path, f"expected {wanted}, got {_type_name(value)} {_shown(value)}", False)]
    bounds = {
        "minimum": "must be at least {limit}",
        "maximum": "must be at most {limit}",
        "exclusiveMinimum": "must be greater than {limit}",
        "exclusiveMaximum": "must be less than {limit}",
        "multipleOf": "must be a multiple of {limit}",
    }
    if validator in bounds:
        return [(path, bounds[validator].format(limit=_number(limit)) + f", got {_shown(value)}", False)]
    if validator in ("minItems", "maxItems"):
        word = "at least" if validator == "minItems" else "at most"
        return [(path, f"must have {word} {limit} item{'s' if limit != 1 else ''}, got {len(value)}", False)]
    if validator in ("minLength", "maxLength"):
        word = "at least" if validator == "minLength" else "at most"
        return [(path, f"must be {word} {limit} character{'s' if limit != 1 else ''} long, got {len(value)}", False)]
    if validator in ("minProperties", "maxProperties"):
        word = "at least" if validator == "minProperties" else "at most"
        return [(path, f"must have {word} {limit} key{'s' if limit != 1 else ''}, got {len(value)}", False)]
    if validator == "uniqueItems":
        seen, repeated = [], []
        for item in value:
            (repeated if item in seen else seen).append(item)
        return [(path, f"must not repeat items ({', '.join(_shown(r) for r in repeated[:3])} repeated)", False)]
    if validator == "anyOf" and isinstance(error.instance, dict) and path and "gates" in path:
        return [(path, "a gate needs at least one of min, max, max_regression", False)]
    if validator == "pattern":
        form = next((text for prefix, text in _PATTERN_FORMS if str(limit).startswith(prefix)), None)
        return [(path, f"expected {form}, got {_shown(value)}" if form else
                 f"{_shown(value)} does not have the expected form (pattern {limit})", False)]
    if validator in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match

        best = best_match(error.context)
        return describe_error(best) if best is not None else [(path, "matches none of the allowed forms", False)]
    if validator == "not":
        return [(path, f"{_shown(value)} is not allowed here", False)]
    return [(path, error.message, False)]


def _validator_cache_dir() -> Path:
    import os

    base = os.environ.get("GITOPS_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / ("gitops" if not os.environ.get("GITOPS_CACHE") else "") / "validators"


def compiled_validator(document: dict) -> Callable[[Any], Any]:
    """fastjsonschema's validator for `document`, its bytecode cached on disk.

    Generating and compiling the validator costs ~25 ms a schema on every CLI start; loading the
    marshalled code object costs ~0.1 ms. The key covers the schema, fastjsonschema and Python, so a
    stale entry is never used; an unwritable cache only costs the time.
    """
    import marshal
    import sys

    import fastjsonschema

    version = getattr(fastjsonschema, "VERSION", "")
    from gitops.checksums import sha256_new

    key = sha256_new(
        (json.dumps(document, sort_keys=True, allow_nan=False) + version + sys.version).encode("utf-8")
    ).hexdigest()[:32]
    path = _validator_cache_dir() / f"{key}.marshal"
    code = None
    try:
        code = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        pass
    if not isinstance(code, type(compile("", "", "exec"))):
        source = fastjsonschema.compile_to_code(document, use_default=False)
        code = compile(source, f"<schema {document.get('$id', '')}>", "exec")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(marshal.dumps(code))
            tmp.replace(path)
        except OSError:
            pass
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # our own generated validator code, from our own schema
    names = [n for n in namespace if n.startswith("validate_")]
    main = min(names, key=len)  # the document's validator; longer names are its $ref scopes
    return namespace[main]


# --- defaults ---------------------------------------------------------------------------------------


def branch_applies(condition: dict, value: dict) -> bool:
    """Whether an `if:` condition of an `allOf` branch holds for `value`: every `const` property matches and every
    `required` key is present (the subset of JSON Schema `if` the schemas here use).
    """
    for key, sub in condition.get("properties", {}).items():
        if "const" in sub and value.get(key) != sub["const"]:
            return False
    return all(k in value for k in condition.get("required", []))


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars); anything else goes to copy.deepcopy."""
    cls = value.__class__
    if cls is str or cls is int or cls is float or cls is bool or value is None:
        return value
    if cls is dict:
        return {k: copy_json(v) for k, v in value.items()}
    if cls is list:
        return [copy_json(v) for v in value]
    import copy

    return copy.deepcopy(value)


def fill_defaults(schema: dict, value: Any) -> Any:
    """A copy of `value` with every schema default filled and numbers cast to the schema's type.

    Defaults are what make two spellings of the same config hash the same: `{name: adamw}` and
    `{name: adamw, weight_decay: 1e-4}` are one config.
    """
    if isinstance(value, str) or isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        if "integer" in types and float(value).is_integer():
            return int(value)
        if "number" in types:
            return float(value)
        return value
    if isinstance(value, list):
        items = schema.get("items", {})
        return [fill_defaults(items, v) for v in value]
    if not isinstance(value, dict):
        return value
    result = dict(value)
    schemas = [schema]
    for b in schema.get("allOf", ()):
        if "if" in b and branch_applies(b["if"], value):
            schemas.append(b["then"])
    if len(schemas) == 1:  # the common case, without the per-key search through branches
        props = schema.get("properties")
        if props:
            for key, prop in props.items():
                if key not in result and "default" in prop:
                    result[key] = copy_json(prop["default"])
            for key in list(result):
                prop = props.get(key)
                if prop is not None:
                    result[key] = fill_defaults(prop, result[key])
        return result
    for sub_schema in schemas:
        for key, prop in sub_schema.get("properties", {}).items():
            if key not in result and "default" in prop:
                result[key] = copy_json(prop["default"])
    for key in list(result):
        prop = next((s["properties"][key] for s in reversed(schemas) if key in s.get("properties", {})), None)
        if prop is not None:
            result[key] = fill_defaults(prop, result[key])
    return result
