"""`gitops site`: the static registry site (index, a page per model), built once or served live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitops.cli_app import command, finite, out


@command("site")
def site_cmd(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write the site to, replaced atomically "
                                                 "(default site/; with --serve a temporary folder).")] = None,
    backend_name: Annotated[str | None, typer.Option("--backend", help="local or github (default: github in "
                                                     "GitHub Actions, else local).")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Serve a live preview; rebuild when tags change.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve (0 picks a free one).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address for --serve.")] = "127.0.0.1",
    interval: Annotated[float, typer.Option("--interval", callback=finite, help="Seconds between tag checks with --serve.")] = 3.0,
) -> None:
    """Generate the model registry's static site: every model, version, stage, metric and config diff."""
    from gitops import config
    from gitops.backends import get_backend
    from gitops.site.render import build_site

    root = config.find_root()
    backend = get_backend(backend_name, root)
    if serve:
        from gitops.site.serve import serve as serve_site

        serve_site(lambda folder: build_site(root, backend, folder), backend,
                   out=out_dir, host=host, port=port, interval=interval)
        return
    out_dir = out_dir or Path("site")
    data = build_site(root, backend, out_dir)
    versions = sum(len(m.versions) for m in data.models)
    out(f"wrote {out_dir}/index.html: {len(data.models)} model(s), {versions} version(s)")

