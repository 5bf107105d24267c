"""The one reference grammar every command that names a trained model accepts.

    REF := PATH                       a run folder (runs/<model>/<fp>/) or an unpacked release
         | MODEL                      the latest release (same as MODEL@latest)
         | MODEL@latest               the latest release (pre-releases never count)
         | MODEL@vX.Y.Z | MODEL@X.Y.Z  that version (pre-releases by exact reference only)
         | MODEL@STAGE                the version a stage points to now (GTO's `MODEL#STAGE` too)

An existing path wins over a model name: text naming an existing folder is that folder, and text
that looks like a path (it holds `/`, or starts with `.` or `~`) is never read as a model name.
`latest` is reserved: no stage may be called that. `pull`, `serve`, `predict`, `deploy`,
`gitops.load` and `promote` all read references through `parse_target` / `gitops.registry.tags.parse_ref`,
so they accept exactly the same forms. README ("Naming a model: references") documents it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitops.errors import UsageError

MANIFEST = "manifest.json"
GRAMMAR = "MODEL, MODEL@latest, MODEL@vX.Y.Z, MODEL@X.Y.Z, MODEL@STAGE or a run folder"


@dataclass(frozen=True)
class Target:
    """What a reference names: a folder on disk, or a registry reference (`gitops.registry.tags.Ref`)."""

    text: str
    path: Path | None = None
    ref: object | None = None  # gitops.registry.tags.Ref (imported lazily: this module is on the jax-free path)


def looks_like_path(text: str) -> bool:
    """True when `text` must be a folder path rather than a registry reference: it contains a slash or backslash, or
    starts with "." or "~".
    """
    return "/" in text or "\\" in text or text.startswith((".", "~"))


def parse_target(text: str | Path, *, allow_path: bool = True) -> Target:
    """Parse a reference (see the module docstring).

    Args:
        text: what the user typed.
        allow_path: False for commands that only take released versions (`pull`, `deploy`).

    Raises:
        UsageError: an existing folder that is not a run folder, a path that does not exist, a path
            where only a release can be named, or a malformed MODEL@... reference.
    """
    from gitops.registry import tags

    raw = str(text)
    path = Path(raw).expanduser()
    if path.exists() or looks_like_path(raw):
        if not allow_path:
            raise UsageError(f"{raw}: expected a released model ({GRAMMAR.removesuffix(' or a run folder')}), "
                             "not a path")
        if not path.exists():
            raise UsageError(f"{raw}: no such run folder (expected {GRAMMAR})")
        if not (path / MANIFEST).is_file():
            hint = f"; to name the model, write {raw}@latest" if tags.MODEL_RE.match(raw) else ""
            raise UsageError(f"{raw} is a folder but not a run folder (no {MANIFEST}){hint}")
        return Target(raw, path=path)
    try:
        return Target(raw, ref=tags.parse_ref(raw))
    except UsageError as exc:
        raise UsageError(f"{exc.message} (a reference is {GRAMMAR})") from None
