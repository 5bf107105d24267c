"""Strict, position-aware YAML loading (and deterministic dumping) for config files.

Rules, beyond "is this valid YAML":

- Scalars follow YAML 1.2's *core schema*, not PyYAML's YAML 1.1 rules: ``3e-4`` is a float,
  ``on``/``yes``/``no`` are strings, ``1_000``/``0b101``/``12:30``/``2024-01-01`` are strings.
  Quoted scalars are always strings.
- A file is exactly one document whose top level is a mapping with string keys.
- Duplicate keys, explicit tags (``!!str``, ``!!python/object``, ``!foo``), merge keys (``<<``),
  recursive aliases and alias expansion past a small bound are errors, as is nesting deeper than
  ``MAX_DEPTH`` and input larger than ``max_bytes``.
- Every error is a :class:`gitops.errors.ConfigError` whose problems carry ``file:line:col``;
  a path that cannot be read is a :class:`gitops.errors.UsageError`.

The node graph is composed by PyYAML (pure Python loader, so positions and errors are the same
everywhere) and converted to plain Python here, never by PyYAML's constructors.
The common document (no ``&``, ``*``, ``!`` or ``<<`` anywhere in the text) is composed by libyaml
in C and converted by a lean builder; anything unusual or wrong there is re-read by the full loader,
so results and messages are the same either way.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import stat
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    NodeEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from gitops.errors import ConfigError, Problem, UsageError
from gitops.records import record

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "Mark",
    "YamlDoc",
    "dump_yaml",
    "format_path",
    "load_yaml_file",
    "load_yaml_text",
    "parse_scalar",
]

MAX_DEPTH = 100  # nested mappings/lists, the top-level mapping being level 1
MAX_ALIAS_NODES = 10_000  # nodes produced by alias expansion, over the whole document

STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


# --------------------------------------------------------------------------------------------
# Public data types


@record(frozen=True, fast_init=True)  # one per YAML node: the compiled __init__ is faster
class Mark:
    """A position in a file, 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@record(frozen=True)
class YamlDoc:
    """A loaded document: plain data plus the position of every key and value in it."""

    data: Any
    file: str
    marks: dict[tuple, Mark] = field(default_factory=dict)  # path -> value node; () -> document
    key_marks: dict[tuple, Mark] = field(default_factory=dict)  # path -> key node (list items: the item)

    def mark_for(self, path: tuple) -> Mark:
        """Position of the value at `path`, or of its deepest known ancestor (at worst the document)."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            mark = self.marks.get(path[:n])
            if mark is not None:
                return mark
        return Mark(self.file, 1, 1)

    def key_mark_for(self, path: tuple) -> Mark:
        """Position of the key at `path`, or of its deepest known ancestor's key (at worst the document)."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            mark = self.key_marks.get(path[:n])
            if mark is not None:
                return mark
        return self.mark_for(())


def format_path(path: tuple) -> str:
    """A key path as users write it: ``("train", "layers", 0, "size")`` -> ``train.layers[0].size``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --------------------------------------------------------------------------------------------
# YAML 1.2 core schema

_CORE_NULL = re.compile(r"~|null|Null|NULL|")
_CORE_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_CORE_INT10 = re.compile(r"[-+]?[0-9]+")
_CORE_INT8 = re.compile(r"0o[0-7]+")
_CORE_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_CORE_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_CORE_NAN = re.compile(r"\.(?:nan|NaN|NAN)")

# (tag, regexp, first characters), in resolution order: ints before floats.
_CORE_RESOLVERS: list[tuple[str, re.Pattern[str], str]] = [
    (_NULL_TAG, _CORE_NULL, "~nN"),
    (_BOOL_TAG, _CORE_BOOL, "tTfF"),
    (_INT_TAG, _CORE_INT10, "-+0123456789"),
    (_INT_TAG, _CORE_INT8, "0"),
    (_INT_TAG, _CORE_INT16, "0"),
    (_FLOAT_TAG, _CORE_FLOAT, "-+.0123456789"),
    (_FLOAT_TAG, _CORE_INF, "-+."),
    (_FLOAT_TAG, _CORE_NAN, "."),
]


def _core_tag(value: str) -> str:
    """The core-schema tag of a plain scalar."""
    for tag, regexp, _first in _CORE_RESOLVERS:
        if regexp.fullmatch(value):
            return tag
    return STR_TAG


class NonFiniteNumber(ValueError):
    """A plain scalar reads as a number JSON cannot hold (``.inf``, ``.nan``, or a float that overflows)."""


def _core_value(value: str) -> Any:
    """Plain scalar text -> Python value under the core schema.

    Raises:
        NonFiniteNumber: ``.inf``/``.nan`` or a float literal past the float range (``1e999``): configs
            are hashed as strict JSON, which has no such numbers.
        ValueError: an integer longer than Python's int-from-str digit limit.
    """
    tag = _core_tag(value)
    if tag == STR_TAG:
        return value
    if tag == _NULL_TAG:
        return None
    if tag == _BOOL_TAG:
        return value.lower() == "true"
    if tag == _INT_TAG:
        if value.startswith("0o"):
            return int(value[2:], 8)
        if value.startswith("0x"):
            return int(value[2:], 16)
        return int(value)  # may raise ValueError past Python's int-from-str digit limit
    if _CORE_NAN.fullmatch(value) or _CORE_INF.fullmatch(value):
        raise NonFiniteNumber(
            f"non-finite number {value!r} is not allowed (configs are hashed as strict JSON); "
            f"write a finite number, or quote it ('{value}') for text"
        )
    number = float(value)
    if not math.isfinite(number):
        raise NonFiniteNumber(f"number {value!r} is out of range (largest is about 1.8e308)")
    return number


try:  # libyaml's scanner and parser in C; the composer below stays in Python (5x faster overall)
    from yaml._yaml import CParser as _Parser

    class _ParserBase(yaml.composer.Composer, _Parser, yaml.resolver.Resolver):
        def __init__(self, stream: str):
            _Parser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)

        def dispose(self) -> None:
            pass

        def compose_scalar_node(self, anchor):
            node = super().compose_scalar_node(anchor)
            if node.style == "":  # libyaml spells the plain style '' where PyYAML uses None
                node.style = None
            return node

except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _ParserBase = None  # type: ignore[misc,assignment]


class _Loader:
    """SafeLoader with YAML 1.2 core-schema resolvers and composition-time checks.

    Only the composer is used (never the constructor). The composer is extended to
    - reject explicit tags (recorded as problems; composition goes on),
    - reject nesting deeper than MAX_DEPTH before Python's recursion limit is near,
    - return an `_Alias` wrapper for each alias, so the converter knows where aliases are used,
      can bound their expansion and detect recursion.
    """

    # Our own dict: yaml.SafeLoader's class attributes are left untouched.
    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream: str):
        super().__init__(stream)
        self.tagged: dict[int, tuple[Any, str]] = {}  # id(node) -> (yaml mark, message), in order
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.get_event()
            if event.anchor not in self.anchors:
                raise _Fatal(
                    event.start_mark, f"undefined alias '*{event.anchor}' (no '&{event.anchor}' before it)"
                )
            return _Alias(self.anchors[event.anchor], event.start_mark)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None and anchor in self.anchors:
            first = self.anchors[anchor].start_mark
            raise _Fatal(
                event.start_mark, f"duplicate anchor '&{anchor}' (first defined on line {first.line + 1})"
            )
        tag = getattr(event, "tag", None) if isinstance(event, NodeEvent) else None
        is_collection = isinstance(event, CollectionStartEvent)
        if is_collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Fatal(event.start_mark, f"nesting is deeper than {MAX_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            if is_collection:
                self._depth -= 1
        if tag is not None:  # reported by the builder, which knows the key path
            if tag.startswith("tag:yaml.org,2002:"):
                tag = "!!" + tag[len("tag:yaml.org,2002:") :]
            self.tagged[id(node)] = (
                event.start_mark,
                f"tags are not allowed (found '{tag}'); write a plain value",
            )
        return node


class _PyLoader(_Loader, yaml.SafeLoader):
    """Pure-Python scanner: slower, but its syntax messages name the offending character."""


_FastLoader = type("_FastLoader", (_Loader, _ParserBase), {}) if _ParserBase is not None else _PyLoader
_Loader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in _CORE_RESOLVERS:
    yaml.resolver.BaseResolver.add_implicit_resolver.__func__(_Loader, _tag, _regexp, list(_first))
yaml.resolver.BaseResolver.add_implicit_resolver.__func__(_Loader, _NULL_TAG, _CORE_NULL, [""])  # empty plain scalar
del _tag, _regexp, _first


class _Alias:
    """Stands for an alias in the composed graph: the anchored node and where the alias is."""

    __slots__ = ("target", "start_mark")

    def __init__(self, target, start_mark):
        self.target = target
        self.start_mark = start_mark


class _Fatal(Exception):
    """Stops loading: one problem at a yaml mark."""

    def __init__(self, mark, message: str):
        super().__init__(message)
        self.mark = mark
        self.message = message


# --------------------------------------------------------------------------------------------
# Loading


def load_yaml_file(
    path: str | Path, *, display_name: str | None = None, max_bytes: int = 1_000_000
) -> YamlDoc:
    """Load a config file: one document, a mapping at the top. See the module docstring for the rules."""
    name = display_name if display_name is not None else str(path)
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"{name}: file not found") from None
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{name}: is a directory, expected a YAML file")
    if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
        raise _too_large(name, st.st_size, max_bytes)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except IsADirectoryError:
        raise UsageError(f"{name}: is a directory, expected a YAML file") from None
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        size = st.st_size if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes else len(raw)
        raise _too_large(name, size, max_bytes, at_least=size == len(raw))
    return _load(raw, name, max_bytes=max_bytes, require_mapping=True)


def load_yaml_text(text: str | bytes, file: str = "<string>", *, max_bytes: int = 1_000_000) -> YamlDoc:
    """Load config text (str, or bytes as UTF-8): one document, a mapping at the top."""
    return _load(text, file, max_bytes=max_bytes, require_mapping=True)


def parse_scalar(text: str, *, where: str = "--set", key: str | None = None) -> Any:
    """Parse one command-line value the way it would read in a file (core schema), comments aside.

    ``"3e-4"`` -> 3e-4, ``"on"`` -> "on", ``""`` -> None, ``"[1, 2]"`` -> [1, 2], ``"{a: 1}"`` -> {"a": 1}.
    A ``#`` never starts a comment: ``"see #12 for details"`` stays that text (in a file, YAML would
    cut it at `` #``; on a command line nobody writes comments, so a ``#`` is always meant as typed).

    Args:
        text: the value as typed after ``KEY=``.
        where: the "file" named in problems (``--set train.seed``).
        key: the dotted key, used to show how to quote a value YAML can't read.

    Raises:
        ConfigError: problems whose file is `where`; when the text isn't valid YAML (``@x``, ``%x``,
            a tag...), the message shows the same override with the value quoted.
    """
    # '#' is only ever syntax as a comment start (tags are refused anyway): stand it in by a character
    # absent from the text, parse, and put it back in every string and message.
    hole = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)
    try:
        data = _load(text.replace("#", hole), where, max_bytes=1_000_000, require_mapping=False).data
    except ConfigError as exc:
        hint = ""
        if key is not None and any(not _is_number_problem(p) for p in exc.problems):
            hint = f"; to pass it as text, quote it: --set {shlex.quote(key + '=' + json.dumps(text, ensure_ascii=False, allow_nan=False))}"
        problems = [
            Problem(p.file, p.line, p.col, p.path.replace(hole, "#"),
                    p.message.replace(hole, "#") + ("" if _is_number_problem(p) else hint))
            for p in exc.problems
        ]
        raise ConfigError(problems, exit_code=exc.exit_code) from None
    return _put_back(data, hole)


def _is_number_problem(problem: Problem) -> bool:
    return problem.message.startswith(("non-finite number", "number "))


def _put_back(value: Any, hole: str) -> Any:
    if isinstance(value, str):
        return value.replace(hole, "#")
    if isinstance(value, list):
        return [_put_back(v, hole) for v in value]
    if isinstance(value, dict):
        return {_put_back(k, hole): _put_back(v, hole) for k, v in value.items()}
    return value


def _too_large(file: str, size: int, limit: int, *, at_least: bool = False) -> ConfigError:
    n = f"more than {limit}" if at_least else str(size)
    return ConfigError([Problem(file, 1, 1, "", f"file is too large ({n} bytes, limit {limit})")])


def _decode(raw: bytes | str, file: str, max_bytes: int) -> str:
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError as e:
            line = raw.count("\n", 0, e.start) + 1
            col = e.start - (raw.rfind("\n", 0, e.start) + 1) + 1
            raise ConfigError(
                [Problem(file, line, col, "", f"text is not encodable as UTF-8 (character {raw[e.start]!r})")]
            ) from None
    else:
        raw = bytes(raw)
    if len(raw) > max_bytes:
        raise _too_large(file, len(raw), max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            [
                Problem(
                    file,
                    line,
                    col,
                    "",
                    f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start} (line {line})",
                )
            ]
        ) from None


_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # line breaks as PyYAML's marks count them


def _pos(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index, counted like PyYAML's marks."""
    line, start = 1, 0
    for m in _BREAK.finditer(text, 0, index):
        line, start = line + 1, m.end()
    return line, index - start + 1


def _load(raw: str | bytes, file: str, *, max_bytes: int, require_mapping: bool) -> YamlDoc:
    text = _decode(raw, file, max_bytes)
    if require_mapping and _CComposer is not None:
        doc = _load_common(text, file)
        if doc is not None:
            return doc
    if _FastLoader is not _PyLoader:
        try:
            return _load_with(_FastLoader, text, file, require_mapping=require_mapping)
        except ConfigError as exc:
            if not getattr(exc, "from_parser", False):
                raise
    # libyaml found a syntax problem: re-read with the Python scanner for its clearer message
    return _load_with(_PyLoader, text, file, require_mapping=require_mapping)


# --------------------------------------------------------------------------------------------
# Fast path: the common document (no anchors, aliases, tags or merge keys), composed by libyaml in C

_SPECIAL = re.compile(r"[&*!]|<<")
_NO_TAG = "?"  # what the C composer's resolve() answers: no Python resolver work per node

if _ParserBase is not None:

    class _CComposer(_Parser):
        """libyaml's parser *and* composer, both in C; the builder below does the core-schema work."""

        def resolve(self, kind, value, implicit):
            return _NO_TAG

        def descend_resolver(self, current_node, current_index):
            pass

        def ascend_resolver(self):
            pass

else:  # pragma: no cover - PyYAML built without libyaml
    _CComposer = None  # type: ignore[misc,assignment]


class _Unusual(Exception):
    """The fast path met something it leaves to the full loader (which gives the usual messages)."""


_SCALAR_CACHE: dict[str, Any] = {}  # plain scalar text -> core-schema value (immutable values only)


def _plain_value(value: str) -> Any:
    try:
        return _SCALAR_CACHE[value]
    except KeyError:
        pass
    result = _core_value(value)  # ValueError for a too-long integer: the caller falls back
    if len(value) <= 64 and len(_SCALAR_CACHE) < 20_000:
        _SCALAR_CACHE[value] = result
    return result


def _load_common(text: str, file: str) -> YamlDoc | None:
    """The document as the full loader would give it, or None when the full loader must decide.

    Only documents that load without a problem are returned; anything unusual (an error, a possible
    anchor/alias/tag/merge key, a non-mapping top level) is left to `_load_with`.
    """
    if _SPECIAL.search(text) is not None:
        return None
    try:
        root = _CComposer(text).get_single_node()
    except Exception:  # syntax errors, several documents...: the full loader reports them
        return None
    if type(root) is not MappingNode:
        return None
    marks: dict[tuple, Mark] = {}
    key_marks: dict[tuple, Mark] = {}
    new = object.__new__

    def mark(m) -> Mark:  # Mark(file, m.line + 1, m.column + 1), without the frozen dataclass's __init__
        out = new(Mark)
        d = out.__dict__
        d["file"] = file
        d["line"] = m.line + 1
        d["col"] = m.column + 1
        return out

    def mapping(node, path: tuple, depth: int) -> dict:
        if depth > MAX_DEPTH:
            raise _Unusual
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not ScalarNode:
                raise _Unusual
            key = key_node.value
            if not key_node.style:
                key = _plain_value(key)
                if type(key) is not str:
                    raise _Unusual
            if key in out:
                raise _Unusual
            child = (*path, key)
            m = key_node.start_mark
            key_marks[child] = mark(m)
            out[key] = value(value_node, child, depth)
        return out

    def value(node, path: tuple, depth: int) -> Any:
        m = node.start_mark
        marks[path] = mark(m)
        kind = type(node)
        if kind is ScalarNode:
            return _plain_value(node.value) if not node.style else node.value
        if kind is MappingNode:
            return mapping(node, path, depth + 1)
        if kind is not SequenceNode or depth + 1 > MAX_DEPTH:
            raise _Unusual
        out_list = []
        for i, item in enumerate(node.value):
            child = (*path, i)
            m = item.start_mark
            key_marks[child] = mark(m)
            out_list.append(value(item, child, depth + 1))
        return out_list

    m = root.start_mark
    marks[()] = mark(m)
    try:
        data = mapping(root, (), 1)
    except (_Unusual, ValueError, RecursionError):
        return None
    return YamlDoc(data, file, marks, key_marks)


def _parser_error(problems: list[Problem]) -> ConfigError:
    error = ConfigError(problems)
    error.from_parser = True  # type: ignore[attr-defined]
    return error


def _load_with(loader_cls, text: str, file: str, *, require_mapping: bool) -> YamlDoc:
    loader = None
    try:
        try:
            loader = loader_cls(text)  # the reader checks for forbidden characters here
            root = _compose_single(loader)
        except _Fatal as e:
            raise _parser_error([_problem(file, e.mark, (), e.message)]) from None
        except ReaderError as e:
            line, col = _pos(text, e.position)
            ch = e.character
            what = f"U+{ch:04X}" if isinstance(ch, int) else repr(ch)
            raise _parser_error(
                [
                    Problem(
                        file,
                        line,
                        col,
                        "",
                        f"character {what} is not allowed in YAML (a control or non-printable character)",
                    )
                ]
            ) from None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = e.problem or e.context or "invalid YAML"
            if e.problem and e.context:
                msg += f" ({e.context}"
                if (
                    e.context_mark is not None
                    and e.problem_mark is not None
                    and (e.context_mark.line != e.problem_mark.line)
                ):
                    msg += f" started on line {e.context_mark.line + 1}"
                msg += ")"
            raise _parser_error([_problem(file, mark, (), f"YAML syntax error: {msg}")]) from None
        except yaml.YAMLError as e:
            raise _parser_error([Problem(file, 1, 1, "", f"YAML error: {e}")]) from None
        except RecursionError:
            raise _parser_error(
                [Problem(file, 1, 1, "", f"nesting is deeper than {MAX_DEPTH} levels")]
            ) from None
        tagged = loader.tagged
    finally:
        if loader is not None:
            loader.dispose()

    if root is None:
        if require_mapping:
            raise ConfigError([Problem(file, 1, 1, "", "file is empty; expected a mapping")])
        return YamlDoc(None, file, {(): Mark(file, 1, 1)}, {})

    builder = _Builder(file, tagged)
    try:
        data = builder.build(root)
    except _Fatal as e:
        raise ConfigError([*builder.problems, _problem(file, e.mark, (), e.message)]) from None
    # tags on nodes the builder never visited (e.g. a tagged non-string key) are still errors
    problems = builder.problems + [_problem(file, m, (), msg) for m, msg in tagged.values()]
    if problems:
        raise ConfigError(problems)
    if require_mapping and not isinstance(root, MappingNode):
        if isinstance(root, ScalarNode) and root.style is None and root.value == "":
            raise ConfigError([Problem(file, 1, 1, "", "file is empty; expected a mapping")])
        raise ConfigError(
            [
                _problem(
                    file, root.start_mark, (), f"expected a mapping at the top level, found {_describe(data)}"
                )
            ]
        )
    return YamlDoc(data, file, builder.marks, builder.key_marks)


def _compose_single(loader: _Loader):
    """The one document's root node, or None for a stream without documents."""
    loader.get_event()  # the StreamStartEvent
    if loader.check_event(StreamEndEvent):
        return None
    root = loader.compose_document()
    if not loader.check_event(StreamEndEvent):
        event = loader.peek_event()
        raise _Fatal(
            event.start_mark,
            "more than one YAML document (a second '---'); a config file holds exactly one",
        )
    return root


def _problem(file: str, mark, path: tuple, message: str) -> Problem:
    if mark is None:
        return Problem(file, 1, 1, format_path(path), message)
    return Problem(file, mark.line + 1, mark.column + 1, format_path(path), message)


_KEY_KINDS = {_NULL_TAG: "null", _BOOL_TAG: "a boolean", _INT_TAG: "a number", _FLOAT_TAG: "a number"}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Builder:
    """Composed node graph -> plain Python, recording marks and bounding alias expansion."""

    def __init__(self, file: str, tagged: dict[int, tuple[Any, str]]):
        self.file = file
        self.tagged = tagged  # entries are popped once reported
        self.marks: dict[tuple, Mark] = {}
        self.key_marks: dict[tuple, Mark] = {}
        self.problems: list[Problem] = []
        self._expanded = 0
        self._alias_site = None  # mark of the outermost alias being expanded
        self._active: set[int] = set()  # ids of collection nodes being built (recursion check)

    def mark(self, m) -> Mark:
        return Mark(self.file, m.line + 1, m.column + 1)

    def build(self, root) -> Any:
        self.marks[()] = self.mark(root.start_mark)
        return self._node(root, (), 0, record=False)

    def _node(self, node, path: tuple, depth: int, *, record: bool = True) -> Any:
        if isinstance(node, _Alias):
            if record:
                self.marks[path] = self.mark(node.start_mark)
            outer = self._alias_site is None
            if outer:
                self._alias_site = node.start_mark
            try:
                if id(node.target) in self._active:
                    raise _Fatal(node.start_mark, "recursive alias: an anchor is used inside itself")
                return self._node(node.target, path, depth, record=False)
            finally:
                if outer:
                    self._alias_site = None
        if record:
            self.marks[path] = self.mark(node.start_mark)
        self._check_tag(node, path)
        if self._alias_site is not None:
            self._expanded += 1
            if self._expanded > MAX_ALIAS_NODES:
                raise _Fatal(
                    self._alias_site,
                    f"alias expansion too large (more than {MAX_ALIAS_NODES} nodes); "
                    "repeat the values instead of nesting aliases",
                )
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        depth += 1
        if depth > MAX_DEPTH:
            raise _Fatal(self._alias_site or node.start_mark, f"nesting is deeper than {MAX_DEPTH} levels")
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                out_list = []
                for i, item in enumerate(node.value):
                    item_mark = item.start_mark
                    self.key_marks[(*path, i)] = self.mark(item_mark)
                    out_list.append(self._node(item, (*path, i), depth))
                return out_list
            if isinstance(node, MappingNode):
                return self._mapping(node, path, depth)
            raise _Fatal(node.start_mark, f"unsupported YAML node {type(node).__name__}")  # pragma: no cover
        finally:
            self._active.discard(id(node))

    def _check_tag(self, node, path: tuple) -> None:
        found = self.tagged.pop(id(node), None)
        if found is not None:
            self.problems.append(_problem(self.file, found[0], path, found[1]))

    def _mapping(self, node: MappingNode, path: tuple, depth: int) -> dict:
        out: dict[str, Any] = {}
        first_seen: dict[str, Any] = {}
        for key_node, value_node in node.value:
            site = key_node.start_mark  # where the key is written (the alias, for `*a: ...`)
            key_target = key_node.target if isinstance(key_node, _Alias) else key_node
            if isinstance(key_target, ScalarNode):
                self._check_tag(key_target, (*path, key_target.value))
            if not isinstance(key_target, ScalarNode):
                kind = "a list" if isinstance(key_target, SequenceNode) else "a mapping"
                self.problems.append(
                    _problem(self.file, site, path, f"keys must be strings, found {kind} as a key")
                )
                continue
            if key_target.style is None and key_target.value == "<<":
                self.problems.append(
                    _problem(
                        self.file,
                        site,
                        path,
                        "merge keys ('<<') are not supported; write the keys out, or use 'extends:'",
                    )
                )
                continue
            if key_target.style is None:
                key_tag = _core_tag(key_target.value)
                key = key_target.value
                if key_tag != STR_TAG:
                    self.problems.append(
                        _problem(
                            self.file,
                            site,
                            path,
                            f"keys must be strings, found {_KEY_KINDS[key_tag]} key {key_target.value!r}"
                            f" (quote it: '{key_target.value}')",
                        )
                    )
                    continue
            else:
                key = key_target.value
            child = (*path, key)
            if key in first_seen:
                first = first_seen[key]
                self.problems.append(
                    _problem(
                        self.file,
                        site,
                        child,
                        f"duplicate key {key!r} (first defined on line {first.line + 1})",
                    )
                )
                continue
            first_seen[key] = site
            self.key_marks[child] = self.mark(site)
            out[key] = self._node(value_node, child, depth)
        return out

    def _scalar(self, node: ScalarNode, path: tuple) -> Any:
        if node.style is not None:  # quoted or block scalar: always a string
            return node.value
        try:
            return _core_value(node.value)
        except NonFiniteNumber as exc:
            self.problems.append(_problem(self.file, node.start_mark, path, str(exc)))
            return None
        except ValueError:
            self.problems.append(
                _problem(self.file, node.start_mark, path, f"number has too many digits ({len(node.value)})")
            )
            return None


# --------------------------------------------------------------------------------------------
# Dumping


class _Dumper(yaml.SafeDumper):
    """SafeDumper (YAML 1.1 resolvers, so 1.1-ambiguous strings get quoted) that never writes anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _needs_quotes(value: str) -> bool:
    """Would a plain `value` read back as something else under the core schema (or be a merge key)?"""
    return _core_tag(value) != STR_TAG or value == "<<"


_LINE_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Strings YAML 1.1 would misread (yes, 1_000, 2024-01-01...) are quoted by the emitter itself, since
    # the dumper resolves with 1.1 rules; strings the 1.2 core schema would misread are quoted here.
    # Line breaks always get double quotes (escaped): PyYAML's emitter writes e.g. U+0085 raw inside
    # single quotes, where it folds back as a space.
    if _LINE_BREAKS.search(data):
        style = '"'
    elif _needs_quotes(data):
        style = "'"
    else:
        style = None
    return dumper.represent_scalar(STR_TAG, data, style=style)


def _represent_tuple(dumper: yaml.SafeDumper, data: tuple) -> yaml.SequenceNode:
    return dumper.represent_list(list(data))


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.MappingNode:
    for key in data:
        if not isinstance(key, str):
            raise TypeError(f"dump_yaml: mapping keys must be strings, got {key!r}")
    return dumper.represent_dict(data)


_representers: dict[type, Callable] = {str: _represent_str, tuple: _represent_tuple, dict: _represent_dict}
for _type, _fn in _representers.items():
    _Dumper.add_representer(_type, _fn)
del _type, _fn


def dump_yaml(data: Any) -> str:
    """Deterministic block-style YAML that `load_yaml_text` (and YAML 1.1 readers) read back as `data`.

    Keys keep insertion order. Strings that would read back as another type are quoted.
    """
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
