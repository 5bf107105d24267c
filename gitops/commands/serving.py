"""`gitops serve` and `gitops deploy`: thin adapters over `gitops.serve.server` and `gitops.serve.deploy`.

jax, starlette and uvicorn load inside the command bodies only.
"""

from __future__ import annotations

import json
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
    max_image_pixels: Annotated[int, typer.Option(
        "--max-image-pixels", min=1, help="Largest {\"b64\": ...} image instance, width x height (400 above).")
    ] = 4096 * 4096,
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
        limits = server.Limits(max_body_bytes=max_body_bytes, max_instances=max_instances, max_image_pixels=max_image_pixels,
                               body_timeout_s=body_timeout, max_inflight_body_bytes=max_inflight_body_bytes,
                               max_connections=max_connections)
        srv = server.build(target, backend=backend_name, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                           poll_seconds=poll_seconds, limits=limits)
    except BaseException:
        sock.close()
        raise
    try:
        code = server.run(srv, host, port, log_level=log_level.lower(), log_json=log_json, sock=sock)
    except KeyboardInterrupt as exc:  # uvicorn re-raises SIGTERM / Ctrl-C once it has shut down cleanly
        from gitops.learn.interrupt import Terminated

        # how a server is meant to stop (Kubernetes sends SIGTERM): not an error, exit 0 like TF Serving
        typer.echo(f"stopped ({'SIGTERM' if isinstance(exc, Terminated) else 'Ctrl-C'}): shut down cleanly", err=True)
        return
    if code:
        raise typer.Exit(code)


@command("deploy")
def deploy_cmd(
    ref: Annotated[str | None, typer.Argument(help="MODEL@STAGE or a stage tag (--to-repo); MODEL@VERSION or "
                                                   "MODEL@STAGE (--render).")] = None,
    render_dir: Annotated[Path | None, typer.Option("--render", help="Folder to write the manifests (and with --bake "
                                                                   "the build context) into.")] = None,
    bake: Annotated[bool, typer.Option("--bake", help="With --render: a per-version image with the release baked in "
                                                      "(air-gapped clusters).")] = False,
    to_repo: Annotated[str | None, typer.Option("--to-repo", help="Deploy repository: a folder or a git URL "
                                                              "(default gitops.yaml deploy.repository).")] = None,
    path: Annotated[str | None, typer.Option("--path", help="The stage's overlay folder in the deploy repository "
                                                         "(default overlays/<stage>).")] = None,
    all_stages: Annotated[bool, typer.Option("--all", help="Deploy every model's every stage (idempotent).")] = False,
    image: Annotated[str, typer.Option("--image", help="Generic serving image (default: gitops.yaml deploy.image, "
                                                       "else ghcr.io/gitops-nn/gitops-serve:<version>).")] = "",
    gpu: Annotated[bool, typer.Option("--gpu", help="Ask for one nvidia.com/gpu (and with --bake install jax[cuda12]).")] = False,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, help="Deployment replicas (the autoscaler's minimum).")] = None,
    image_registry: Annotated[str, typer.Option("--image-registry", help="Registry prefix, e.g. ghcr.io/acme.")] = "",
    pull_at_start: Annotated[bool, typer.Option(
        "--pull-at-start", help="With --render: a per-version image that pulls the release at start.")] = False,
    github_repository: Annotated[str, typer.Option(
        "--github-repository", help="OWNER/NAME the pods pull from (default: $GITHUB_REPOSITORY).")] = "",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder that is not an earlier render.")] = False,
    backend_name: BackendOption = None,
) -> None:
    """Deploy a stage to a Kustomize deploy repository (--to-repo), or render manifests (--render [--bake])."""
    from gitops import config
    from gitops.backends import get_backend
    from gitops.errors import UsageError
    from gitops.serve import deploy

    root = config.find_root()
    repo_slug = github_repository or os.environ.get("GITHUB_REPOSITORY", "")
    if render_dir is not None:
        if ref is None or all_stages or to_repo:
            raise UsageError("--render takes one MODEL@VERSION (or MODEL@STAGE), not --all or --to-repo")
        opts = deploy.DeployOptions(gpu=gpu, replicas=replicas or 2, image_registry=image_registry,
                                    pull_at_start=pull_at_start, github_repository=repo_slug)
        backend = get_backend(backend_name, root)
        if bake or pull_at_start:
            result = deploy.deploy(root, backend, ref, render_dir, opts, force=force)
            out(f"rendered {result.model} {result.version} into {result.dir}")
            out(f"  docker build -t {result.image} {result.dir}")
            out(f"  kubectl apply -f {result.dir / 'k8s'}")
            return
        from gitops.config.settings import load_settings
        from gitops.repo.tree import FsTree
        from gitops.serve import deploy_repo

        env = deploy_repo.pod_env(repo_slug, load_settings(FsTree(root)).artifacts)
        rendered, stage = deploy_repo.render(backend, ref, render_dir, opts, image=image or None, env=env, force=force)
        marker = json.loads((Path(rendered) / deploy.MARKER).read_text(encoding="utf-8"))  # what was rendered
        out(f"rendered {marker['model']} {marker['version']} into {rendered} "
            "(generic image; the pods pull and verify the version at start)")
        out(f"  kubectl kustomize {rendered}/overlays/{stage}")
        return
    _deploy_to_repo(root, ref, to_repo, path, all_stages, image, gpu, replicas, repo_slug, backend_name)


def _deploy_to_repo(root, ref, to_repo, path, all_stages, image, gpu, replicas, repo_slug, backend_name) -> None:
    from gitops.backends import get_backend
    from gitops.config.settings import load_settings
    from gitops.errors import UsageError
    from gitops.registry import tags
    from gitops.repo.tree import FsTree
    from gitops.serve import deploy_repo

    settings = load_settings(FsTree(root))
    if not (to_repo or settings.deploy.repository) and all_stages and ref is None:
        out("no deploy repository (gitops.yaml deploy.repository): nothing to deploy")  # the release workflow's job
        return
    if (ref is None) == (not all_stages):
        raise UsageError("give one MODEL@STAGE (or a stage tag), or --all")
    backend = get_backend(backend_name, root)
    if all_stages:
        pairs = deploy_repo.stages_to_sync(tags.registry_state(backend.list_tags()))
    else:
        r = deploy_repo.stage_from_ref(ref)
        pairs = [(r.model, r.stage)]
    deploy_repo.deploy_stages(root, backend, settings, pairs, target=to_repo or "", path=path, image=image, gpu=gpu,
                              replicas=replicas, github_repository=repo_slug, say=out)
