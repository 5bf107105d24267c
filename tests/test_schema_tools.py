"""Third-party schema tools read our model files as editors do: check-jsonschema and ajv.

Files that use `extends:` may leave out what their parent gives; the schemas in schemas/ must accept
them (and still flag wrong types, unknown keys and keys missing from a file that extends nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitops import schema

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {kind: sorted(str(p) for p in (REPO / "models").glob(f"*/{kind}.yaml")) for kind in schema.KINDS}

# Files written to test the other direction: (kind, text, what a tool must say).
BAD = [
    ("train", "extends: ../digits-mlp\nbatch_size: many\n", "batch_size"),
    ("train", "extends: ../digits-mlp\noptimizer: {name: adamw, momentum: 0.9}\n", "momentum"),
    ("model", "architecture: mlp\nwidth: 3\n", "width"),
    ("train", "steps: 10\noptimizer: {name: sgd, learning_rate: 0.1}\n", "batch_size"),
    ("data", "extends: ../digits-mlp\ndataset: {name: nope}\n", "name"),
]
GOOD = [
    ("train", "extends: ../digits-mlp\noptimizer: {learning_rate: 0.1}\nschedule: {warmup_steps: 3}\n"),
    ("train", "extends: ../digits-mlp\noptimizer: {name: sgd, momentum: 0.9}\n"),
    ("model", "extends: ../digits-mlp\nhidden_sizes: [8]\n"),
    ("data", "extends: ../digits-mlp\ndataset: {name: wine}\n"),
]


def _check_jsonschema() -> str:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.is_file():
        pytest.fail("check-jsonschema is in the test extra; install it: pip install -e '.[test]'")
    return str(exe)


def _write_cases(tmp_path: Path) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    good: dict[str, list[Path]] = {k: [] for k in schema.KINDS}
    bad: list[tuple[Path, str]] = []
    for i, (kind, text) in enumerate(GOOD):
        path = tmp_path / f"good{i}" / f"{kind}.yaml"
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        good[kind].append(path)
    for i, (kind, text, word) in enumerate(BAD):
        path = tmp_path / f"bad{i}" / f"{kind}.yaml"
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        bad.append((path, word))
    return good, bad


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """kind -> (files that must pass: shipped + GOOD, {file that must fail: a word its error names})."""
    good, bad = _write_cases(tmp_path)
    out = {kind: (SHIPPED[kind] + [str(p) for p in good[kind]], {}) for kind in schema.KINDS}
    for path, word in bad:
        out[path.stem][1][str(path)] = word
    return out


@pytest.mark.slow
def test_check_jsonschema_accepts_every_shipped_file_and_flags_wrong_ones(tmp_path: Path) -> None:
    exe = _check_jsonschema()
    for kind, (passing, failing) in _cases(tmp_path).items():
        proc = subprocess.run([exe, "--schemafile", str(REPO / "schemas" / f"{kind}.schema.json"), *passing, *failing],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == (1 if failing else 0), proc.stdout + proc.stderr
        flagged = {line.split("::", 1)[0].strip(): line for line in proc.stdout.splitlines() if "::" in line}
        assert set(flagged) == set(failing), proc.stdout  # every shipped file is clean
        for path, word in failing.items():
            assert word in flagged[path], (Path(path).read_text(), flagged[path])


AJV_SCRIPT = r"""
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");
const yaml = require("js-yaml");
const warnings = [];
const ajv = new Ajv2020({allErrors: true, logger: {log() {}, warn: (m) => warnings.push(String(m)),
                                                   error: (m) => warnings.push(String(m))}});
addFormats(ajv);
const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = {warnings, results: {}};
for (const [schemaPath, files] of cases) {
  const validate = ajv.compile(JSON.parse(fs.readFileSync(schemaPath, "utf8")));
  for (const file of files) {
    const ok = validate(yaml.load(fs.readFileSync(file, "utf8")));
    out.results[file] = ok ? null : JSON.stringify(validate.errors);
  }
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="session")
def ajv(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Node running ajv (ajv-cli's validator, with ajv-formats and js-yaml), installed from npm."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node/npm are not installed: ajv cannot be installed")
    prefix = tmp_path_factory.mktemp("ajv")
    env = {**os.environ, "npm_config_cache": str(prefix / ".npm"), "npm_config_update_notifier": "false"}
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                               "ajv-cli@5", "ajv-formats@3"], capture_output=True, text=True, timeout=180, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install ajv-cli timed out (no npm registry reachable)")
    if proc.returncode != 0 or not (prefix / "node_modules" / "ajv" / "dist" / "2020.js").is_file():
        pytest.skip(f"ajv-cli could not be installed from npm: {proc.stderr.strip()[-300:]}")
    script = prefix / "check.js"
    script.write_text(AJV_SCRIPT, encoding="utf-8")
    return [node, str(script)]


@pytest.mark.slow
def test_ajv_accepts_every_shipped_file_strictly(ajv: list[str], tmp_path: Path) -> None:
    import json

    cases = _cases(tmp_path)
    request = tmp_path / "cases.json"
    request.write_text(json.dumps([[str(REPO / "schemas" / f"{kind}.schema.json"), [*passing, *failing]]
                                   for kind, (passing, failing) in cases.items()]), encoding="utf-8")
    proc = subprocess.run([*ajv, str(request)], capture_output=True, text=True, check=True,
                          env={**os.environ, "NODE_PATH": str(Path(ajv[1]).parent / "node_modules")})
    out = json.loads(proc.stdout)
    assert out["warnings"] == []  # clean under ajv's default strict mode too
    for passing, failing in cases.values():
        for path in passing:
            assert out["results"][path] is None, (path, out["results"][path])
        for path, word in failing.items():
            assert out["results"][path] and word in out["results"][path], (path, out["results"][path])


def test_file_schemas_require_keys_only_without_extends() -> None:
    from jsonschema import Draft202012Validator

    for kind in ("model", "train", "data"):
        validator = Draft202012Validator(schema.file_schema(kind))
        assert not list(validator.iter_errors({"extends": "../digits-mlp"}))
        missing = {e.message for e in validator.iter_errors({})}
        assert missing and all("required" in m for m in missing), missing
    # the schema gitops validates merged documents with still requires everything
    assert schema.schema_for("train")["required"] == ["optimizer", "batch_size"]
