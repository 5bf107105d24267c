"""Language models end to end on real text: a tiny variant of models/stdlib-lm (the Python standard
library's source) trains in seconds, reports perplexity and bits per byte, resumes bit-identically,
generates from the CLI, Python and the server (KV cache equal to full recomputation), releases with its
tokenizer, and bad inputs get clear errors."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, git
from typer.testing import CliRunner

from gitops import config
from gitops.cli import app

TINY = ["train.steps=60", "data.dataset.sequence_length=32", "model.embed_dim=32", "model.num_layers=1",
        "model.mlp_dim=64", "train.eval_every=20", "train.log_every=20", "train.checkpoint.every_steps=20",
        "train.schedule.warmup_steps=10", "model.attention=plain"]


def sets(*extra: str) -> list[str]:
    return [a for s in (*TINY, *extra) for a in ("--set", s)]


def _value(text: str):
    from gitops.config.yamlio import parse_scalar

    return parse_scalar(text)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def lm_repo(tmp_path_factory) -> Path:
    """A git repository with stdlib-lm (and its corpus) whose tiny variant is committed as the model."""
    repo = tmp_path_factory.mktemp("lm") / "repo"
    (repo / "models").mkdir(parents=True)
    shutil.copytree(REPO / "models/stdlib-lm", repo / "models/stdlib-lm")
    shutil.copytree(REPO / "models/wine-mlp", repo / "models/wine-mlp")
    shutil.copytree(REPO / "schemas", repo / "schemas")
    shutil.copytree(REPO / "data/stdlib-lm", repo / "data/stdlib-lm")
    from gitops.learn.sweep_run import _set_keys

    for kind in ("model", "train", "data"):  # the tiny variant is the committed model: releases use it as is
        items = [(tuple(s.split("=")[0].split(".")[1:]), _value(s.split("=", 1)[1]))
                 for s in TINY if s.startswith(kind + ".")]
        _set_keys(repo / "models/stdlib-lm" / f"{kind}.yaml", kind, items)
    release = repo / "models/stdlib-lm/release.yaml"  # a tiny model's floor
    release.write_text(release.read_text().replace("max: 3.0", "max: 8.0"), encoding="utf-8")
    (repo / ".gitignore").write_text("runs/\n.gitops/\n", encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "models")
    return repo


@pytest.fixture(scope="module")
def tiny_run(lm_repo: Path) -> Path:
    import os

    old = os.getcwd()
    os.chdir(lm_repo)
    try:
        result = invoke("train", "stdlib-lm", *sets())
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(old)
    cfg = config.load("stdlib-lm", lm_repo, TINY)
    return lm_repo / "runs/stdlib-lm" / cfg.short_fingerprint


def test_shipped_corpus_matches_its_pin_and_licence() -> None:
    from gitops.checksums import sha256_file

    cfg = config.load("stdlib-lm", REPO)
    corpus = REPO / cfg.data.dataset["path"]
    assert sha256_file(corpus) == cfg.data.dataset["sha256"]
    assert (REPO / "data/stdlib-lm/SHA256SUMS").read_text().split()[0] == cfg.data.dataset["sha256"]
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in (REPO / "data/stdlib-lm/LICENSE").read_text()
    docs = [json.loads(line) for line in gzip.decompress(corpus.read_bytes()).decode().splitlines()]
    assert len(docs) > 50 and all(d["path"].startswith("Lib/") for d in docs)
    assert cfg.task == "language_modeling" and cfg.headline_metric() == "test/bits_per_byte"


def test_tiny_lm_learns_and_reports_perplexity_and_bits_per_byte(tiny_run: Path) -> None:
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert math.isclose(metrics[f"{split}/perplexity"], math.exp(metrics[f"{split}/loss"]), rel_tol=1e-5)
        # bytes: one token per byte, apart from a few end-of-document tokens
        assert 0.98 < metrics[f"{split}/bits_per_byte"] / (metrics[f"{split}/loss"] / math.log(2)) < 1.02
        assert 0.0 < metrics[f"{split}/accuracy"] < 1.0
    rows = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    val = [r["perplexity"] for r in rows if r["split"] == "val"]
    assert len(val) == 3 and val[-1] < val[0] < 257  # falling, and better than uniform over 257 tokens
    from gitops.registry.gates import higher_is_better

    assert not higher_is_better("val/perplexity") and not higher_is_better("test/bits_per_byte")


def test_ctrl_c_then_resume_through_two_grain_workers_is_bit_identical(lm_repo: Path, tiny_run: Path,
                                                                        tmp_path: Path) -> None:
    """`gitops train` (a process, with 2 Grain worker processes) gets Ctrl-C as its first checkpoint is queued
    (step 20 of 60, mid-epoch): exit 130 with a checkpoint holding the input iterator's state; `--resume`
    ends with the same metrics and parameters, bit for bit, as the uninterrupted run without workers."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import assert_same_run
    from test_interrupt import REARMED

    from gitops import killpoints

    argv = ["train", "stdlib-lm", "--set", "data.dataset.workers=2", "--out", str(tmp_path / "runs")]
    command = [sys.executable, "-m", "gitops.cli"]
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background: re-arm Ctrl-C in the child
        command = [sys.executable, "-c", REARMED]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "1", "PYTHONPATH": str(REPO),
           killpoints.ENV: "train.checkpoint_queued:INT"}
    stopped = subprocess.run([*command, *argv], cwd=lm_repo, env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted at step 20" in stopped.stderr and "Traceback" not in stopped.stderr, stopped.stderr
    del env[killpoints.ENV]
    resumed = subprocess.run([*command, *argv, "--resume"], cwd=lm_repo, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 20" in resumed.stderr, resumed.stderr
    assert_same_run(tmp_path / "runs/stdlib-lm" / tiny_run.name, tiny_run)


def test_generation_cache_equals_recomputation_and_is_reproducible(tiny_run: Path) -> None:
    import gitops
    from gitops.learn.generate import Sampling, generate_ids, stepper

    loaded = gitops.load(str(tiny_run))
    prompts = [list(b"def f("), list(b"import os\nimport sys\n")]
    greedy = Sampling(max_new_tokens=24, temperature=0.0)
    cached = generate_ids(loaded.model, prompts, greedy)
    assert cached == generate_ids(loaded.model, prompts, greedy, use_cache=False)
    sampled = Sampling(max_new_tokens=16, temperature=0.9, top_k=8, seed=3)
    both = generate_ids(loaded.model, prompts, sampled, seeds=[3, 4])
    assert both[1] == generate_ids(loaded.model, prompts[1:], sampled, seeds=[4])[0]  # batching changes nothing
    assert both == generate_ids(loaded.model, prompts, sampled, seeds=[3, 4])
    assert list(stepper(loaded.model, prompts[0], sampled)) == both[0]  # streaming makes the same tokens
    text = loaded.generate("class ", max_new_tokens=10, temperature=0.0)
    assert isinstance(text, str) and len(text.encode()) <= 10


def test_predict_prompt_cli_and_its_errors(tiny_run: Path, lm_repo: Path, monkeypatch, trained_examples) -> None:
    monkeypatch.chdir(lm_repo)
    result = invoke("predict", str(tiny_run), "--prompt", "def main(", "--max-new-tokens", "12", "--temperature", "0")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["generations"][0]["prompt"] == "def main(" and doc["generations"][0]["tokens"] <= 12
    too_long = invoke("predict", str(tiny_run), "--prompt", "x" * 40)
    assert too_long.exit_code == 2 and "longer than the model's context (32 tokens)" in too_long.output
    zero = invoke("predict", str(tiny_run), "--prompt", "x", "--max-new-tokens", "0")
    assert zero.exit_code == 2 and "max_new_tokens must be between 1" in zero.output
    neither = invoke("predict", str(tiny_run))
    assert neither.exit_code == 2 and "exactly one of --input" in neither.output
    not_lm = invoke("predict", str(trained_examples["wine-mlp"]), "--prompt", "hi")
    assert not_lm.exit_code == 2 and "needs a language model" in not_lm.output
    for out in (too_long, zero, neither, not_lm):
        assert "Traceback" not in out.output


def test_release_carries_the_tokenizer_and_generates_after_pull(lm_repo: Path, tiny_run: Path, monkeypatch) -> None:
    import gitops

    monkeypatch.chdir(lm_repo)
    released = invoke("release", "stdlib-lm", "--run", str(tiny_run))
    assert released.exit_code == 0, released.output
    pulled = invoke("pull", "stdlib-lm", "--to", "pulled")
    assert pulled.exit_code == 0, pulled.output
    prep = json.loads((lm_repo / "pulled/preprocessing.json").read_text())
    assert prep["task"] == "language_modeling" and prep["tokenizer"] == {"name": "byte"}
    a = gitops.load(str(lm_repo / "pulled")).generate("def ", max_new_tokens=8, temperature=0.0)
    assert a == gitops.load(str(tiny_run)).generate("def ", max_new_tokens=8, temperature=0.0)


def test_server_generate_batched_and_streamed(tiny_run: Path) -> None:
    import httpx
    from test_serve import live, wait_for

    import gitops
    from gitops.serve.server import build

    expected = gitops.load(str(tiny_run)).generate(["def a(", "for i in "], max_new_tokens=12, temperature=0.0)
    server = build(str(tiny_run), max_batch_size=1, max_wait_ms=1)
    with live(server) as url, httpx.Client(base_url=url, timeout=60) as http:
        wait_for(lambda: http.get("/readyz").status_code == 200, what="warm-up")
        r = http.post("/v1/models/stdlib-lm:generate",
                      json={"prompts": ["def a(", "for i in "], "max_new_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        assert [g["text"] for g in r.json()["generations"]] == expected
        assert r.headers["x-model-version"].startswith("run-")
        with http.stream("POST", "/v1/models/stdlib-lm:generate",
                         json={"prompt": "def a(", "max_new_tokens": 12, "temperature": 0, "stream": True}) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1]["done"] is True
        assert "".join(e.get("text", "") for e in events) == expected[0]
        bad = http.post("/v1/models/stdlib-lm:generate", json={"prompt": "x" * 40})
        assert bad.status_code == 400 and "longer than the model's context" in bad.json()["error"]
        bad = http.post("/v1/models/stdlib-lm:generate", json={"prompt": "x", "max_new_tokens": 0})
        assert bad.status_code == 400 and "max_new_tokens" in bad.json()["error"]


def test_bad_text_and_tokenizer_inputs_get_clear_errors(lm_repo: Path, monkeypatch, tmp_path: Path) -> None:
    from gitops.checksums import sha256_file

    monkeypatch.chdir(lm_repo)
    bad = lm_repo / "data/bad.txt"
    bad.write_bytes(b"def f():\n    return 1\n" * 20 + b"\xff\xfe oops")
    pin = sha256_file(bad)
    args = sets("data.dataset.path=data/bad.txt", f"data.dataset.sha256={pin}")
    result = invoke("train", "stdlib-lm", *args, "--out", str(tmp_path / "runs"))
    assert result.exit_code == 1 and "not UTF-8 at byte offset 440" in result.output, result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))
    from gitops.learn import text_data

    params = {"name": "text", "path": "data/bad.txt", "sha256": pin, "sequence_length": 8, "encoding_errors": "replace"}
    packed = text_data.load({"dataset": params, "splits": {"validation": 0.1, "test": 0.1, "seed": 0}}, lm_repo)
    test_labels = [packed.source[int(i)][1] for i in packed.test.indexes]
    assert len(packed.train) > 0 and 0xEF in np.concatenate(test_labels)  # U+FFFD's first UTF-8 byte

    tok = invoke("data", "tokenizer", "data/stdlib-lm/corpus.jsonl.gz", "--out", "data/tok.json", "--vocab-size", "300")
    assert tok.exit_code == 0, tok.output
    line = tok.stdout.strip()
    digest = line.split("sha256: ")[1].rstrip("}")
    ok = sets("data.dataset.tokenizer={name: file, path: data/tok.json, sha256: '" + digest + "'}", "train.steps=20")
    trained = invoke("train", "stdlib-lm", *ok, "--out", str(tmp_path / "bpe"))
    assert trained.exit_code == 0, trained.output
    run = next((tmp_path / "bpe/stdlib-lm").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/bits_per_byte"] < metrics["test/loss"] / math.log(2)  # several bytes per token
    import gitops

    assert isinstance(gitops.load(str(run)).generate("import ", max_new_tokens=5, temperature=0), str)
    wrong = sets("data.dataset.tokenizer={name: file, path: data/tok.json, sha256: '" + "0" * 64 + "'}")
    mismatch = invoke("train", "stdlib-lm", *wrong, "--out", str(tmp_path / "bpe2"))
    assert mismatch.exit_code == 1 and "tokenizer file data/tok.json: SHA-256 mismatch" in mismatch.output
