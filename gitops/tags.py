"""GTO's git-tag grammar: parse and format registry tags, and compute a model's state from them.

The forms (as `gto` writes them, `gto/constants.py` `tag_re` and `gto/tag.py` `TagTemplates`):

| action        | tag                              |
| ------------- | -------------------------------- |
| register      | `<model>@v1.2.3`                 |
| deregister    | `<model>@v1.2.3!#<N>`            |
| assign        | `<model>#<stage>#<N>`            |
| unassign      | `<model>#<stage>!#<N>`           |
| deprecate     | `<model>@deprecated#<N>`         |

`N` is one counter per model, shared by every counted tag: the next tag takes the highest plus one.
A stage tag sits on the commit of the version it assigns; GTO finds the version by that commit.
State is computed like GTO does: events in time order, a stage belongs to a version while its last
assignment/unassignment event there is an assignment, and the version whose stage was activated
most recently holds the stage (one version per stage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from gitops.backends.base import TagInfo
from gitops.errors import UsageError

_NAME = r"[a-z0-9]([a-z0-9-/]*[a-z0-9])?"
_SEMVER = (
    r"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<prerelease>(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?P<buildmetadata>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
TAG_RE = re.compile(
    rf"^(?P<artifact>{_NAME})"
    rf"(((#(?P<stage>{_NAME})|@(?P<version>v{_SEMVER}))(?P<cancel>!?))|@((?P<deprecated>deprecated)|(?P<created>created)))"
    r"(#(?P<counter>[0-9]+))?$"
)
STAGE_RE = re.compile(rf"^{_NAME}$")
VERSION_RE = re.compile(rf"^v?{_SEMVER}$")


class Action(StrEnum):
    REGISTER = "register"
    DEREGISTER = "deregister"
    ASSIGN = "assign"
    UNASSIGN = "unassign"
    DEPRECATE = "deprecate"
    CREATE = "create"


@dataclass(frozen=True)
class ParsedTag:
    model: str
    action: Action
    version: str | None = None  # "v1.2.3"
    stage: str | None = None
    counter: int | None = None


@dataclass(frozen=True, order=True)
class SemVer:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> SemVer:
        m = VERSION_RE.match(text.strip())
        if not m or m["prerelease"] or m["buildmetadata"]:
            raise UsageError(f"version {text!r} is not MAJOR.MINOR.PATCH (e.g. v1.2.0)")
        return cls(int(m["major"]), int(m["minor"]), int(m["patch"]))

    @classmethod
    def try_parse(cls, text: str) -> SemVer | None:
        try:
            return cls.parse(text)
        except UsageError:
            return None

    def bump(self, part: str) -> SemVer:
        if part == "major":
            return SemVer(self.major + 1, 0, 0)
        if part == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        if part == "patch":
            return SemVer(self.major, self.minor, self.patch + 1)
        raise ValueError(part)

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"


FIRST_VERSION = SemVer(1, 0, 0)


def parse(name: str) -> ParsedTag | None:
    """A registry tag's meaning, or None for any other tag."""
    m = TAG_RE.match(name)
    if not m:
        return None
    counter = int(m["counter"]) if m["counter"] else None
    cancel = m["cancel"] == "!"
    if m["version"]:
        action = Action.DEREGISTER if cancel else Action.REGISTER
        return ParsedTag(m["artifact"], action, version=m["version"], counter=counter)
    if m["stage"]:
        action = Action.UNASSIGN if cancel else Action.ASSIGN
        return ParsedTag(m["artifact"], action, stage=m["stage"], counter=counter)
    if m["deprecated"]:
        return ParsedTag(m["artifact"], Action.DEPRECATE, counter=counter)
    return ParsedTag(m["artifact"], Action.CREATE, counter=counter)


def version_tag(model: str, version: SemVer | str) -> str:
    return f"{model}@{_v(version)}"


def deregister_tag(model: str, version: SemVer | str, counter: int) -> str:
    return f"{model}@{_v(version)}!#{counter}"


def assign_tag(model: str, stage: str, counter: int) -> str:
    check_stage(stage)
    return f"{model}#{stage}#{counter}"


def unassign_tag(model: str, stage: str, counter: int) -> str:
    check_stage(stage)
    return f"{model}#{stage}!#{counter}"


def deprecate_tag(model: str, counter: int) -> str:
    return f"{model}@deprecated#{counter}"


RESERVED_STAGES = ("latest", "greatest")  # MODEL@latest names the newest version (GTO: also `greatest`)


def check_stage(stage: str) -> str:
    if stage in RESERVED_STAGES:
        raise UsageError(f"stage {stage!r} is reserved (MODEL@{stage} names the newest version); pick another name")
    if not STAGE_RE.match(stage) or "/" in stage:
        raise UsageError(f"stage {stage!r} must be lowercase letters, digits and '-' (e.g. production)")
    return stage


def _v(version: SemVer | str) -> str:
    return str(version) if isinstance(version, SemVer) else str(SemVer.parse(version))


def next_counter(tags: list[TagInfo], model: str) -> int:
    """GTO's counter: one more than the highest `#N` on any tag of `model`."""
    highest = 0
    for tag in tags:
        parsed = parse(tag.name)
        if parsed and parsed.model == model and parsed.counter is not None:
            highest = max(highest, parsed.counter)
    return highest + 1


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One registry tag of one model, in the order GTO applies them."""

    action: Action
    model: str
    tag: str
    commit: str
    date: str
    tagger: str
    message: str
    version: str | None = None  # for stage events: the version found by the tag's commit
    stage: str | None = None
    counter: int | None = None


@dataclass
class VersionState:
    version: str  # "v1.2.3"
    commit: str
    tag: str
    date: str
    tagger: str
    message: str
    active: bool = True  # False once deregistered
    stages: list[str] = field(default_factory=list)  # stages this version currently holds

    @property
    def semver(self) -> SemVer:
        return SemVer.parse(self.version)


@dataclass
class ModelState:
    model: str
    versions: dict[str, VersionState] = field(default_factory=dict)  # "v1.2.3" -> state
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "v1.2.3"
    events: list[Event] = field(default_factory=list)  # all, oldest first
    deprecated: bool = False

    def active_versions(self) -> list[VersionState]:
        """Registered, not deregistered, newest (highest SemVer) first."""
        return sorted((v for v in self.versions.values() if v.active), key=lambda v: v.semver, reverse=True)

    def latest(self) -> VersionState | None:
        active = self.active_versions()
        return active[0] if active else None

    def highest_ever(self) -> SemVer | None:
        """Highest version ever registered (deregistered ones too: a version number is never reused)."""
        if not self.versions:
            return None
        return max(v.semver for v in self.versions.values())

    def find(self, version: str) -> VersionState | None:
        semver = SemVer.try_parse(version)
        return self.versions.get(str(semver)) if semver else None


def _sort_key(tag: TagInfo, parsed: ParsedTag) -> tuple:
    # Tagger dates have one-second resolution; the counter (and then the SemVer) orders ties.
    semver = SemVer.try_parse(parsed.version or "")
    return (tag.date, parsed.counter if parsed.counter is not None else -1, semver or SemVer(0, 0, 0), tag.name)


def model_state(tags: list[TagInfo], model: str) -> ModelState:
    """The registry state of one model from all tags (other models' tags are ignored)."""
    return registry_state(tags, only=model).get(model, ModelState(model))


def registry_state(tags: list[TagInfo], only: str | None = None) -> dict[str, ModelState]:
    parsed_tags = []
    for tag in tags:
        parsed = parse(tag.name)
        if parsed is None or (only is not None and parsed.model != only):
            continue
        parsed_tags.append((tag, parsed))
    parsed_tags.sort(key=lambda tp: _sort_key(*tp))

    states: dict[str, ModelState] = {}
    # stage activations: model -> stage -> version -> (activated sort key) or None when unassigned
    activations: dict[str, dict[str, dict[str, tuple | None]]] = {}
    for tag, p in parsed_tags:
        state = states.setdefault(p.model, ModelState(p.model))
        version = p.version
        if p.action in (Action.ASSIGN, Action.UNASSIGN):
            version = _version_at(state, tag.commit)
        event = Event(p.action, p.model, tag.name, tag.commit, tag.date, tag.tagger, tag.message,
                      version, p.stage, p.counter)
        state.events.append(event)
        if p.action == Action.REGISTER:
            state.versions.setdefault(p.version, VersionState(p.version, tag.commit, tag.name, tag.date,
                                                              tag.tagger, tag.message))
            state.versions[p.version].active = True
        elif p.action == Action.DEREGISTER:
            if p.version in state.versions:
                state.versions[p.version].active = False
        elif p.action == Action.DEPRECATE:
            state.deprecated = True
        elif p.action in (Action.ASSIGN, Action.UNASSIGN) and version is not None:
            slot = activations.setdefault(p.model, {}).setdefault(p.stage, {})
            slot[version] = _sort_key(tag, p) if p.action == Action.ASSIGN else None

    for model, state in states.items():
        for stage, by_version in activations.get(model, {}).items():
            live = [(key, v) for v, key in by_version.items()
                    if key is not None and v in state.versions and state.versions[v].active]
            if live:
                _, holder = max(live)
                state.stages[stage] = holder
                state.versions[holder].stages.append(stage)
    return states


def _version_at(state: ModelState, commit: str) -> str | None:
    """The version registered on `commit` (the newest, if several)."""
    found = [v for v in state.versions.values() if v.commit == commit]
    if not found:
        return None
    return max(found, key=lambda v: v.semver).version


# --- references: MODEL@VERSION | MODEL@STAGE | MODEL#STAGE | MODEL ----------------------------


@dataclass(frozen=True)
class Ref:
    model: str
    version: str | None = None  # "v1.2.3"
    stage: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{self.model}@{self.version}"
        if self.stage:
            return f"{self.model}@{self.stage}"
        return self.model


MODEL_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def parse_ref(text: str) -> Ref:
    """`digits-mlp`, `digits-mlp@v1.2.0`, `digits-mlp@1.2.0`, `digits-mlp@production`, `digits-mlp#production`."""
    text = text.strip()
    model, sep, rest = text.partition("@")
    if not sep:
        model, sep, rest = text.partition("#")
        if sep:
            return Ref(_check_model(model), stage=check_stage(rest))
        return Ref(_check_model(model))
    _check_model(model)
    if rest in ("latest", "greatest", ""):
        return Ref(model)
    semver = SemVer.try_parse(rest)
    if semver is not None:
        return Ref(model, version=str(semver))
    if rest[:1].isdigit() or (rest[:1] == "v" and rest[1:2].isdigit()):
        raise UsageError(f"{text}: version must be MAJOR.MINOR.PATCH (e.g. {model}@v1.2.0)")
    return Ref(model, stage=check_stage(rest))


def _check_model(model: str) -> str:
    if not MODEL_RE.match(model):
        raise UsageError(f"{model!r} is not a model name (lowercase letters, digits, '-')")
    return model


def resolve_ref(state: ModelState, ref: Ref) -> VersionState:
    """The version a reference names (latest active version when it names none)."""
    if ref.version:
        found = state.versions.get(ref.version)
        if found is None:
            known = ", ".join(v.version for v in state.active_versions()) or "none"
            raise UsageError(f"{ref.model} has no version {ref.version} (released: {known})")
        return found
    if ref.stage:
        holder = state.stages.get(ref.stage)
        if holder is None:
            known = ", ".join(f"{s} -> {v}" for s, v in sorted(state.stages.items())) or "none"
            raise UsageError(f"no version of {ref.model} is in stage {ref.stage!r} (stages: {known})")
        return state.versions[holder]
    latest = state.latest()
    if latest is None:
        raise UsageError(f"{ref.model} has no releases yet (release one: gitops release {ref.model})")
    return latest
