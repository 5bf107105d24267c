"""Read-only views of a repository's files: the working folder, or a git commit.

Config loading reads through a `Tree`, so `ci plan` resolves a model at the PR's base and head
commits with the same code that `validate` uses on the working folder.

Symbolic links: every link under `models/` (a file, a model folder, `models/` itself) is refused,
in both trees alike, and no read follows a link out of the repository. A link inside a model folder
would make `validate` (which would follow it) and `ci plan` (which reads git's link object) disagree,
and a link out of the repository would echo another file's contents in errors and CI annotations.
"""

from __future__ import annotations

import os
import posixpath
import stat
import subprocess
from pathlib import Path, PurePosixPath

from gitops.errors import ConfigError, GitopsError, Problem, UsageError

MODELS_DIR = "models"
MAX_LINK_HOPS = 16


class Tree:
    """A folder of files addressed by POSIX paths relative to the repository root."""

    root: Path

    def read(self, relpath: str) -> bytes | None:  # pragma: no cover - interface
        """The file's bytes; None when it does not exist. Raises ConfigError for a path `refused` names."""
        raise NotImplementedError

    def listdir(self, relpath: str) -> list[str]:  # pragma: no cover - interface
        """The names directly inside folder `relpath`, sorted; [] when it is no folder."""
        raise NotImplementedError

    def is_dir(self, relpath: str) -> bool:  # pragma: no cover - interface
        """True when `relpath` is a folder of this tree."""
        raise NotImplementedError

    def label(self, relpath: str) -> str:
        """How a file is named in messages (a path relative to where the user runs)."""
        return relpath

    def refused(self, relpath: str) -> Problem | None:
        """Why `relpath` must not be read (a symbolic link under models/, or a path leading out of
        the repository), as a problem naming the offending path; None when it may be read."""
        return None

    def _refuse(self, relpath: str) -> None:
        problem = self.refused(relpath)
        if problem is not None:
            raise ConfigError([problem])


MODELS_DIR = "models"  # the folder of model folders at a repository's root


def repository_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding `models/` or `.git`; None when there is none."""
    here = Path(start).resolve()
    for folder in [here, *here.parents]:
        if (folder / MODELS_DIR).is_dir() or (folder / ".git").exists():
            return folder
    return None


def inside_repository(root: Path, relpath: str, what: str) -> Path:
    """`root/relpath` resolved (links followed), for code that reads a pinned file at training time.

    Raises:
        TrainingError: the path leads outside the repository (by `..`, an absolute path or a link).
    """
    from gitops.errors import TrainingError

    base = Path(root).resolve()
    path = (base / relpath).resolve()
    if not path.is_relative_to(base):
        raise TrainingError(f"{what} {relpath} resolves to {path}, outside the repository; "
                            "gitops reads only files inside the repository")
    return path


def _escapes(relpath: str) -> bool:
    """Does a relative path lead out of the repository by itself (absolute, or `..` past the root)?"""
    norm = posixpath.normpath(relpath)
    return relpath.startswith("/") or norm == ".." or norm.startswith("../")


def _escape_problem(label: str) -> Problem:
    return Problem(label, 1, 1, "", "leads outside the repository; gitops reads only files inside it")


def _link_problem(label: str, target: str) -> Problem:
    return Problem(label, 1, 1, "", f"is a symbolic link (to {target}); gitops reads no symbolic links under "
                   f"{MODELS_DIR}/: put the file itself there (extends: ../<model> shares another model's files)")


def _outside_problem(label: str, target: str) -> Problem:
    return Problem(label, 1, 1, "", f"is a symbolic link to {target}, outside the repository; "
                   "gitops reads only files inside the repository")


class FsTree(Tree):
    """The working folder at `root` (resolved), read from the file system; links refused as the module says."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._refusals: dict[str, Problem | None] = {}

    def refused(self, relpath: str) -> Problem | None:
        """See `Tree.refused`: the first symbolic link on the path (any under models/, others leading outside
        the repository), or a path that escapes by itself; answers are cached per path prefix.
        """
        if _escapes(relpath):
            return _escape_problem(relpath)
        parts = PurePosixPath(relpath).parts
        for n in range(1, len(parts) + 1):
            prefix = "/".join(parts[:n])
            if prefix not in self._refusals:
                self._refusals[prefix] = self._check_one(prefix, under_models=parts[0] == MODELS_DIR)
            if self._refusals[prefix] is not None:
                return self._refusals[prefix]
        return None

    def _check_one(self, prefix: str, *, under_models: bool) -> Problem | None:
        path = f"{self.root}/{prefix}"
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                return None
            target = os.readlink(path)
        except OSError:  # missing: the reader says so
            return None
        if under_models:
            return _link_problem(self.label(prefix), target)
        resolved = os.path.realpath(path)
        if resolved != str(self.root) and not resolved.startswith(f"{self.root}/"):
            return _outside_problem(self.label(prefix), target)
        return None

    def read(self, relpath: str) -> bytes | None:
        """The file's bytes; None when absent. ConfigError for a refused path (see `refused`)."""
        self._refuse(relpath)
        path = self.root / relpath
        if not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{self.label(relpath)}: cannot read: {exc.strerror}") from None

    def listdir(self, relpath: str) -> list[str]:
        """The names inside folder `root/relpath`, sorted; [] when it is no folder."""
        path = self.root / relpath
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def is_dir(self, relpath: str) -> bool:
        """True when `root/relpath` is a folder (links followed)."""
        return (self.root / relpath).is_dir()

    def label(self, relpath: str) -> str:
        """The file's path relative to the current directory when it lies below it, else absolute (for messages)."""
        # string operations: called for every file of every model (pathlib here cost ~0.3 s per 1,000 models)
        path = f"{self.root}/{relpath}"
        cwd = os.getcwd().rstrip("/") + "/"
        return path[len(cwd):] if path.startswith(cwd) else path


class GitTree(Tree):
    """The files of one commit, read with a single `git cat-file --batch` process (fast for many files)."""

    def __init__(self, root: Path, ref: str):
        self.root = Path(root).resolve()
        self.ref = ref
        self.commit = resolve_commit(self.root, ref)
        # path -> blob id: reads ask git for the object itself; a `commit:path` lookup walks the trees again
        # for every file (1,000 models: ~0.8 s of git time per commit, against ~0.05 s by id)
        self._blobs: dict[str, str] = {}
        self._links: set[str] = set()  # symbolic links are blobs of mode 120000 holding the target path
        self._files: set[str] = set()
        self._dirs: set[str] = set()
        self._listed: set[str] = set()
        self._list("models", "schemas", "gitops.yaml")
        self._cache: dict[str, bytes | None] = {}

    def _list(self, *tops: str) -> None:
        """List the files under these top-level paths (others, like a plugin package, on first listdir)."""
        tops = tuple(t for t in tops if t not in self._listed)
        if not tops:
            return
        listing = _git(self.root, "ls-tree", "-r", "-z", "--full-tree", self.commit, "--", *tops)
        entries = [entry for entry in listing.split("\0") if "\t" in entry]
        blobs = {entry.split("\t", 1)[1]: entry.split("\t", 1)[0].split()[2] for entry in entries}
        self._blobs.update(blobs)
        self._links |= {entry.split("\t", 1)[1] for entry in entries if entry.split()[0] == "120000"}
        self._files |= set(blobs)
        self._dirs |= {str(p) for f in blobs for p in PurePosixPath(f).parents if str(p) != "."}
        self._listed |= set(tops)

    def _ensure(self, relpath: str) -> str:
        relpath = str(PurePosixPath(relpath))
        top = relpath.split("/", 1)[0]
        if top not in self._listed and top not in (".", "..") and not _escapes(relpath):
            self._list(top)
        return relpath

    def refused(self, relpath: str) -> Problem | None:
        """See `Tree.refused`: a link blob (mode 120000) on the path under models/, or one whose target leads out
        of the repository, or a path that escapes by itself.
        """
        if _escapes(relpath):
            return _escape_problem(relpath)
        parts = PurePosixPath(relpath).parts
        for n in range(1, len(parts) + 1):
            prefix = "/".join(parts[:n])
            if prefix in self._links:
                target = self._link_target(prefix)
                if parts[0] == MODELS_DIR:
                    return _link_problem(self.label(prefix), target)
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(prefix), target))
                if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    return _outside_problem(self.label(prefix), target)
        return None

    def _link_target(self, relpath: str) -> str:
        return self._raw(relpath).decode("utf-8", "replace")

    def read(self, relpath: str) -> bytes | None:
        """The file's bytes at the commit; None when absent. Links outside models/ that stay inside the
        repository are followed, as the working folder would; ConfigError for a refused path."""
        relpath = str(PurePosixPath(relpath))
        self._refuse(relpath)
        for _ in range(MAX_LINK_HOPS):
            if relpath not in self._links:
                return self._raw(relpath)
            relpath = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), self._link_target(relpath)))
            self._refuse(relpath)
        raise ConfigError([Problem(self.label(relpath), 1, 1, "", "too many levels of symbolic links")])

    def _raw(self, relpath: str) -> bytes | None:
        if relpath not in self._files:
            listed = relpath == "gitops.yaml" or relpath.split("/", 1)[0] in ("models", "schemas")
            return None if listed else self._read_other(relpath)
        if relpath not in self._cache:
            proc = subprocess.run(
                ["git", "-C", str(self.root), "cat-file", "blob", f"{self.commit}:{relpath}"],
                capture_output=True,
                check=False,
            )
            if proc.returncode != 0:
                raise GitopsError(f"git cannot read {relpath} at {self.ref}: {proc.stderr.decode().strip()}")
            self._cache[relpath] = proc.stdout
        return self._cache[relpath]

    def _read_other(self, relpath: str) -> bytes | None:
        """A file outside models/ and schemas/ (a pinned data file or corpus): asked of git by path, once."""
        if relpath not in self._cache:
            proc = subprocess.run(["git", "-C", str(self.root), "cat-file", "blob", f"{self.commit}:{relpath}"],
                                  capture_output=True, check=False)
            self._cache[relpath] = proc.stdout if proc.returncode == 0 else None
        return self._cache[relpath]

    def read_many(self, relpaths: list[str]) -> None:
        """Prefetch several files with one `git cat-file --batch` (plans over many models)."""
        wanted = [p for p in relpaths if p in self._files and p not in self._cache]
        if not wanted:
            return
        request = "".join(f"{self._blobs[p]}\n" for p in wanted).encode()
        proc = subprocess.run(
            ["git", "-C", str(self.root), "cat-file", "--batch"], input=request, capture_output=True, check=True
        )
        data, pos = proc.stdout, 0
        for path in wanted:
            header_end = data.index(b"\n", pos)
            header = data[pos:header_end].split()
            size = int(header[2])
            self._cache[path] = data[header_end + 1 : header_end + 1 + size]
            pos = header_end + 1 + size + 1

    def listdir(self, relpath: str) -> list[str]:
        """The names inside folder `relpath` at the commit, sorted; [] when there is no such folder."""
        prefix = self._ensure(relpath) + "/"
        names = {p[len(prefix) :].split("/", 1)[0] for p in self._files | self._dirs if p.startswith(prefix)}
        return sorted(names)

    def is_dir(self, relpath: str) -> bool:
        """True when `relpath` is a folder (holds files) at the commit."""
        return self._ensure(relpath) in self._dirs

    def label(self, relpath: str) -> str:
        """`<ref>:<relpath>`, how git names a file at a revision (e.g. `origin/main:models/digits/model.yaml`)."""
        return f"{self.ref}:{relpath}"


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GitopsError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


def resolve_commit(root: Path, ref: str) -> str:
    """The full commit hash `ref` names (`git rev-parse --verify <ref>^{commit}`).

    Raises UsageError (exit 2) when the ref is not in this repository, with the fetch command a shallow
    clone needs.
    """
    proc = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise UsageError(
            f"git ref {ref!r} is not in this repository"
            " (in a shallow clone, fetch it: git fetch --depth=1 origin <sha>)"
        )
    return proc.stdout.strip()
