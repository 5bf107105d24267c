"""`gitops init`: turn a folder into a gitops repository (the first thing an adopter runs).

What it writes, relative to the repository root:

    models/                      (with --example: models/my-model/, a first model that validates)
    schemas/*.schema.json        rendered from this gitops version's registries (what editors load)
    gitops.yaml                  repository settings, every setting commented out
    .gitignore                   runs/, .gitops/, site/, .jax_cache/ (missing lines appended)
    .github/workflows/{pr,pr-train,release}.yml and .github/actions/setup-gitops/action.yml
                                 copies of this package's workflows that install *this* gitops version

Idempotent: a second run changes nothing and says so. A file that exists with other content is never
overwritten (the command refuses before writing anything) except the workflow files and schemas with
`--force`, which is how a repository takes a newer gitops version's workflows. `gitops.yaml` and
model folders are the user's and are never replaced. A folder that is not a git repository gets
`git init -b main` first (the workflows release on pushes to `main`).

The workflow files ship inside the wheel as package data (`gitops/_workflows/`, put there by the
build's `force-include`); a source checkout reads them from `.github/` beside the package.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from gitops.errors import GitopsError, UsageError

DIST_NAME = "gitops-nn"
# (source relative to the workflow template root, destination relative to the repository root)
WORKFLOW_FILES = (
    ("workflows/pr.yml", ".github/workflows/pr.yml"),
    ("workflows/release.yml", ".github/workflows/release.yml"),
    ("workflows/pr-train.yml", ".github/workflows/pr-train.yml"),
    ("actions/setup-gitops/action.yml", ".github/actions/setup-gitops/action.yml"),
    ("actionlint.yaml", ".github/actionlint.yaml"),
)
GITIGNORE_LINES = ("runs/", ".gitops/", "/site/", ".jax_cache/", "__pycache__/")
# what a pip requirement may contain here (it lands in YAML strings and a `${{ '...' }}` expression)
_PIN_RE = re.compile(r"^[A-Za-z0-9._+\-=@:/#\[\],<>!~ ]{1,300}$")

SETTINGS_TEXT = """\
# yaml-language-server: $schema=schemas/settings.schema.json
# Repository settings (all optional). Budgets cap what one pull request may train; a maintainer lifts
# them for one PR by adding the override label.
budgets:
  # max_models_per_pr: 4
  # max_steps_per_model: 100000
  # max_device_minutes_per_pr: 60
  override_label: "gitops:budget-override"
"""


@dataclass
class InitResult:
    """What `init` did: root, whether it ran `git init`, the package pin, and paths by action."""

    root: Path
    git_initialized: bool
    package: str
    written: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    example: str | None = None


def template_root() -> Path:
    """The folder holding the workflow templates: package data in a wheel, `.github/` in a checkout."""
    import gitops

    here = Path(gitops.__file__).resolve().parent  # the package folder, wherever this module sits in it
    for candidate in (here / "_workflows", here.parent / ".github"):
        if (candidate / "workflows" / "pr.yml").is_file():
            return candidate
    raise GitopsError(f"this gitops installation has no workflow templates ({here / '_workflows'} is missing); "
                      "reinstall it from a wheel or a git URL")


def installed_package_spec() -> str:
    """The pip requirement that installs the gitops running now.

    From a git URL (PEP 610 `direct_url.json` with `vcs_info`): `gitops-nn @ git+URL@COMMIT`. Otherwise
    `gitops-nn==VERSION` (installed from a wheel or a source folder: CI must find that version on an
    index or with --find-links; `gitops init --package SPEC` names something else).
    """
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        from gitops import __version__

        return f"{DIST_NAME}=={__version__}"
    raw = dist.read_text("direct_url.json")
    if raw:
        try:
            direct = json.loads(raw)
        except ValueError:
            direct = {}
        vcs = direct.get("vcs_info") or {}
        if vcs.get("vcs") == "git" and vcs.get("commit_id") and str(direct.get("url", "")).startswith("https://"):
            return f"{DIST_NAME} @ git+{direct['url']}@{vcs['commit_id']}"
    return f"{DIST_NAME}=={dist.version}"


def check_pin(spec: str) -> str:
    """`spec` stripped, once checked to look like one pip requirement.

    E.g. `gitops==1.2.0` or `gitops @ git+https://...@<commit>`: the form `gitops init --package` takes.

    The character whitelist keeps it safe to write into workflow YAML. Raises UsageError otherwise.
    """
    spec = spec.strip()
    if not _PIN_RE.fullmatch(spec):
        raise UsageError(f"--package {spec!r}: expected a pip requirement (letters, digits and ._+-=@:/#[],<>!~ only)")
    return spec


def render_workflow(text: str, package: str) -> str:
    """A workflow or action file with its default package ('.', the checkout) replaced by `package`."""
    text = text.replace("inputs.gitops-package || '.'", f"inputs.gitops-package || '{package}'")
    # the `gitops-package` input of pr.yml/release.yml and the `path` input of the setup action
    text = re.sub(r'(\n\s+default: )"\."', lambda m: f'{m.group(1)}"{package}"', text)
    return text.replace("(default the checked-out repository)", f"(default {package}, written by gitops init)") \
               .replace("by default the checked-out repository itself", f"by default {package} (written by gitops init)")


def _git_toplevel(path: Path) -> Path | None:
    from gitops.repo import gitutil

    proc = gitutil.run(path, "rev-parse", "--show-toplevel", check=False)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def init(path: Path, *, example: bool = False, force: bool = False, package: str | None = None) -> InitResult:
    """Set up `path` as a gitops repository (see the module docstring).

    Args:
        path: the folder (created when missing); must be a git repository's top level, or not in one.
        example: also scaffold `models/my-model` (skipped when that folder exists).
        force: replace workflow files and schemas that differ from this version's.
        package: the pip requirement the workflows install (default: `installed_package_spec()`).

    Raises:
        UsageError: `path` is a file, or inside another repository below its top level, or a bad --package.
        GitopsError: files differ and `force` is off (nothing is written then; all of them are named).
    """
    from gitops.config import schema_files
    from gitops.repo import gitutil

    root = Path(path).resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    pin = check_pin(package) if package else installed_package_spec()
    probe = next((p for p in (root, *root.parents) if p.is_dir()), None)  # a new folder: its nearest parent
    top = _git_toplevel(probe) if probe is not None else None
    if top is not None and top != root:
        raise UsageError(f"{root} is inside the git repository {top}; run gitops init at its top level "
                         "(the workflows live in .github/ there)")

    from gitops.config import plugins

    plugins.use_repository(root)  # schemas as `gitops schemas` renders them there (its plugin package, if any)
    templates = template_root()
    wanted: dict[str, str] = {}  # relpath -> content (generated or copied files)
    replaceable: set[str] = set()
    for source, dest in WORKFLOW_FILES:
        wanted[dest] = render_workflow((templates / source).read_text(encoding="utf-8"), pin)
        replaceable.add(dest)
    for name, text in schema_files.rendered_files().items():
        wanted[f"schemas/{name}"] = text
        replaceable.add(f"schemas/{name}")

    result = InitResult(root, git_initialized=False, package=pin)
    conflicts: list[str] = []
    for rel, text in wanted.items():
        target = root / rel
        if target.is_symlink() or (target.exists() and not target.is_file()):
            conflicts.append(f"{rel} (not a regular file)")
        elif target.is_file() and target.read_text(encoding="utf-8", errors="replace") != text and not force:
            conflicts.append(rel)
    if conflicts:
        raise GitopsError(
            "these files exist and differ from what this gitops version writes: " + ", ".join(conflicts)
            + ". Nothing was written; rerun with --force to replace the workflows and schemas "
            "(commit or stash your edits first)"
        )

    root.mkdir(parents=True, exist_ok=True)
    if top is None:
        gitutil.run(root, "init", "-q", "-b", "main")
        result.git_initialized = True
    for rel, text in wanted.items():
        target = root / rel
        if target.is_file():
            if target.read_text(encoding="utf-8", errors="replace") == text:
                result.unchanged.append(rel)
                continue
            result.updated.append(rel)
        else:
            result.written.append(rel)
        _write(target, text)

    models = root / "models"
    if models.is_dir():
        result.unchanged.append("models/")
    else:
        models.mkdir()
        (models / ".gitkeep").write_text("", encoding="utf-8")
        result.written.append("models/")
    settings = root / "gitops.yaml"
    if settings.exists():
        result.unchanged.append("gitops.yaml")  # the user's settings: never replaced
    else:
        _write(settings, SETTINGS_TEXT)
        result.written.append("gitops.yaml")
    _gitignore(root / ".gitignore", result)

    if example:
        from gitops.repo.scaffold import new_model

        name = "my-model"
        if (models / name).exists():
            result.unchanged.append(f"models/{name}/")
        else:
            new_model(root, name)
            result.written.append(f"models/{name}/")
        result.example = name
    return result


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def _gitignore(path: Path, result: InitResult) -> None:
    existing = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    have = {line.strip() for line in existing.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in have and line.rstrip("/") not in have
               and "/" + line.strip("/") + "/" not in have]
    if not missing:
        result.unchanged.append(".gitignore")
        return
    prefix = existing if not existing or existing.endswith("\n") else existing + "\n"
    header = "# gitops: run folders, local releases, the built site, compilation cache\n"
    _write(path, prefix + header + "".join(f"{line}\n" for line in missing))
    (result.updated if existing else result.written).append(".gitignore")
