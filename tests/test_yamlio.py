"""The strict YAML loader: core-schema scalars, positions, and every rejection with file:line:col."""

from __future__ import annotations

import os
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops.config.yamlio import (
    MAX_DEPTH,
    Mark,
    YamlDoc,
    dump_yaml,
    format_path,
    load_yaml_file,
    load_yaml_text,
    parse_scalar,
)
from gitops.errors import EXIT_INVALID, EXIT_USAGE, ConfigError, UsageError


def write(tmp_path, text: str | bytes, name: str = "model.yaml"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def load_error(tmp_path, text: str | bytes, name: str = "model.yaml") -> ConfigError:
    p = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_yaml_file(p)
    assert info.value.exit_code == EXIT_INVALID
    for problem in info.value.problems:
        assert problem.file == str(p)
    return info.value


def only(err: ConfigError):
    assert len(err.problems) == 1, err.problems
    return err.problems[0]


# ---------------------------------------------------------------------------------------------
# Core schema

CORE_SCALARS = [
    # floats: YAML 1.2 reads these, PyYAML's 1.1 rules read several as strings
    ("3e-4", 3e-4),
    ("1e5", 1e5),
    ("1E5", 1e5),
    ("1.0e-3", 1.0e-3),
    ("-2.5E+3", -2500.0),
    (".5", 0.5),
    ("+.5", 0.5),
    ("1.", 1.0),
    ("0.1", 0.1),
    # ints
    ("0", 0),
    ("-17", -17),
    ("+3", 3),
    ("007", 7),
    ("0x1F", 31),
    ("0xff", 255),
    ("0o17", 15),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    # booleans: only true/false in three spellings
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("false", False),
    ("False", False),
    ("FALSE", False),
    # null
    ("null", None),
    ("Null", None),
    ("NULL", None),
    ("~", None),
    ("", None),
    # strings: YAML 1.1 booleans, underscores, binary, sexagesimal, timestamps, odd spellings
    ("on", "on"),
    ("off", "off"),
    ("On", "On"),
    ("yes", "yes"),
    ("no", "no"),
    ("NO", "NO"),
    ("y", "y"),
    ("n", "n"),
    ("tRUE", "tRUE"),
    ("nULL", "nULL"),
    ("1_000", "1_000"),
    ("0b101", "0b101"),
    ("0B101", "0B101"),
    ("0X1F", "0X1F"),
    ("0O17", "0O17"),
    ("12:30", "12:30"),
    ("190:20:30", "190:20:30"),
    ("2024-01-01", "2024-01-01"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    ("1e", "1e"),
    ("e5", "e5"),
    ("1.2.3", "1.2.3"),
    (".", "."),
    ("inf", "inf"),
    ("nan", "nan"),
    ("=", "="),
    ("hello world", "hello world"),
    ("'3e-4'", "3e-4"),
    ('"true"', "true"),
    ("'null'", "null"),
    ("''", ""),
    ('"0x1F"', "0x1F"),
]


@pytest.mark.parametrize(("text", "expected"), CORE_SCALARS)
def test_core_schema_scalar_in_a_file(text, expected):
    doc = load_yaml_text(f"v: {text}\n", "f.yaml")
    got = doc.data["v"]
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("text", "expected"), CORE_SCALARS)
def test_core_schema_scalar_via_parse_scalar(text, expected):
    got = parse_scalar(text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN", ".inf", "-.inf", "+.Inf", ".INF", "1e999", "-2e400"])
def test_non_finite_numbers_are_positioned_errors(text):
    # configs are hashed as strict JSON: infinities and NaN (and floats that overflow) have no place
    with pytest.raises(ConfigError) as info:
        load_yaml_text(f"a: 1\nopt:\n  clip: {text}\n", "models/m/train.yaml")
    problem = only(info.value)
    assert (problem.file, problem.line, problem.col, problem.path) == ("models/m/train.yaml", 3, 9, "opt.clip")
    assert text in problem.message
    with pytest.raises(ConfigError) as info:
        parse_scalar(text, where="--set train.grad_clip_norm", key="train.grad_clip_norm")
    problem = only(info.value)
    assert (problem.file, problem.line, problem.col) == ("--set train.grad_clip_norm", 1, 1)
    assert "quote it" not in problem.message or text.startswith((".", "-.", "+.")) and "'" + text + "'" in problem.message
    # quoted, they are text
    assert parse_scalar(f"'{text}'") == text
    assert load_yaml_text(f"v: '{text}'").data == {"v": text}


def test_non_finite_key_is_one_problem():
    problem = only(pytest.raises(ConfigError, load_yaml_text, ".inf: 1\n").value)
    assert "keys must be strings" in problem.message


@pytest.mark.parametrize(("typed", "expected"), [
    ("see #12 for details", "see #12 for details"),
    ("#12", "#12"),
    ("a#b", "a#b"),
    ("value # not a comment", "value # not a comment"),
    ("3 # x", "3 # x"),
    ("'quoted #1'", "quoted #1"),
    ('"dq # 2"', "dq # 2"),
    ("[a #1, 'b #2', c]", ["a #1", "b #2", "c"]),
    ("{note: see #3, n: 2}", {"note": "see #3", "n": 2}),
    ("{'#k': 1}", {"#k": 1}),
    ("3e-4", 3e-4),
    ("[1, 2]", [1, 2]),
])
def test_set_value_keeps_hash_as_typed(typed, expected):
    got = parse_scalar(typed)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("typed", ["@foo", "`cmd`", "%x", "!tag x", "[unclosed #1", "a: b: c"])
def test_set_value_yaml_cannot_read_says_how_to_quote(typed):
    import shlex

    with pytest.raises(ConfigError) as info:
        parse_scalar(typed, where="--set release.description", key="release.description")
    message = str(info.value)
    assert message.startswith("--set release.description:1:")
    hint = message.split("quote it: --set ", 1)[1]
    # the suggested override, as a shell would pass it, parses back to exactly the typed text
    key, value = shlex.split(hint)[0].split("=", 1)
    assert key == "release.description" and parse_scalar(value) == typed


def test_block_scalars_are_strings():
    doc = load_yaml_text("a: |\n  3e-4\nb: >\n  true\n")
    assert doc.data == {"a": "3e-4\n", "b": "true\n"}


def test_yaml_safeloader_is_not_changed():
    load_yaml_text("a: 1")
    assert yaml.safe_load("a: on") == {"a": True}  # the 1.1 rules still hold for PyYAML itself


# ---------------------------------------------------------------------------------------------
# parse_scalar (for --set)


def test_parse_scalar_collections():
    assert parse_scalar("[1, 2]") == [1, 2]
    assert parse_scalar("{a: 1}") == {"a": 1}
    assert parse_scalar("[on, 3e-4, null]") == ["on", 3e-4, None]
    assert parse_scalar("hello") == "hello"


@pytest.mark.parametrize("text", ["[1, 2", "{a: 1", "@x", "a: b: c", "!!str x", "'open"])
def test_parse_scalar_errors_name_where(text):
    with pytest.raises(ConfigError) as info:
        parse_scalar(text, where="--set train.lr")
    problem = info.value.problems[0]
    assert problem.file == "--set train.lr"
    assert problem.line >= 1 and problem.col >= 1


# ---------------------------------------------------------------------------------------------
# Documents and positions


def test_loads_a_config_file_with_positions(tmp_path):
    p = write(
        tmp_path,
        "# yaml-language-server: $schema=../../schemas/train.schema.json\n"
        "train:\n"
        "  optimizer:\n"
        "    name: adam\n"
        "    learning_rate: 3e-4\n"
        "  layers:\n"
        "    - size: 64\n"
        "    - size: 32\n"
        "      act: relu\n"
        "  tags: [a, b]\n",
    )
    doc = load_yaml_file(p)
    assert isinstance(doc, YamlDoc)
    assert doc.file == str(p)
    assert doc.data == {
        "train": {
            "optimizer": {"name": "adam", "learning_rate": 3e-4},
            "layers": [{"size": 64}, {"size": 32, "act": "relu"}],
            "tags": ["a", "b"],
        }
    }
    f = str(p)
    assert doc.marks[()] == Mark(f, 2, 1)
    assert doc.key_marks[("train",)] == Mark(f, 2, 1)
    assert doc.key_marks[("train", "optimizer", "learning_rate")] == Mark(f, 5, 5)
    assert doc.marks[("train", "optimizer", "learning_rate")] == Mark(f, 5, 20)
    assert doc.marks[("train", "optimizer", "name")] == Mark(f, 4, 11)
    assert doc.marks[("train", "layers", 0)] == Mark(f, 7, 7)
    assert doc.marks[("train", "layers", 1)] == Mark(f, 8, 7)
    assert doc.key_marks[("train", "layers", 1, "act")] == Mark(f, 9, 7)
    assert doc.marks[("train", "layers", 1, "act")] == Mark(f, 9, 12)
    assert doc.marks[("train", "tags", 1)] == Mark(f, 10, 13)
    # unknown paths fall back to the deepest known ancestor, then the document
    assert doc.mark_for(("train", "optimizer", "momentum")) == doc.marks[("train", "optimizer")]
    assert doc.key_mark_for(("train", "optimizer", "momentum")) == Mark(f, 3, 3)
    assert doc.mark_for(("nope", "x")) == doc.marks[()]
    assert doc.key_mark_for(("nope",)) == doc.marks[()]
    assert doc.mark_for(()) == doc.marks[()]


def test_display_name_is_used_in_marks_and_errors(tmp_path):
    p = write(tmp_path, "a: 1\n")
    doc = load_yaml_file(p, display_name="models/m/train.yaml")
    assert doc.file == "models/m/train.yaml"
    assert doc.marks[("a",)].file == "models/m/train.yaml"
    p = write(tmp_path, "a: 1\na: 2\n", "dup.yaml")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(p, display_name="models/m/dup.yaml")
    assert str(info.value).startswith("models/m/dup.yaml:2:1:")


def test_bom_and_crlf_are_fine(tmp_path):
    p = write(tmp_path, b"\xef\xbb\xbfa: 1\r\nb:\r\n  c: on\r\n")
    doc = load_yaml_file(p)
    assert doc.data == {"a": 1, "b": {"c": "on"}}
    assert doc.key_marks[("b", "c")] == Mark(str(p), 3, 3)


def test_single_document_markers_are_fine():
    assert load_yaml_text("---\na: 1\n...\n").data == {"a": 1}
    assert load_yaml_text("%YAML 1.2\n---\na: 1\n").data == {"a": 1}


def test_anchors_and_aliases_are_allowed_and_copied():
    doc = load_yaml_text("base: &b {x: 1, y: [1, 2]}\nother: *b\n")
    assert doc.data == {"base": {"x": 1, "y": [1, 2]}, "other": {"x": 1, "y": [1, 2]}}
    assert doc.data["base"] is not doc.data["other"]
    assert doc.marks[("other",)] == Mark("<string>", 2, 8)  # the alias site


@pytest.mark.parametrize(
    ("text", "line", "col", "needle"),
    [
        ("", 1, 1, "file is empty; expected a mapping"),
        ("# only a comment\n", 1, 1, "file is empty; expected a mapping"),
        ("---\n", 1, 1, "file is empty; expected a mapping"),
        ("- a\n- b\n", 1, 1, "expected a mapping at the top level, found a list"),
        ("\n42\n", 2, 1, "expected a mapping at the top level, found a number"),
        ("just text\n", 1, 1, "expected a mapping at the top level, found a string"),
        ("null\n", 1, 1, "expected a mapping at the top level, found null"),
        ("a: 1\n---\nb: 2\n", 2, 1, "more than one YAML document"),
    ],
)
def test_document_shape_errors(tmp_path, text, line, col, needle):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert needle in problem.message


# ---------------------------------------------------------------------------------------------
# Rejections, each with file:line:col


def test_duplicate_key_points_at_second_and_names_first(tmp_path):
    err = load_error(tmp_path, "train:\n  lr: 1\n  steps: 10\n  lr: 2\n")
    problem = only(err)
    assert (problem.line, problem.col) == (4, 3)
    assert problem.path == "train.lr"
    assert "duplicate key 'lr'" in problem.message and "line 2" in problem.message
    assert str(err).startswith(f"{tmp_path / 'model.yaml'}:4:3: train.lr: duplicate key")


def test_duplicate_keys_are_all_reported(tmp_path):
    err = load_error(tmp_path, "a: 1\nb: {x: 1, x: 2}\na: 3\n")
    assert [(p.line, p.col, p.path) for p in err.problems] == [(2, 11, "b.x"), (3, 1, "a")]


def test_duplicate_key_quoted_and_plain_are_the_same(tmp_path):
    problem = only(load_error(tmp_path, "a: 1\n'a': 2\n"))
    assert (problem.line, problem.col) == (2, 1)


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        ("ok: 1\n1: x\n", 2, 1),
        ("null: x\n", 1, 1),
        ("~: x\n", 1, 1),
        ("true: x\n", 1, 1),
        ("a:\n  3e-4: x\n", 2, 3),
        ("[a]: x\n", 1, 1),
        ("{a: 1}: x\n", 1, 1),
        ("? [a, b]\n: x\n", 1, 3),
    ],
)
def test_non_string_keys(tmp_path, text, line, col):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert "keys must be strings" in problem.message


def test_quoted_and_yaml11_keys_are_strings():
    assert load_yaml_text("'1': x\non: y\nyes: z\n'null': w\n").data == {
        "1": "x",
        "on": "y",
        "yes": "z",
        "null": "w",
    }


@pytest.mark.parametrize(
    ("text", "line", "col", "tag"),
    [
        ("a: !!python/object:os.system x\n", 1, 4, "!!python/object:os.system"),
        ("a: !!python/object/apply:os.system ['ls']\n", 1, 4, "!!python/object/apply:os.system"),
        ("a:\n  b: !!str 3\n", 2, 6, "!!str"),
        ("a: !foo bar\n", 1, 4, "!foo"),
        ("a: !!binary aGVsbG8=\n", 1, 4, "!!binary"),
        ("a: ! x\n", 1, 4, "!"),
        ("a: !!map {b: 1}\n", 1, 4, "!!map"),
        ("!!str k: v\n", 1, 1, "!!str"),
        ("--- !!map\na: 1\n", 1, 5, "!!map"),
    ],
)
def test_tags_are_rejected(tmp_path, text, line, col, tag):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert "tags are not allowed" in problem.message and tag in problem.message


def test_tag_problems_name_the_key_path(tmp_path):
    err = load_error(tmp_path, "a:\n  b: !!str 3\n  c: [1, !!int 2]\n")
    assert [(p.line, p.col, p.path) for p in err.problems] == [(2, 6, "a.b"), (3, 10, "a.c[1]")]


def test_billion_laughs_is_bounded(tmp_path):
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    problem = only(load_error(tmp_path, "\n".join(lines) + "\n"))
    assert "alias expansion too large" in problem.message
    assert problem.line == 4  # the first alias whose expansion passes the bound


def test_moderate_alias_use_is_fine():
    doc = load_yaml_text("a: &a [1, 2, 3]\nb: [*a, *a, *a]\n")
    assert doc.data["b"] == [[1, 2, 3]] * 3


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [("a: &x [1, *x]\n", 1, 11), ("a: &x\n  b: *x\n", 2, 6)],
)
def test_recursive_alias(tmp_path, text, line, col):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert "recursive alias" in problem.message


def test_undefined_and_duplicate_anchors(tmp_path):
    problem = only(load_error(tmp_path, "a: 1\nb: *nope\n"))
    assert (problem.line, problem.col, "undefined alias '*nope'") == (2, 4, problem.message[:23])
    problem = only(load_error(tmp_path, "a: &x 1\nb: &x 2\n"))
    assert (problem.line, problem.col) == (2, 4)
    assert "duplicate anchor" in problem.message and "line 1" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "col"), [("base: &b {x: 1}\nc:\n  <<: *b\n", 3, 3), ("<<: {a: 1}\n", 1, 1)]
)
def test_merge_keys_are_rejected(tmp_path, text, line, col):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert "merge keys" in problem.message and "not supported" in problem.message


def test_quoted_merge_key_is_a_plain_string():
    assert load_yaml_text("'<<': 1\n").data == {"<<": 1}


@pytest.mark.parametrize(
    ("text", "line", "col", "needle"),
    [
        ("a:\n\tb: 1\n", 2, 1, "YAML syntax error: found character '\\t' that cannot start any token"),
        ("a: 1\n\tb: 2\n", 2, 1, "found character '\\t'"),
        ("a: b: c\n", 1, 5, "YAML syntax error: mapping values are not allowed here"),
        ("a: [1, 2\n", 2, 1, "YAML syntax error: expected ',' or ']'"),
        ("a: 'open\n", 2, 1, "YAML syntax error: found unexpected end of stream"),
        ("a:\n  b: 1\n c: 2\n", 3, 2, "YAML syntax error"),
        ("a: @x\n", 1, 4, "found character '@'"),
    ],
)
def test_syntax_errors(tmp_path, text, line, col, needle):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert needle in problem.message


def test_invalid_utf8_names_byte_offset(tmp_path):
    problem = only(load_error(tmp_path, b"a: 1\nb: caf\xe9\n"))
    assert (problem.line, problem.col) == (2, 7)
    assert "not valid UTF-8" in problem.message and "byte offset 11" in problem.message


def test_utf16_is_not_utf8(tmp_path):
    problem = only(load_error(tmp_path, "a: 1\n".encode("utf-16")))
    assert "not valid UTF-8" in problem.message and "byte offset 0" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "col"), [("a: 1\nb: x\x00y\n", 2, 5), ("a: \x07\n", 1, 4), ("a: \x7f\n", 1, 4)]
)
def test_control_characters(tmp_path, text, line, col):
    problem = only(load_error(tmp_path, text))
    assert (problem.line, problem.col) == (line, col)
    assert "is not allowed in YAML" in problem.message


def test_control_character_position_counts_cr_line_breaks(tmp_path):
    problem = only(load_error(tmp_path, "a: 1\rb: 2\r\nc: \x01\n"))
    assert (problem.line, problem.col) == (3, 4)


def test_too_large_is_checked_before_parsing(tmp_path):
    p = write(tmp_path, "a: [" + "1, " * 400 + "\n")  # also broken YAML: size wins
    with pytest.raises(ConfigError) as info:
        load_yaml_file(p, max_bytes=1000)
    problem = only(info.value)
    assert (problem.line, problem.col) == (1, 1)
    assert problem.message == f"file is too large ({p.stat().st_size} bytes, limit 1000)"
    with pytest.raises(ConfigError, match=r"file is too large \(1205 bytes, limit 1000\)"):
        load_yaml_text("a: [" + "1, " * 400 + "\n", max_bytes=1000)
    assert load_yaml_text("a: 1", max_bytes=4).data == {"a": 1}


def test_nesting_depth_limit(tmp_path):
    ok = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    assert load_yaml_text(ok).data["a"] is not None
    problem = only(load_error(tmp_path, "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"))
    assert "nesting is deeper than 100 levels" in problem.message
    assert (problem.line, problem.col) == (1, 3 + MAX_DEPTH)
    # block style too, and far past Python's recursion limit
    block = "".join("  " * i + f"k{i}:\n" for i in range(150))
    assert "nesting is deeper" in only(load_error(tmp_path, block)).message
    deep = "a: " + "[" * 50_000
    assert "nesting is deeper" in only(load_error(tmp_path, deep)).message


def test_nesting_through_aliases_is_bounded(tmp_path):
    inner = "[" * 60 + "1" + "]" * 60
    text = f"a: &x {inner}\nb: {'[' * 60}*x{']' * 60}\n"
    problem = only(load_error(tmp_path, text))
    assert "nesting is deeper" in problem.message


def test_huge_integer_is_a_clean_error(tmp_path):
    problem = only(load_error(tmp_path, "a: " + "9" * 5000 + "\n"))
    assert (problem.line, problem.col, problem.path) == (1, 4, "a")


def test_several_problems_are_reported_together(tmp_path):
    err = load_error(tmp_path, "a: !!str x\nb: 1\nb: 2\n1: z\n")
    assert [(p.line, p.col) for p in err.problems] == [(1, 4), (3, 1), (4, 1)]


# ---------------------------------------------------------------------------------------------
# Paths that are not readable files


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        load_yaml_file(tmp_path / "nope.yaml")
    assert info.value.exit_code == EXIT_USAGE
    assert str(tmp_path / "nope.yaml") in str(info.value)


def test_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="directory") as info:
        load_yaml_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_path_through_a_file_is_a_usage_error(tmp_path):
    p = write(tmp_path, "a: 1\n")
    with pytest.raises(UsageError) as info:
        load_yaml_file(p / "train.yaml")
    assert str(p / "train.yaml") in str(info.value)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file_is_a_usage_error(tmp_path):
    p = write(tmp_path, "a: 1\n")
    p.chmod(0)
    try:
        with pytest.raises(UsageError) as info:
            load_yaml_file(p)
        assert str(p) in str(info.value)
    finally:
        p.chmod(0o644)


# ---------------------------------------------------------------------------------------------
# Dumping


def test_dump_quotes_what_would_read_back_differently():
    data = {
        "on": "on",
        "yes": "yes",
        "float": "1e5",
        "float2": "3e-4",
        "null": "null",
        "tilde": "~",
        "empty": "",
        "int": "0x1F",
        "under": "1_000",
        "sexa": "12:30",
        "date": "2024-01-01",
        "bool": "True",
        "merge": "<<",
        "n": "n",
        "plain": "adam",
    }
    text = dump_yaml(data)
    assert load_yaml_text(text).data == data
    assert yaml.safe_load(text) == data  # portable to YAML 1.1 readers too
    assert "plain: adam\n" in text
    assert "'<<'" not in text.split("\n")[0]


def test_dump_is_block_style_and_keeps_order():
    data = {"z": 1, "a": {"y": [1, 2.5, None, True], "b": "x"}, "m": 1e-5}
    text = dump_yaml(data)
    assert text == ("z: 1\na:\n  y:\n  - 1\n  - 2.5\n  - null\n  - true\n  b: x\nm: 1.0e-05\n")
    assert load_yaml_text(text).data == data
    assert dump_yaml(data) == text


def test_dump_round_trips_awkward_strings():
    data = {
        "multi": "line one\nline two\n",
        "colon": "a: b",
        "hash": "a #b",
        "lead": " x",
        "trail": "x ",
        "bang": "!foo",
        "star": "*x",
        "amp": "&x",
        "quote": 'it\'s "q"',
        "unicode": "héllo ✓ 𝄞",
        "ctrl": "a\x07b\x00",
        "tab": "\tx",
        "dash": "- x",
        "q": "? x",
        "percent": "%x",
        "k: v": "key with colon",
        "": "empty key",
        "tuple": (1, "on"),
    }
    text = dump_yaml(data)
    expected = dict(data, tuple=[1, "on"])
    assert load_yaml_text(text).data == expected


def test_dump_rejects_non_string_keys():
    with pytest.raises(TypeError):
        dump_yaml({1: "x"})


def test_format_path():
    assert format_path(("train", "layers", 0, "size")) == "train.layers[0].size"
    assert format_path(()) == ""
    assert format_path((0,)) == "[0]"


# ---------------------------------------------------------------------------------------------
# Fuzz: never anything but a YamlDoc with a dict, or ConfigError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TOKENS = [
    *"ab01:-?[]{},&*!|>'\"#%@`~. \t\n\r\\xe",
    "\x00",
    "\ufeff",
    "é",
    "<<",
    "  ",
    "\n  ",
    "&a ",
    "*a",
    "!!str ",
    "---\n",
    "e5",
]
yamlish = st.lists(st.sampled_from(_TOKENS), max_size=80).map("".join)


def _check_load(payload):
    try:
        doc = load_yaml_text(payload, "fuzz.yaml")
    except ConfigError as e:
        assert e.problems and all(p.file == "fuzz.yaml" and p.line >= 1 and p.col >= 1 for p in e.problems)
        return
    assert isinstance(doc, YamlDoc)
    assert isinstance(doc.data, dict)
    assert () in doc.marks


@FUZZ
@given(st.text(max_size=2000))
def test_fuzz_text(payload):
    _check_load(payload)


@FUZZ
@given(yamlish)
def test_fuzz_yamlish_text(payload):
    _check_load(payload)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_binary(payload):
    _check_load(payload)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_parse_scalar(payload):
    try:
        parse_scalar(payload)
    except ConfigError as e:
        assert e.problems[0].file == "--set"


keys = st.text(max_size=12)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(
        ["on", "yes", "no", "1e5", "null", "~", "", "0x1F", "1_000", "12:30", "2024-01-01", "<<"]
    )
)
trees = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(keys, trees, max_size=5))
def test_fuzz_dump_round_trip(data):
    text = dump_yaml(data)
    assert load_yaml_text(text).data == data


# --------------------------------------------------------------------------------------------
# The C fast path (`_load_common`) gives exactly what the full loader gives


def _full_load(text: str, file: str):
    from gitops.config import yamlio

    return yamlio._load_with(yamlio._FastLoader, text, file, require_mapping=True)


def _assert_same_as_full(text: str, file: str = "f.yaml") -> None:
    from gitops.config import yamlio

    fast = yamlio._load_common(text, file)
    assert fast is not None, "the fast path should take this document"
    full = _full_load(text, file)
    assert fast.data == full.data
    assert fast.marks == full.marks
    assert fast.key_marks == full.key_marks
    assert list(fast.marks) == list(full.marks)
    assert list(fast.key_marks) == list(full.key_marks)


def test_fast_path_matches_full_loader_on_example_models():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parent.parent / "models").glob("*/*.yaml"))
    assert files
    taken = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        from gitops.config import yamlio

        if yamlio._load_common(text, str(path)) is None:
            continue
        taken += 1
        _assert_same_as_full(text, str(path))
    assert taken >= len(files) // 2


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\n",
        "a: {b: [1, 2.5, x, 'q', \"r\"], c: ~}\nd:\n  - e: on\n    f: 3e-4\n  - [1, [2, [3]]]\n",
        "key: |\n  block\n  text\nother: >\n  folded\n'quoted key': 0x1F\n\"1\": 0o17\n",
        "x: 1.5\ny: -2E3\nz: 1_000\nw: 12:30\nv: 2024-01-01\nu: null\nt: ''\ns:\n",
        "\ufeffa:\n  b:\n    c:\n      - - - deep\n",
        "top: [ {a: 1}, {b: 2} ]\n",
        "".join(" " * i + f"k{i}:\n" for i in range(99)) + " " * 99 + "leaf: 1\n",
    ],
)
def test_fast_path_matches_full_loader(text):
    _assert_same_as_full(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "- a\n",
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "<<: {a: 1}\n",
        "a: 1\na: 2\n",
        "1: a\n",
        "[a]: b\n",
        "a: 1\n---\nb: 2\n",
        "a: [\n",
        "a: " + "9" * 5000 + "\n",
        "".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "leaf: 1\n",
    ],
)
def test_fast_path_leaves_unusual_documents_to_the_full_loader(text):
    from gitops.config import yamlio

    assert yamlio._load_common(text, "f.yaml") is None


def test_fast_path_matches_full_loader_on_generated_models(tmp_path):
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        from validate_scale import generate
    finally:
        sys.path.remove(str(bench))
    generate(tmp_path, 12)
    files = sorted((tmp_path / "models").glob("*/*.yaml"))
    assert files
    for path in files:
        _assert_same_as_full(path.read_text(encoding="utf-8"), str(path))
