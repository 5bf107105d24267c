"""The config engine: schemas, extends, overrides, defaults, semantic checks, fingerprints."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gitops import config
from gitops.config import catalog, jsonschema_tools, schema
from gitops.errors import ConfigError, UsageError
from gitops.repo.tree import FsTree

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (REPO / "models").iterdir() if p.is_dir())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copytree(REPO / "data", tmp_path / "data")  # pinned corpora of the examples
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    return tmp_path


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def resolve(root: Path, name: str, overrides=()):
    return config.resolve(name, FsTree(root), overrides)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_validates_and_has_schema_header(name: str) -> None:
    cfg, problems = resolve(REPO, name)
    assert problems == [] and cfg is not None
    for kind in config.FILE_KINDS:
        first = (REPO / "models" / name / f"{kind}.yaml").read_text().splitlines()[0]
        assert first == f"# yaml-language-server: $schema=../../schemas/{kind}.schema.json"


def test_examples_cover_what_the_issue_asks() -> None:
    cfgs = {n: config.load(n, REPO) for n in EXAMPLES}
    assert {"digits-mlp", "digits-cnn"} <= set(cfgs)
    assert any(c.data.dataset["name"] in ("wine", "iris", "breast_cancer") for c in cfgs.values())
    assert any(
        "extends:" in (REPO / "models" / n / "model.yaml").read_text() for n in EXAMPLES
    ), "one example must extend another"


@pytest.mark.parametrize("kind", schema.KINDS)
def test_schema_files_are_valid_and_generated_from_the_catalog(kind: str) -> None:
    on_disk = (REPO / "schemas" / f"{kind}.schema.json").read_text(encoding="utf-8")
    assert on_disk == schema.render(kind), "run `gitops schemas` to regenerate"
    Draft202012Validator.check_schema(schema.schema_for(kind))
    assert f"/{kind}.v{schema.SCHEMA_VERSION}." in schema.schema_for(kind)["$id"]


def _walk_properties(node, path=""):
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            yield f"{path}.{key}", sub
            yield from _walk_properties(sub, f"{path}.{key}")
        for branch in node.get("allOf", []):
            yield from _walk_properties(branch.get("then", {}), path)
        if isinstance(node.get("items"), dict):
            yield from _walk_properties(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", schema.KINDS)
def test_every_property_is_described_and_objects_are_closed(kind: str) -> None:
    doc = schema.schema_for(kind)
    for path, prop in _walk_properties(doc):
        assert "description" in prop, f"{kind}{path} has no description"
    # The unknown-key rule: every branch and object forbids extra keys.
    for _, prop in _walk_properties(doc):
        if prop.get("type") == "object" and "allOf" not in prop:
            assert prop.get("additionalProperties") is False


def test_dataclasses_and_schema_properties_stay_in_step() -> None:
    for kind, cls in (("train", config.TrainConfig), ("data", config.DataConfig), ("release", config.ReleaseConfig)):
        props = set(schema.schema_for(kind)["properties"]) - {"extends", "schema_version"}
        assert {f.name for f in dataclasses.fields(cls)} == props, kind


def test_enums_come_from_the_catalog() -> None:
    model = schema.schema_for("model")
    assert model["properties"]["architecture"]["enum"] == sorted(catalog.ARCHITECTURES)
    train = schema.schema_for("train")
    assert train["properties"]["optimizer"]["properties"]["name"]["enum"] == sorted(catalog.OPTIMIZERS)


# --- fingerprints -----------------------------------------------------------------------------------


def test_fingerprint_ignores_comments_formatting_key_order(repo: Path) -> None:
    before = resolve(repo, "digits-mlp")[0]
    path = repo / "models/digits-mlp/train.yaml"
    text = path.read_text()
    reformatted = (
        "# a new comment\n"
        + text.replace("learning_rate: 3e-3", "learning_rate: 0.003   # same value")
        .replace("batch_size: 64\nsteps: 1500", "steps: 1500\nbatch_size:    64")
    )
    assert reformatted != text
    path.write_text(reformatted)
    after = resolve(repo, "digits-mlp")[0]
    assert after.training_fingerprint == before.training_fingerprint
    assert after.release_fingerprint == before.release_fingerprint


def test_default_spelled_out_hashes_the_same(repo: Path) -> None:
    before = resolve(repo, "wine-mlp")[0]
    path = repo / "models/wine-mlp/model.yaml"
    path.write_text(path.read_text() + "dropout: 0.0\nlayer_norm: false\n")
    assert resolve(repo, "wine-mlp")[0].training_fingerprint == before.training_fingerprint


def test_value_change_changes_training_fingerprint(repo: Path) -> None:
    before = resolve(repo, "digits-mlp")[0]
    path = repo / "models/digits-mlp/train.yaml"
    path.write_text(path.read_text().replace("learning_rate: 3e-3", "learning_rate: 2e-3"))
    after = resolve(repo, "digits-mlp")[0]
    assert after.training_fingerprint != before.training_fingerprint
    assert after.release_fingerprint != before.release_fingerprint


def test_release_yaml_change_changes_only_release_fingerprint(repo: Path) -> None:
    before = resolve(repo, "digits-mlp")[0]
    path = repo / "models/digits-mlp/release.yaml"
    path.write_text(path.read_text().replace("min: 0.95", "min: 0.96"))
    after = resolve(repo, "digits-mlp")[0]
    assert after.training_fingerprint == before.training_fingerprint
    assert after.release_fingerprint != before.release_fingerprint


def test_integer_written_as_float_is_cast(repo: Path) -> None:
    before = resolve(repo, "digits-mlp")[0]
    after = resolve(repo, "digits-mlp", ["train.steps=1.5e3", "train.optimizer.learning_rate=3e-3"])[0]
    assert after.train.steps == 1500 and isinstance(after.train.steps, int)
    assert after.training_fingerprint == before.training_fingerprint


# --- extends ------------------------------------------------------------------------------------------


def test_extends_deep_merges_mappings_and_replaces_lists(repo: Path) -> None:
    child = resolve(repo, "digits-mlp-wide")[0]
    parent = resolve(repo, "digits-mlp")[0]
    assert child.model.params["hidden_sizes"] == (256, 128)
    assert child.model.params["dropout"] == parent.model.params["dropout"]
    write(repo / "models/digits-mlp-wide/train.yaml", "extends: ../digits-mlp\noptimizer:\n  learning_rate: 1e-3\n")
    child = resolve(repo, "digits-mlp-wide")[0]
    assert child.train.optimizer["learning_rate"] == 1e-3
    assert child.train.optimizer["name"] == "adamw"  # merged from the parent
    assert "extends" not in child.as_dict()["train"]


def test_parent_change_changes_child_fingerprint(repo: Path) -> None:
    before = resolve(repo, "digits-mlp-wide")[0]
    path = repo / "models/digits-mlp/data.yaml"
    path.write_text(path.read_text().replace("validation: 0.15", "validation: 0.2"))
    assert resolve(repo, "digits-mlp-wide")[0].training_fingerprint != before.training_fingerprint


def test_extends_cycle_names_the_chain(repo: Path) -> None:
    write(repo / "models/digits-mlp/model.yaml", "extends: ../digits-mlp-wide\narchitecture: mlp\n")
    cfg, problems = resolve(repo, "digits-mlp-wide")
    assert cfg is None
    text = "\n".join(map(str, problems))
    assert "extends cycle" in text and "digits-mlp/model.yaml" in text and "digits-mlp-wide/model.yaml" in text


def test_extends_missing_target(repo: Path) -> None:
    write(repo / "models/digits-mlp-wide/model.yaml", "extends: ../no-such-model\n")
    _, problems = resolve(repo, "digits-mlp-wide")
    assert any("no-such-model" in p.message and p.file.endswith("digits-mlp-wide/model.yaml") and p.line == 1 for p in problems)


def test_required_keys_checked_on_merged_result(repo: Path) -> None:
    write(repo / "models/digits-mlp-wide/train.yaml", "extends: ../digits-mlp\nsteps: 1000\n")
    cfg, problems = resolve(repo, "digits-mlp-wide")
    assert problems == [] and cfg.train.steps == 1000


# --- overrides -------------------------------------------------------------------------------------------


def test_set_parses_yaml_12_scalars(repo: Path) -> None:
    cfg = resolve(repo, "digits-mlp", ["train.optimizer.learning_rate=3e-4", "release.description=on"])[0]
    assert cfg.train.optimizer["learning_rate"] == pytest.approx(3e-4)
    assert cfg.release.description == "on"


def test_set_unknown_path_suggests(repo: Path) -> None:
    _, problems = resolve(repo, "digits-mlp", ["train.optimizer.learnin_rate=1"])
    assert any("did you mean 'learning_rate'" in p.message and p.file == "--set" for p in problems)


def test_set_bad_value_is_validated_like_files(repo: Path) -> None:
    _, problems = resolve(repo, "digits-mlp", ["train.batch_size=many"])
    assert any(p.path == "train.batch_size" and "expected an integer" in p.message for p in problems)


@pytest.mark.parametrize("bad", ["train.batch_size", "trian.batch_size=3", "train=3", "train..x=1"])
def test_set_malformed_is_usage_error(repo: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        resolve(repo, "digits-mlp", [bad])


def test_set_unparsable_value(repo: Path) -> None:
    with pytest.raises(ConfigError):
        resolve(repo, "digits-mlp", ["train.batch_size=[1, 2"])


# --- semantic checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        (["model.architecture=cnn", "model.hidden_sizes=null"], "model", None),  # schema error first
        (["train.batch_size=5000"], "train.batch_size", "larger than the training split"),
        (["train.schedule.warmup_steps=5000"], "train.schedule.warmup_steps", "shorter than the run"),
        (["train.epochs=3"], "train.steps", "exactly one of steps or epochs"),
        (["release.headline_metric=test/mae"], "release.headline_metric", "produce no metric"),
        (["train.checkpoint.best_metric=val/top5_accuracy"], None, None),
        (["train.loss=mse"], "train.loss", "does not fit a classification task"),
    ],
)
def test_semantic_checks(repo: Path, overrides, path, fragment) -> None:
    cfg, problems = resolve(repo, "digits-mlp", overrides)
    if fragment is None:
        return
    assert cfg is None
    assert any(p.path == path and fragment in p.message for p in problems), problems


def test_cnn_on_tabular_data_is_rejected(repo: Path) -> None:
    write(repo / "models/wine-mlp/model.yaml", "architecture: cnn\n")
    _, problems = resolve(repo, "wine-mlp")
    assert any(p.path == "model.architecture" and "image" in p.message for p in problems)


def test_top5_needs_more_than_five_classes(repo: Path) -> None:
    _, problems = resolve(repo, "wine-mlp", ["release.headline_metric=test/top5_accuracy"])
    assert any("needs more than 5 classes" in p.message for p in problems)


def test_all_errors_of_all_files_at_once(repo: Path) -> None:
    write(repo / "models/digits-mlp/model.yaml", "architecture: mlp\nhiden_sizes: [3]\n")
    write(repo / "models/digits-mlp/data.yaml", "dataset:\n  name: digitz\n")
    _, problems = resolve(repo, "digits-mlp")
    files = {Path(p.file).name for p in problems}
    assert files == {"model.yaml", "data.yaml"}
    unknown = next(p for p in problems if "hiden_sizes" in p.message)
    assert (unknown.line, unknown.col) == (2, 1) and "did you mean 'hidden_sizes'" in unknown.message
    enum = next(p for p in problems if "digitz" in p.message)
    assert (enum.line, enum.col) == (2, 9) and "did you mean 'digits'" in enum.message


def test_compiled_validators_are_cached_and_survive_a_corrupt_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GITOPS_CACHE", str(tmp_path))
    doc = schema.schema_for("train")
    good = {"batch_size": 8, "steps": 10, "optimizer": {"name": "sgd", "learning_rate": 0.1}}
    bad = {"batch_size": "8", "steps": 10, "optimizer": {"name": "sgd", "learning_rate": 0.1}}
    import fastjsonschema

    for attempt in range(3):
        check = jsonschema_tools.compiled_validator(doc)
        check(good)
        with pytest.raises(fastjsonschema.JsonSchemaException):
            check(bad)
        cached = list((tmp_path / "validators").glob("*.marshal"))
        assert len(cached) == 1
        if attempt == 1:
            cached[0].write_bytes(b"not a code object")  # a corrupt entry is rebuilt, never trusted
