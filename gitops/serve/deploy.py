"""`gitops deploy`: render a Dockerfile and Kubernetes manifests that serve one released version.

The rendered folder is a self-contained build context:

```
DIR/
  Dockerfile          slim Python (pinned), non-root user, gitops installed, the release baked in,
                      HEALTHCHECK on /healthz, CMD `gitops serve /srv/model --host 0.0.0.0`
  app/                the gitops source that rendered it (or nothing: installed from an index)
  model/              the pulled, checksum-verified release (absent with --pull-at-start)
  k8s/deployment.yaml readiness /readyz, liveness /healthz, requests/limits, optional nvidia.com/gpu
  k8s/service.yaml    ClusterIP on port 8501
  k8s/hpa.yaml        autoscaling/v2 on CPU utilisation
  README.md           the docker build / push / kubectl apply commands
  .gitops-deploy.json what was rendered (so a later render may replace the folder)
```
It is written into a temporary sibling folder and renamed into place, so DIR is never half written.
Nothing here needs Docker or a cluster; tests parse the YAML and read the Dockerfile.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from gitops import jsonio
from gitops.errors import UsageError
from gitops.registry.runs import replace_dir

PYTHON_IMAGE = "python:3.11.11-slim-bookworm"  # pinned: a rebuild months later gets the same base
PORT = 8501
MARKER = ".gitops-deploy.json"
SERVE_REQUIREMENTS = ("starlette>=0.37", "uvicorn>=0.30", "httptools>=0.6", "prometheus-client>=0.20")
STORE_REQUIREMENTS = ("s3fs>=2024.2", "gcsfs>=2024.2", "adlfs>=2024.2")  # pyproject.toml's s3/gcs/azure extras
MODEL_DIR = "/srv/model"
UID = 10001


@dataclass(frozen=True)
class DeployOptions:
    """What `gitops deploy` renders beyond the release itself (its command-line flags).

    Kubernetes quantities as in a pod spec (`cpu_request` "500m" = half a core, `memory_limit` "4Gi"
    = 4 GiB); `target_cpu_percent` is the HorizontalPodAutoscaler's average CPU utilisation target (%);
    min/max replicas default from `replicas` when None.
    """

    gpu: bool = False
    replicas: int = 2
    image_registry: str = ""  # e.g. ghcr.io/acme; empty: a local image name
    pull_at_start: bool = False
    github_repository: str = ""  # OWNER/NAME for --pull-at-start (the github backend)
    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "4Gi"
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_cpu_percent: int = 70
    package: str = ""  # pip spec for gitops; empty: copy this checkout's source into app/


@dataclass(frozen=True)
class Rendered:
    """What a render wrote: the folder, the image name to build, model, version and the files (relative paths)."""

    dir: Path
    image: str
    model: str
    version: str
    files: tuple[str, ...]


def label_safe(version: str) -> str:
    """`version` as a Docker tag or Kubernetes label value allows it: SemVer's build-metadata `+`
    becomes `_` (as Helm does); pre-release `-rc.1` is already allowed."""
    return version.replace("+", "_")


def image_name(model: str, version: str, registry: str = "") -> str:
    """The image reference to build, `[<registry>/]gitops-<model>:<version>` (the version made tag-safe)."""
    name = f"gitops-{model}:{label_safe(version)}"
    return f"{registry.rstrip('/')}/{name}" if registry else name


def serve_command(pull_at_start: bool, ref: str) -> list[str]:
    """The container's command: serve the baked-in folder, or pull the release first."""
    serve = ["gitops", "serve", MODEL_DIR, "--host", "0.0.0.0", "--port", str(PORT)]
    if not pull_at_start:
        return serve
    pull = f"gitops pull {ref} --backend github --to {MODEL_DIR}"
    return ["sh", "-c", f"{pull} && exec {' '.join(serve)}"]


def dockerfile(model: str, version: str, opts: DeployOptions, *, jax_version: str, source_copied: bool) -> str:
    """The Dockerfile text: a pinned slim Python base, a non-root user, gitops and the serving packages
    installed (`jax[cuda12]` pinned to `jax_version` with `opts.gpu`), the release baked in unless
    `opts.pull_at_start`, a HEALTHCHECK on /healthz and `gitops serve` as the command.
    """
    ref = f"{model}@{version}"
    if source_copied:
        install = ["/opt/gitops-src"]
    else:  # there is no PyPI release: the same pin `gitops init` writes (a git URL when installed from one)
        from gitops.repo.init import installed_package_spec

        install = [opts.package or installed_package_spec()]
    install += list(SERVE_REQUIREMENTS)
    if opts.pull_at_start:  # the release may live in an artifact store (gitops.yaml artifacts:)
        install += list(STORE_REQUIREMENTS)
    if opts.gpu:
        install.append(f"jax[cuda12]=={jax_version}")
    pip = "pip install " + " ".join(f'"{p}"' for p in install)
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# Rendered by `gitops deploy {ref}`: serves that version with `gitops serve`.",
        f"FROM {PYTHON_IMAGE}",
        "",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"RUN useradd --create-home --uid {UID} --user-group --shell /usr/sbin/nologin gitops",
        "",
    ]
    if source_copied:
        lines.append("COPY app/ /opt/gitops-src/")
    lines += [f"RUN {pip}", ""]
    # find_root() needs a models/ folder above the working directory; /srv is the serving root.
    lines.append(f"RUN mkdir -p /srv/models && chown -R {UID}:{UID} /srv")
    lines.append("WORKDIR /srv")
    if not opts.pull_at_start:
        lines.append(f"COPY --chown={UID}:{UID} model/ {MODEL_DIR}/")
    lines += [
        f"LABEL org.opencontainers.image.title=\"{model}\" org.opencontainers.image.version=\"{version}\"",
        f"USER {UID}",
        f"EXPOSE {PORT}",
        "HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \\",
        "  CMD [\"python\", \"-c\", \"import sys, urllib.request; "
        f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{PORT}/healthz', timeout=2).status == 200 else 1)\"]",
        f"CMD {jsonio.dumps(serve_command(opts.pull_at_start, ref))}",
        "",
    ]
    return "\n".join(lines)


def _labels(model: str, version: str) -> dict:
    return {"app.kubernetes.io/name": model, "app.kubernetes.io/version": label_safe(version),
            "app.kubernetes.io/managed-by": "gitops"}


def kubernetes(model: str, version: str, image: str, opts: DeployOptions) -> dict[str, dict]:
    """The Deployment, Service and HorizontalPodAutoscaler as plain data (file name -> document)."""
    name = f"{model}-serving"
    selector = {"app.kubernetes.io/name": model}
    resources = {
        "requests": {"cpu": opts.cpu_request, "memory": opts.memory_request},
        "limits": {"cpu": opts.cpu_limit, "memory": opts.memory_limit},
    }
    if opts.gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
        resources["requests"]["nvidia.com/gpu"] = 1
    container: dict = {
        "name": "serve",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5,
                           "failureThreshold": 3, "timeoutSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 2},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5,
                         "failureThreshold": 60},
        "resources": resources,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if opts.pull_at_start:
        container["env"] = [
            {"name": "GITHUB_REPOSITORY", "value": opts.github_repository},
            {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "gitops-github", "key": "token"}}},
        ]
    pod_spec: dict = {"containers": [container], "securityContext": {"runAsNonRoot": True, "fsGroup": UID}}
    if opts.gpu:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": _labels(model, version)},
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": _labels(model, version)}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(model, version)},
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": _labels(model, version)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": opts.min_replicas or opts.replicas,
            "maxReplicas": opts.max_replicas or max(opts.replicas * 4, (opts.min_replicas or opts.replicas) + 1),
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": opts.target_cpu_percent}}}],
        },
    }
    return {"deployment.yaml": deployment, "service.yaml": service, "hpa.yaml": hpa}


def readme(model: str, version: str, image: str, opts: DeployOptions) -> str:
    """The rendered folder's README.md: how to build, try, push and `kubectl apply` the image and manifests."""
    name = f"{model}-serving"
    baked = ("the release is baked into the image (`model/`, pulled and checksum-verified at render time)"
             if not opts.pull_at_start else
             "the container pulls the release at start (`gitops pull --backend github`); create the token "
             "secret first:\n\n    kubectl create secret generic gitops-github --from-literal=token=$GITHUB_TOKEN")
    gpu = "\nThe pods ask for one `nvidia.com/gpu` and tolerate GPU-node taints.\n" if opts.gpu else ""
    return f"""# Serving {model} {version}

Rendered by `gitops deploy {model}@{version}`; {baked}.
{gpu}
```sh
docker build -t {image} .
docker run --rm -p {PORT}:{PORT} {image}          # try it: curl localhost:{PORT}/readyz
docker push {image}
kubectl apply -f k8s/
kubectl rollout status deployment/{name}
```

Predict (TF Serving's REST API):

```sh
curl -s localhost:{PORT}/v1/models/{model}:predict -d '{{"instances": [[...]]}}'
```

Readiness is `/readyz` (a warmed version is serving), liveness `/healthz`, metrics `/metrics`.
"""


def _source_root() -> Path | None:
    """This checkout's project folder when gitops runs from source (pyproject.toml beside the package)."""
    import gitops

    root = Path(gitops.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "gitops").is_dir() else None


def _copy_source(src: Path, dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    dest.mkdir(parents=True)
    shutil.copytree(src / "gitops", dest / "gitops", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    # the wheel build force-includes the workflow templates `gitops init` copies (pyproject.toml)
    from gitops.repo.init import WORKFLOW_FILES

    for _, rel in WORKFLOW_FILES:
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)


def _dump_yaml(doc: dict) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _top_level_hidden(top: Path):
    """copytree filter: skip the pulled folder's own hidden files, not the checkpoint's (`.zarray`)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(".")] if Path(folder) == top else []

    return ignore


def render(model: str, version: str, out_dir: Path, opts: DeployOptions, *, release_dir: Path | None,
           force: bool = False) -> Rendered:
    """Write the build context for `model@version` into `out_dir` atomically.

    Args:
        release_dir: the pulled release folder to bake in (None with `opts.pull_at_start`).
        force: replace an existing non-empty folder that is not an earlier render.
    """
    import jax  # only its version string; the container installs the matching CUDA build

    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UsageError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file() and not force:
            raise UsageError(f"{out_dir} is not empty and not an earlier `gitops deploy` render; "
                             "pick another --render folder (or --force)")
    if opts.pull_at_start and not opts.github_repository:
        raise UsageError("--pull-at-start pulls from GitHub: pass --github-repository OWNER/NAME "
                         "(or set GITHUB_REPOSITORY)")
    if not opts.pull_at_start and (release_dir is None or not (release_dir / "manifest.json").is_file()):
        raise UsageError(f"{release_dir}: not a pulled release folder")
    if opts.replicas < 1:
        raise UsageError("--replicas must be at least 1")
    image = image_name(model, version, opts.image_registry)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        src = None if opts.package else _source_root()
        if src is not None:
            _copy_source(src, tmp / "app")
        if not opts.pull_at_start:
            shutil.copytree(release_dir, tmp / "model", ignore=_top_level_hidden(release_dir))
        (tmp / "Dockerfile").write_text(dockerfile(model, version, opts, jax_version=jax.__version__,
                                                   source_copied=src is not None))
        (tmp / ".dockerignore").write_text("k8s/\nREADME.md\n**/__pycache__\n")
        (tmp / "k8s").mkdir()
        for name, doc in kubernetes(model, version, image, opts).items():
            (tmp / "k8s" / name).write_text(_dump_yaml(doc))
        (tmp / "README.md").write_text(readme(model, version, image, opts))
        (tmp / MARKER).write_text(jsonio.dumps({"model": model, "version": version, "image": image,
                                              "options": asdict(opts)}, indent=2) + "\n")
        files = tuple(sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()
                             and not str(p.relative_to(tmp)).startswith(("app/", "model/"))))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Rendered(out_dir, image, model, version, files)


def deploy(root: Path, backend, ref: str, out_dir: Path, opts: DeployOptions, *, force: bool = False) -> Rendered:
    """Resolve `ref` to a released version, pull and verify it (unless pulled at start), render."""
    from gitops.config.refs import parse_target
    from gitops.registry import pull, versions

    st, version = versions.resolve(backend, parse_target(ref, allow_path=False).ref)
    release_dir = None if opts.pull_at_start else pull.pull(root, backend, f"{st.model}@{version.version}")
    return render(st.model, version.version, out_dir, opts, release_dir=release_dir, force=force)
