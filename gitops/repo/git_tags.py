"""A repository's annotated tags in one `git for-each-ref` call: the local backend's registry and the
jax-free readers that need only tags (`train.start_from` resolving a parent in `validate`/`ci plan`),
without importing the backend's asset machinery at start-up."""

from __future__ import annotations

from pathlib import Path

from gitops.backends.base import TagInfo
from gitops.repo import gitutil

# Fields split by NUL, each record ends with NUL + newline.
_FIELDS = (
    "%(refname:strip=2)",
    "%(objecttype)",
    "%(objectname)",
    "%(*objectname)",
    "%(taggername) %(taggeremail)",
    "%(taggerdate:iso-strict)",
    "%(creatordate:iso-strict)",
    "%(contents)",
)
_FORMAT = "%00".join(_FIELDS) + "%00"


def list_tags(root: Path, pattern: str = "refs/tags", *, annotated_only: bool = True) -> list[TagInfo]:
    """Every annotated tag of the git repository at `root` under `pattern` (lightweight tags are no
    registry events: GTO ignores them too), peeled to the commit it names.

    Raises:
        GitopsError: git failed (not a repository).
    """
    out = gitutil.run(Path(root), "for-each-ref", f"--format={_FORMAT}", pattern).stdout
    parts = out.split("\0")
    n = len(_FIELDS)
    tags = []
    for i in range(0, len(parts) - n + 1, n):
        name, kind, obj, peeled, tagger, tagdate, created, message = parts[i : i + n]
        name = name.lstrip("\n")
        if annotated_only and kind != "tag":
            continue
        tags.append(TagInfo(name=name, commit=peeled or obj, message=message.rstrip("\n"),
                            tagger=tagger.strip(), date=tagdate or created))
    return tags
