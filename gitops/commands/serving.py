"""`gitops serve` and `gitops deploy`: thin adapters over `gitops.serve.server` and `gitops.deploy`.

jax, starlette and uvicorn load inside the command bodies only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gitops.cli_app import command, finite, out

BackendOption = Annotated[
    str | None,
    typer.Option("--backend", help="Registry backend: local (default) or github (default inside GitHub Actions)."),
]


@command("serve")
def serve_cmd(
    target: Annotated[str, typer.Argument(help="MODEL@VERSION, MODEL@STAGE (followed), MODEL (latest, followed) "
                                               "or a run / pulled-release folder.")],
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8501,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0 in a container).")] = "127.0.0.1",
    max_batch_size: Annotated[int | None, typer.Option(
        "--max-batch-size", min=1, max=65536, help="Largest dynamic batch (default: release.yaml serving.max_batch_size).")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(
        "--max-wait-ms", min=0.0, callback=finite, help="How long a batch waits to fill (default: release.yaml serving.max_wait_ms).")] = None,
    poll_seconds: Annotated[float, typer.Option(
        "--poll-seconds", min=0.05, callback=finite, help="How often a followed stage is checked for a new version.")] = 10.0,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Largest request body (413 above).")] = 8 * 1024 * 1024,
    max_instances: Annotated[int, typer.Option("--max-instances", min=1, help="Most instances per request.")] = 1024,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", min=0.001, help="Seconds a request body may take to arrive (408 after).")] = 30.0,
    max_inflight_body_bytes: Annotated[int, typer.Option(
        "--max-inflight-body-bytes", min=1, help="Bytes of bodies being received at once, all requests together "
                                                 "(503 above).")] = 64 * 1024 * 1024,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=1, help="Open connections plus running requests (503 above); leave room for "
                                         "streaming responses.")] = 2048,
    backend_name: BackendOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error.")] = "info",
    log_json: Annotated[bool, typer.Option("--log-json", help="Log one JSON object per line (ours and uvicorn's).")] = False,
) -> None:
    """HTTP inference server with TF Serving's REST API; follows a stage when given one."""
    from gitops.serve import server

    if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise typer.BadParameter(f"{log_level!r}: use debug, info, warning or error", param_hint="--log-level")
    sock = server.bind(host, port)  # a busy port fails here, before anything is loaded
    try:
        limits = server.Limits(max_body_bytes=max_body_bytes, max_instances=max_instances,
                               body_timeout_s=body_timeout, max_inflight_body_bytes=max_inflight_body_bytes,
                               max_connections=max_connections)
        srv = server.build(target, backend=backend_name, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                           poll_seconds=poll_seconds, limits=limits)
    except BaseException:
        sock.close()
        raise
    code = server.run(srv, host, port, log_level=log_level.lower(), log_json=log_json, sock=sock)
    if code:
        raise typer.Exit(code)


@command("deploy")
def deploy_cmd(
    ref: Annotated[str, typer.Argument(help="MODEL@VERSION (or MODEL@STAGE: rendered for the version it holds now).")],
    render_dir: Annotated[Path, typer.Option("--render", help="Folder to write the build context and manifests into.")],
    gpu: Annotated[bool, typer.Option("--gpu", help="Ask for one nvidia.com/gpu and install jax[cuda12].")] = False,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="Deployment replicas (the autoscaler's minimum).")] = 2,
    image_registry: Annotated[str, typer.Option("--image-registry", help="Registry prefix, e.g. ghcr.io/acme.")] = "",
    pull_at_start: Annotated[bool, typer.Option(
        "--pull-at-start", help="Pull the release from GitHub when the container starts instead of baking it in.")] = False,
    github_repository: Annotated[str, typer.Option(
        "--github-repository", help="OWNER/NAME to pull from with --pull-at-start (default: $GITHUB_REPOSITORY).")] = "",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder that is not an earlier render.")] = False,
    backend_name: BackendOption = None,
) -> None:
    """Render a Dockerfile and Kubernetes manifests (Deployment, Service, HPA) serving one version."""
    from gitops import config, deploy
    from gitops.backends import get_backend

    root = config.find_root()
    opts = deploy.DeployOptions(gpu=gpu, replicas=replicas, image_registry=image_registry,
                                pull_at_start=pull_at_start,
                                github_repository=github_repository or os.environ.get("GITHUB_REPOSITORY", ""))
    result = deploy.deploy(root, get_backend(backend_name, root), ref, render_dir, opts, force=force)
    out(f"rendered {result.model} {result.version} into {result.dir}")
    out(f"  docker build -t {result.image} {result.dir}")
    out(f"  kubectl apply -f {result.dir / 'k8s'}")
