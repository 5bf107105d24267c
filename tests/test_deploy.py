"""`gitops deploy --render --bake`: Dockerfile, Kubernetes manifests and README for one released version.

No Docker engine or cluster here: the YAML must parse and carry what it should, the Dockerfile's
commands must be the ones docs/serving.md documents, and the folder is written atomically.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gitops.cli import app
from gitops.serve import deploy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def released(trained_examples, tmp_path_factory):
    """A git repository with wine-mlp v1.0.0 released by the local backend."""
    from conftest import make_example_repo

    from gitops.api import release
    from gitops.backends.local import LocalBackend

    repo = make_example_repo(tmp_path_factory.mktemp("deploy") / "repo")
    run = trained_examples["wine-mlp"]
    shutil.copytree(run, repo / "runs" / "wine-mlp" / run.name)
    release(repo, LocalBackend(repo), "wine-mlp")
    return repo


def cli(repo: Path, monkeypatch, *args: str):
    monkeypatch.chdir(repo)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    if "--render" in args and "--pull-at-start" not in args:
        args = (*args, "--bake")  # the per-version image (plain --render: tests/test_deploy_repo.py)
    return CliRunner().invoke(app, ["deploy", *args])


def documented_cmds() -> list[str]:
    text = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```dockerfile\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("CMD ")]


def dockerfile_cmd(text: str) -> str:
    return [line for line in text.splitlines() if line.startswith("CMD ")][-1]


def load_k8s(folder: Path) -> dict[str, dict]:
    docs = {}
    for path in sorted((folder / "k8s").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        docs[doc["kind"]] = doc
    return docs


def test_render_cpu(released, monkeypatch, tmp_path):
    out = tmp_path / "render"
    result = cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out), "--replicas", "3",
                 "--image-registry", "ghcr.io/acme/")
    assert result.exit_code == 0, result.output
    assert "docker build -t ghcr.io/acme/gitops-wine-mlp:v1.0.0" in result.output

    dockerfile = (out / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", dockerfile, re.M), "base image not pinned"
    user = re.search(r"^USER (\S+)$", dockerfile, re.M).group(1)
    assert user not in ("root", "0")
    assert "useradd" in dockerfile and "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "COPY app/ /opt/gitops-src/" in dockerfile and '"/opt/gitops-src"' in dockerfile
    assert "COPY --chown=10001:10001 model/ /srv/model/" in dockerfile
    assert dockerfile.index("USER ") > dockerfile.index("RUN pip install")  # installs as root, runs as not
    assert dockerfile_cmd(dockerfile) == documented_cmds()[0]
    assert json.loads(dockerfile_cmd(dockerfile)[4:]) == ["gitops", "serve", "/srv/model", "--host", "0.0.0.0",
                                                          "--port", "8501"]
    assert "cuda" not in dockerfile

    # the release is baked in: the pulled, verified folder, and the gitops source to install
    assert json.loads((out / "model" / "release.json").read_text())["version"] == "v1.0.0"
    assert (out / "model" / "manifest.json").is_file() and (out / "model" / "checkpoints").is_dir()
    assert (out / "app" / "pyproject.toml").is_file() and (out / "app" / "gitops" / "serve" / "server.py").is_file()
    assert not list((out / "app").rglob("__pycache__"))

    k8s = load_k8s(out)
    assert set(k8s) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    dep = k8s["Deployment"]
    assert dep["apiVersion"] == "apps/v1" and dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/acme/gitops-wine-mlp:v1.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == 8501
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert "nvidia.com/gpu" not in res["limits"] and "tolerations" not in pod
    assert container["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    svc = k8s["Service"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == 8501
    hpa = k8s["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] > 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    readme = (out / "README.md").read_text()
    assert "docker build -t ghcr.io/acme/gitops-wine-mlp:v1.0.0 ." in readme and "kubectl apply -f k8s/" in readme
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_baked_release_serves_as_its_version(released, monkeypatch, tmp_path):
    import warnings

    from gitops.serve.server import build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    out = tmp_path / "render"
    assert cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out)).exit_code == 0
    server = build(str(out / "model"), max_batch_size=2)
    with TestClient(server.app) as client:
        import time

        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = client.post("/v1/models/wine-mlp/versions/1000000:predict", json={"instances": [[1.0] * 13]})
        assert r.status_code == 200 and r.headers["x-model-version"] == "v1.0.0"


def test_render_gpu(released, monkeypatch, tmp_path):
    out = tmp_path / "gpu"
    assert cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out), "--gpu").exit_code == 0
    import jax

    assert f'"jax[cuda12]=={jax.__version__}"' in (out / "Dockerfile").read_text()
    dep = load_k8s(out)["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_render_pull_at_start(released, monkeypatch, tmp_path):
    out = tmp_path / "pull"
    result = cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out), "--pull-at-start")
    assert result.exit_code == 2 and "--github-repository" in result.output
    assert not out.exists()
    result = cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out), "--pull-at-start",
                 "--github-repository", "acme/models")
    assert result.exit_code == 0, result.output
    dockerfile = (out / "Dockerfile").read_text()
    assert not (out / "model").exists() and "model/" not in dockerfile
    assert dockerfile_cmd(dockerfile) == documented_cmds()[1].replace("MODEL@VERSION", "wine-mlp@v1.0.0")
    env = {e["name"]: e for e in load_k8s(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GITHUB_REPOSITORY"]["value"] == "acme/models"
    assert env["GITHUB_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gitops-github", "key": "token"}


def test_render_is_atomic_and_refuses_foreign_folders(released, monkeypatch, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    result = cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(foreign))
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]

    out = tmp_path / "render"
    assert cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out)).exit_code == 0
    (out / "stale.txt").write_text("from an earlier render")
    assert cli(released, monkeypatch, "wine-mlp@v1.0.0", "--render", str(out), "--replicas", "5").exit_code == 0
    assert not (out / "stale.txt").exists()  # replaced whole, not merged
    assert load_k8s(out)["Deployment"]["spec"]["replicas"] == 5

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(deploy, "kubernetes", boom)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(RuntimeError):
        deploy.render("wine-mlp", "v1.0.0", out, deploy.DeployOptions(replicas=1), release_dir=out / "model")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert load_k8s(out)["Deployment"]["spec"]["replicas"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unknown_version_is_a_usage_error(released, monkeypatch, tmp_path):
    result = cli(released, monkeypatch, "wine-mlp@v7.0.0", "--render", str(tmp_path / "x"))
    assert result.exit_code == 2 and "Traceback" not in result.output
