"""Plugins through entry points: the example package installed for real, validated without jax, trained.

The example (examples/gitops-plugin-example) is installed with pip into a temporary `--target` folder
(offline: no index, no dependencies, no build isolation; hatchling builds it), which subprocesses get
on PYTHONPATH. importlib.metadata finds its entry points there exactly as in site-packages, and the
shared venv stays untouched, so no other test sees the plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from conftest import REPO, git

from gitops.config import plugins
from gitops.config.plugins import Plugin, PluginError
from gitops.errors import GitopsError

GITOPS = str(Path(sys.executable).with_name("gitops"))
EXAMPLE = REPO / "examples" / "gitops-plugin-example"

MODEL = {
    "model.yaml": "architecture: tiny-linear\npairwise: true\n",
    "train.yaml": "seed: 0\nbatch_size: 32\nsteps: 200\noptimizer:\n  name: adam\n  learning_rate: 5e-2\n"
                  "eval_every: 100\nlog_every: 50\ncheckpoint:\n  every_steps: 100\n  best_metric: val/brier\n",
    "data.yaml": "dataset:\n  name: xor-blobs\n  n_samples: 400\n  noise: 0.3\naugmentation:\n"
                 "  - name: feature-dropout\n    probability: 0.05\n",
    "release.yaml": "description: XOR with the example plugin.\ngates:\n  - metric: test/brier\n    max: 0.1\n"
                    "  - metric: test/accuracy\n    min: 0.9\n",
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin installed with pip into a fresh folder (put on PYTHONPATH by `run`)."""
    site = tmp_path_factory.mktemp("plugin-site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(EXAMPLE)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert list(site.glob("gitops_plugin_example-*.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def plugin_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    folder = repo / "models" / "xor-tiny"
    folder.mkdir(parents=True)
    for file, text in MODEL.items():
        kind = file.removesuffix(".yaml")
        (folder / file).write_text(f"# yaml-language-server: $schema=../../schemas/{kind}.schema.json\n{text}")
    git(repo.parent, "init", "-q", str(repo))
    return repo


def run(cwd: Path, *args: str, sites: tuple[Path, ...] = (), python: str | None = None) -> subprocess.CompletedProcess:
    # the checkout under test first (not whatever gitops the venv's editable install points at)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *(str(s) for s in sites)]), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-c", python] if python else [GITOPS, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_plugin_its_names_are_unknown(plugin_repo) -> None:
    done = run(plugin_repo, "validate")
    assert done.returncode == 1
    assert "'tiny-linear' is not one of" in done.stdout + done.stderr


def test_validate_show_and_schemas_see_the_plugin_without_importing_jax(plugin_site, plugin_repo) -> None:
    done = run(plugin_repo, "validate", sites=(plugin_site,))
    assert done.returncode == 0, done.stdout + done.stderr
    probe = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from gitops import config
        from gitops.config import catalog, schema, validation
        from gitops.registry import gates
        assert validation.validate(Path("."), ["xor-tiny"]).ok
        cfg = config.load("xor-tiny", Path("."))
        print(json.dumps({"jax": "jax" in sys.modules, "flax": "flax" in sys.modules,
                          "enum": schema.schema_for("model")["properties"]["architecture"]["enum"],
                          "brier_higher": gates.direction("test/brier"),
                          "data_package": catalog.DATASETS["xor-blobs"].info.get("package"),
                          "params": cfg.as_dict()["data"]["dataset"]}))
    """)
    done = run(plugin_repo, sites=(plugin_site,), python=probe)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["jax"] is False and seen["flax"] is False
    assert "tiny-linear" in seen["enum"] and "mlp" in seen["enum"]
    assert seen["brier_higher"] is False and seen["data_package"] == "gitops-plugin-example"
    assert seen["params"] == {"name": "xor-blobs", "n_samples": 400, "noise": 0.3}  # defaults came from the plugin

    (plugin_repo / "models/xor-tiny/model.yaml").write_text("architecture: tiny-linear\npairwize: true\n")
    bad = run(plugin_repo, "validate", sites=(plugin_site,))
    assert bad.returncode == 1 and "unknown key 'pairwize' (did you mean 'pairwise'?)" in bad.stdout + bad.stderr

    (plugin_repo / "schemas").mkdir()
    assert run(plugin_repo, "schemas", sites=(plugin_site,)).returncode == 0
    written = json.loads((plugin_repo / "schemas/data.schema.json").read_text())
    assert "xor-blobs" in written["properties"]["dataset"]["properties"]["name"]["enum"]


@pytest.mark.slow
def test_trains_with_the_plugin_architecture_dataset_augmentation_and_metric(plugin_site, plugin_repo) -> None:
    done = run(plugin_repo, "train", "xor-tiny", "--out", "runs", sites=(plugin_site,))
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads(next((plugin_repo / "runs/xor-tiny").glob("*/metrics.json")).read_text())
    assert metrics["test/accuracy"] >= 0.9 and metrics["test/brier"] < 0.1
    probe = textwrap.dedent("""
        import glob, numpy as np, gitops
        model = gitops.load(glob.glob("runs/xor-tiny/*")[0])
        p = model.predict(np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32))
        print(p.argmax(-1).tolist())
    """)
    loaded = run(plugin_repo, sites=(plugin_site,), python=probe)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == "[0, 1, 1, 0]"


def _fake_distribution(site: Path, module: str, body: str, entry_points: str) -> Path:
    """A minimal installed distribution: a module plus dist-info with METADATA and entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(body))
    info = site / f"{module.replace('_', '-')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


def test_a_plugin_taking_a_built_in_name_is_an_error_naming_both(plugin_repo, tmp_path) -> None:
    site = _fake_distribution(
        tmp_path / "clash", "clash_plugin",
        """
        from gitops.config.plugins import Plugin
        MLP = Plugin(name="mlp", description="Another mlp.", build="clash_plugin:nothing")
        """,
        "[gitops.architectures]\nmlp = clash_plugin:MLP\n",
    )
    done = run(plugin_repo, "validate", sites=(site,))
    assert done.returncode == 1
    message = done.stdout + done.stderr
    assert "plugin architecture 'mlp'" in message and "clash-plugin 1.0" in message
    assert "collides with the built-in architecture 'mlp'" in message and "Traceback" not in message


def test_two_plugins_with_one_name_are_an_error_naming_both(plugin_site, plugin_repo, tmp_path) -> None:
    site = _fake_distribution(
        tmp_path / "twin", "twin_plugin",
        """
        TWIN = {"name": "xor-blobs", "description": "Same name.", "build": "twin_plugin:nothing"}
        """,
        "[gitops.datasets]\nxor-blobs = twin_plugin:TWIN\n",
    )
    done = run(plugin_repo, "validate", sites=(plugin_site, site))
    message = done.stdout + done.stderr
    assert done.returncode == 1 and "registered twice" in message
    assert "gitops-plugin-example 0.1.0" in message and "twin-plugin 1.0" in message


def test_a_spec_module_importing_jax_is_refused(plugin_repo, tmp_path) -> None:
    site = _fake_distribution(
        tmp_path / "heavy", "heavy_plugin",
        """
        import jax  # noqa: F401  (what a spec module must not do)
        SPEC = {"name": "heavy", "description": "Imports jax.", "build": "heavy_plugin:nothing"}
        """,
        "[gitops.architectures]\nheavy = heavy_plugin:SPEC\n",
    )
    done = run(plugin_repo, "validate", sites=(site,))
    assert done.returncode == 1 and "imports jax when its metadata loads" in done.stdout + done.stderr


# --- the checks on their own (no installation) --------------------------------------------------------


def _ep(name: str, value: str, group: str = "gitops.architectures") -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


@pytest.mark.parametrize(
    "spec,fragment",
    [
        (Plugin("Bad Name", "x", "m:a"), "must match"),
        (Plugin("ok", "", "m:a"), "description is required"),
        (Plugin("ok", "x", "no-colon"), "build must be"),
        (Plugin("ok", "x", "m:a", params={"k": {"type": "integer"}}), "needs a description"),
        (Plugin("ok", "x", "m:a", params={"k": {"type": "wrong", "description": "d"}}), "not valid JSON Schema"),
        (Plugin("ok", "x", "m:a", required=("missing",)), "is not in params"),
        (Plugin("ok", "x", "m:a", params={"name": {"type": "string", "description": "d"}}), "reserved"),
    ],
)
def test_bad_metadata_is_refused(spec: Plugin, fragment: str) -> None:
    with pytest.raises(PluginError, match=fragment):
        plugins.check("architecture", spec, "test")


def test_metrics_need_a_direction_and_tasks() -> None:
    with pytest.raises(PluginError, match="higher_is_better"):
        plugins.check("metric", Plugin("m", "x", "m:a", tasks=("classification",)), "test")
    with pytest.raises(PluginError, match="tasks"):
        plugins.check("metric", Plugin("m", "x", "m:a", higher_is_better=True), "test")
    with pytest.raises(PluginError, match="must match"):
        plugins.check("metric", Plugin("has-dash", "x", "m:a", higher_is_better=True, tasks=("regression",)), "test")


def test_collect_reports_unloadable_entry_points() -> None:
    with pytest.raises(PluginError, match="does not load: ModuleNotFoundError"):
        plugins.collect({"architecture": [_ep("x", "no_such_module_for_gitops:X")]}, {})


def test_built_in_catalog_is_unchanged_without_plugins() -> None:
    from gitops.config import catalog

    assert plugins.discovered() == {kind: {} for kind in plugins.GROUPS}
    assert sorted(catalog.ARCHITECTURES) == sorted(catalog.ARCHITECTURES.builtin)
    assert {"cnn", "mlp", "resnet", "transformer"} <= set(catalog.ARCHITECTURES)
    assert "brier" not in catalog.METRICS


def test_every_built_in_goes_through_the_one_door_and_imports() -> None:
    """Each kind is one registry; every built-in's lazy `build` reference imports to a callable."""
    from gitops.config import catalog
    from gitops.config.registries import Registry

    kinds = {"architecture": catalog.ARCHITECTURES, "optimizer": catalog.OPTIMIZERS, "schedule": catalog.SCHEDULES,
             "dataset": catalog.DATASETS, "augmentation": catalog.AUGMENTATIONS, "loss": catalog.LOSSES,
             "metric": catalog.METRICS}
    for kind, registry in kinds.items():
        assert isinstance(registry, Registry) and registry.kind == kind
        for name in registry.names():
            assert callable(registry.get(name)), (kind, name)
    assert set(catalog.LOSSES) == {loss for losses in catalog.TASK_LOSSES.values() for loss in losses}
    with pytest.raises(ValueError, match="registered twice"):
        catalog.OPTIMIZERS.add(catalog.OPTIMIZERS["sgd"], "gitops.learn.optim:_sgd")
    with pytest.raises(GitopsError, match="unknown optimizer 'sgdd'; valid: adafactor, adam"):
        catalog.OPTIMIZERS.get("sgdd")
