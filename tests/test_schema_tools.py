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

from gitops.config import schema

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
def node_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ajv (with ajv-formats and js-yaml, as ajv-cli ships them) and yaml-language-server, from npm,
    in a temporary folder; the folder holding node_modules/."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node/npm are not installed: ajv and yaml-language-server cannot be installed")
    prefix = tmp_path_factory.mktemp("node-tools")
    env = {**os.environ, "npm_config_cache": str(prefix / ".npm"), "npm_config_update_notifier": "false"}
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                               "ajv-cli@5", "ajv-formats@3", "yaml-language-server@1"],
                              capture_output=True, text=True, timeout=240, env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install timed out (no npm registry reachable)")
    if proc.returncode != 0 or not (prefix / "node_modules" / "ajv" / "dist" / "2020.js").is_file():
        pytest.skip(f"ajv-cli could not be installed from npm: {proc.stderr.strip()[-300:]}")
    return prefix


@pytest.fixture(scope="session")
def ajv(node_tools: Path) -> list[str]:
    """Node running ajv (ajv-cli's validator) over many schemas and files in one process."""
    script = node_tools / "check.js"
    script.write_text(AJV_SCRIPT, encoding="utf-8")
    return [shutil.which("node") or "node", str(script)]


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


# --- yaml-language-server, the way VS Code's YAML extension runs it -----------------------------------


def _lsp_diagnostics(server: Path, files: list[Path], timeout: float = 60.0) -> dict[Path, list[str]]:
    """Open `files` in a yaml-language-server over stdio (LSP) and collect the diagnostics it publishes.

    The schema of each file comes from its `# yaml-language-server: $schema=...` line, as in an editor.
    """
    import json
    import select
    import time

    proc = subprocess.Popen([shutil.which("node") or "node", str(server), "--stdio"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buffer = b""
    deadline = time.monotonic() + timeout

    def send(message: dict) -> None:
        body = json.dumps(message).encode()
        proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        proc.stdin.flush()

    def receive() -> dict | None:
        nonlocal buffer
        while True:
            if b"\r\n\r\n" in buffer:
                head, rest = buffer.split(b"\r\n\r\n", 1)
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                if len(rest) >= length:
                    buffer = rest[length:]
                    return json.loads(rest[:length])
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                return None
            buffer += chunk

    settings = {"validate": True, "schemaStore": {"enable": False}, "format": {"enable": False}}
    found: dict[Path, list[str]] = {}
    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"processId": None, "rootUri": None, "capabilities": {"workspace": {"configuration": True}}}})
        while (message := receive()) is not None and message.get("id") != 1:
            pass
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        send({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": {"settings": {"yaml": settings}}})
        uris = {path.resolve().as_uri(): path for path in files}
        for uri, path in uris.items():
            send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text(encoding="utf-8")}}})
        while len(found) < len(files) and (message := receive()) is not None:
            if message.get("method") == "workspace/configuration":
                send({"jsonrpc": "2.0", "id": message["id"], "result": [settings] * len(message["params"]["items"])})
            elif "id" in message and "method" in message:
                send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif message.get("method") == "textDocument/publishDiagnostics":
                path = uris.get(message["params"]["uri"])
                if path is not None:
                    found[path] = [d["message"] for d in message["params"]["diagnostics"]]
    finally:
        proc.kill()
        proc.wait()
    assert len(found) == len(files), "yaml-language-server did not answer for every file"
    return found


@pytest.mark.slow
def test_yaml_language_server_accepts_every_shipped_file(node_tools: Path, tmp_path: Path) -> None:
    server = node_tools / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
    if not server.is_file():
        pytest.skip("yaml-language-server could not be installed from npm")
    shipped = [Path(p) for kind in schema.KINDS for p in SHIPPED[kind]]
    written = []
    for i, (kind, text, *_) in enumerate([*((k, t) for k, t in GOOD), *BAD]):
        path = tmp_path / f"case{i}" / f"{kind}.yaml"
        path.parent.mkdir()
        header = f"# yaml-language-server: $schema={(REPO / 'schemas' / f'{kind}.schema.json').as_uri()}\n"
        path.write_text(header + text, encoding="utf-8")
        written.append(path)
    found = _lsp_diagnostics(server, shipped + written)
    assert {str(p): found[p] for p in shipped if found[p]} == {}
    for path in written[: len(GOOD)]:
        assert found[path] == [], (path.read_text(), found[path])
    for path in written[len(GOOD):]:
        assert found[path], path.read_text()  # the tool does check: wrong files are flagged
