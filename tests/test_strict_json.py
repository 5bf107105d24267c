"""Every JSON gitops writes is strict JSON (issue 14, fault 5).

A non-finite metric is written as null with its value named beside it (`gitops.jsonio`); strict parsers
(JavaScript's JSON.parse, here node itself when installed) read every file; tag messages written before
the rule, with a bare NaN, still parse; the Markdown shows such a metric as worse and a gate on it fails.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from loop_support import commit_all, edit, fake_run, git
from typer.testing import CliRunner

from gitops import api, jsonio
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.registry import report
from gitops.registry.runs import RunFolder

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
GOOD = {"test/accuracy": 0.95, "test/loss": 0.20, "val/accuracy": 0.96, "val/loss": 0.18}


def _reject(constant: str):
    raise ValueError(f"not strict JSON: bare {constant}")


def strict_parse(texts: list[str]) -> list:
    """Parse with JavaScript's JSON.parse (node) when installed, else Python without NaN/Infinity."""
    node = shutil.which("node")
    if node is None:
        return [json.loads(t, parse_constant=_reject) for t in texts]
    script = ("const fs=require('fs');const docs=JSON.parse(fs.readFileSync(0,'utf8'));"
              "process.stdout.write(JSON.stringify(docs.map((t)=>JSON.parse(t))));")
    proc = subprocess.run([node, "-e", script], input=json.dumps(texts), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr  # JSON.parse threw: not strict JSON
    return json.loads(proc.stdout)


# --- the helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "written"), [
    ({"val/loss": math.inf, "val/accuracy": 0.5},
     {"val/loss": None, "val/accuracy": 0.5, "non_finite": {"val/loss": "inf"}}),
    ({"a": -math.inf, "b": {"c": math.nan}},
     {"a": None, "b": {"c": None, "non_finite": {"c": "nan"}}, "non_finite": {"a": "-inf"}}),
    ({"curve": [[1, 0.5], [2, math.inf]], "x": [math.nan, 1.0]},
     {"curve": [[1, 0.5], [2, None]], "x": [None, 1.0], "non_finite": {"curve[1][1]": "inf", "x[0]": "nan"}}),
    ({"rows": [{"v": math.nan}]}, {"rows": [{"v": None, "non_finite": {"v": "nan"}}]}),
    ({"plain": 1.5, "none": None}, {"plain": 1.5, "none": None}),
])
def test_non_finite_numbers_are_null_and_named(value, written) -> None:
    text = jsonio.dumps(value, sort_keys=True)
    assert strict_parse([text]) == [written]
    back = jsonio.loads(text)
    assert json.dumps(back, sort_keys=True) == json.dumps(value, sort_keys=True)  # NaN == NaN as text
    assert jsonio.dumps(jsonio.restore(json.loads(text)), sort_keys=True) == text  # idempotent


def test_old_documents_with_bare_nan_still_read() -> None:
    assert math.isnan(jsonio.loads('{"val/loss": NaN, "a": Infinity}')["val/loss"])


def test_every_json_writer_is_strict() -> None:
    """The kind, not the instances: any `json.dump(s)` in the package either goes through gitops.jsonio
    or says allow_nan=False (then it raises rather than writing bare NaN)."""
    offenders = []
    for path in sorted((REPO / "gitops").rglob("*.py")):
        if path.name == "jsonio.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "json"):
                strict = any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and k.value.value is False
                             for k in node.keywords)
                if not strict:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], "use gitops.jsonio.dumps: " + ", ".join(offenders)


# --- run folders, the report, gates, tag messages -----------------------------------------------------


@pytest.fixture
def released(example_repo, monkeypatch):
    """wine-mlp v1.0.0 released from a fake run; then its learning rate changed (a PR)."""
    monkeypatch.chdir(example_repo)
    fake_run(example_repo, "wine-mlp", GOOD)
    api.release(example_repo, LocalBackend(example_repo), "wine-mlp")
    edit(example_repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.02")
    commit_all(example_repo, "lr")
    return example_repo


def test_non_finite_metrics_end_to_end(released: Path, tmp_path: Path) -> None:
    run = fake_run(released, "wine-mlp", GOOD)
    folder = RunFolder(run)
    folder.write_metrics({"test/accuracy": math.nan, "test/loss": 0.2, "val/accuracy": 0.96, "val/loss": math.inf})
    folder.clear_history()
    folder.append_history([{"step": 10, "split": "train", "loss": 1.0}, {"step": 20, "split": "val", "loss": math.inf}])
    metrics_text = (run / "metrics.json").read_text()
    history_lines = (run / "history.jsonl").read_text().splitlines()
    parsed = strict_parse([metrics_text, *history_lines])
    assert parsed[0]["val/loss"] is None and parsed[0]["non_finite"] == {"test/accuracy": "nan", "val/loss": "inf"}
    assert parsed[2] == {"step": 20, "split": "val", "loss": None, "non_finite": {"loss": "inf"}}
    assert math.isinf(folder.metrics["val/loss"]) and math.isinf(folder.history("val")[0]["loss"])

    out = tmp_path / "report.json"
    result = runner.invoke(app, ["report", str(run), "--json-out", str(out), "--out", str(tmp_path / "report.md")])
    assert result.exit_code == 1, result.output  # the gate on test/accuracy (min 0.85) fails on NaN
    data = strict_parse([out.read_text()])[0]
    rows = {r["metric"]: r for r in data["models"][0]["metrics"]}
    assert rows["val/loss"]["value"] is None and rows["val/loss"]["non_finite"] == {"value": "inf"}
    assert rows["val/loss"]["status"] == "worse" and rows["test/accuracy"]["status"] == "failed"
    gates = [g for g in data["models"][0]["gates"] if g["metric"] == "test/accuracy"]
    assert gates and all(g["status"] == "fail" and "nan" in g["note"] for g in gates)
    text = (tmp_path / "report.md").read_text()
    assert "| val/loss (↓ better) | 0.18 | inf | — | — | ⚠️ |" in text
    assert "| test/accuracy (↑ better) | 0.95 | nan | — | — | ❌ |" in text
    # the comment step accepts the strict report JSON as data
    report.validate_report_json(out.read_text(), head_sha=None, pr=1)


def test_tag_message_with_bare_nan_still_parses(released: Path, tmp_path: Path) -> None:
    backend = LocalBackend(released)
    message = git(released, "tag", "-l", "--format=%(contents)", "wine-mlp@v1.0.0")
    assert '"val/loss": 0.18' in message
    old = message.replace('"val/loss": 0.18', '"val/loss": NaN')  # what a release before the fix wrote
    git(released, "tag", "-a", "wine-mlp@v1.0.1", "-m", old, git(released, "rev-list", "-n1", "wine-mlp@v1.0.0"))
    result = runner.invoke(app, ["history", "wine-mlp", "--json"])
    assert result.exit_code == 0, result.output
    doc = strict_parse([result.output])[0]
    latest = next(v for v in doc["versions"] if v["version"] == "v1.0.1")
    assert latest["metrics"]["val/loss"] is None and latest["metrics"]["non_finite"] == {"val/loss": "nan"}
    # as a report baseline: a finite value against a NaN baseline is better, never a failed comparison
    run = fake_run(released, "wine-mlp", GOOD)
    built = report.build(released, [run], backend)
    row = next(r for r in built.models[0].metrics if r["metric"] == "val/loss")
    assert built.models[0].baseline.version == "v1.0.1" and math.isnan(row["baseline"]) and row["status"] == "better"
    assert strict_parse([jsonio.dumps(report.as_json(built))])
    # the registry site builds, with strict JSON embedded in its pages
    result = runner.invoke(app, ["site", "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    pages = [p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html")]
    blocks = [m for page in pages for m in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)]
    assert blocks and strict_parse(blocks)
