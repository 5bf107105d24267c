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
from dataclasses import field
from enum import StrEnum
from typing import TYPE_CHECKING

from gitops import logs
from gitops.errors import UsageError
from gitops.records import record

if TYPE_CHECKING:  # annotations only: the backend module loads where tags are listed
    from gitops.backends.base import TagInfo

_NAME = r"[a-z0-9]([a-z0-9-/]*[a-z0-9])?"
_SEMVER = (
    r"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<prerelease>(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?P<buildmetadata>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
# Every pattern here is applied with `fullmatch` (never `match` with `$`, which also matches before a
# final newline: `staging\n` must not pass as a stage).
TAG_RE = re.compile(
    rf"(?P<artifact>{_NAME})"
    rf"(((#(?P<stage>{_NAME})|@(?P<version>v{_SEMVER}))(?P<cancel>!?))|@((?P<deprecated>deprecated)|(?P<created>created)))"
    r"(#(?P<counter>[0-9]+))?"
)
STAGE_RE = re.compile(_NAME)
VERSION_RE = re.compile(rf"v?{_SEMVER}")
# A tag that names a model and then `@` or `#` but is not in the grammar above (`m@v1.2`, `m@1.2.0`):
# GTO skips it; we skip it too, with a warning naming it.
_LOOKS_LIKE_OURS = re.compile(rf"(?P<artifact>{_NAME})[@#].*", re.S)


class Action(StrEnum):
    """What a registry tag does, as GTO names it (`create` is GTO's `<model>@created`, kept for completeness)."""

    REGISTER = "register"
    DEREGISTER = "deregister"
    ASSIGN = "assign"
    UNASSIGN = "unassign"
    DEPRECATE = "deprecate"
    CREATE = "create"


@record(frozen=True)
class ParsedTag:
    """A registry tag's meaning: model, action, and the version (`v1.2.3`), stage and `#N` counter it names."""

    model: str
    action: Action
    version: str | None = None  # "v1.2.3"
    stage: str | None = None
    counter: int | None = None


@record(frozen=True)
class SemVer:
    """A semantic version as GTO's grammar allows it: `v1.2.3`, `v1.2.3-rc.1`, `v1.2.3+build.5`.

    Ordering is SemVer 2.0.0 precedence (https://semver.org/#spec-item-11): numbers compare
    numerically, a pre-release sorts before its release, pre-release identifiers compare one by one
    (numeric below alphanumeric, a shorter list below a longer one), and build metadata is ignored.
    Two versions differing only in build metadata are equal in precedence yet not `==`: the registry
    treats such a pair as ambiguous (see `registry_state`). GTO itself orders with the `semver` package,
    which follows the same specification.
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""  # build metadata, without the '+'

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """`v1.2.3`, `1.2.3`, `v1.2.3-rc.1`, `v1.2.3+b.1` -> SemVer; UsageError naming `text` otherwise."""
        m = VERSION_RE.fullmatch(text) if isinstance(text, str) else None
        if not m:
            raise UsageError(f"version {text!r} is not a semantic version "
                             "(MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], e.g. v1.2.0)")
        pre = tuple(m["prerelease"].split(".")) if m["prerelease"] else ()
        return cls(int(m["major"]), int(m["minor"]), int(m["patch"]), pre, m["buildmetadata"] or "")

    @classmethod
    def try_parse(cls, text: str) -> SemVer | None:
        """Like `parse`, but None instead of UsageError for text that is not a version."""
        try:
            return cls.parse(text)
        except UsageError:
            return None

    @property
    def is_prerelease(self) -> bool:
        """True for a version with a pre-release part (`v1.2.0-rc.1`): never `latest`, never a bump base."""
        return bool(self.prerelease)

    @property
    def precedence(self) -> tuple:
        """A key that sorts versions by SemVer precedence (build metadata plays no part)."""
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self.precedence < other.precedence

    def __le__(self, other: SemVer) -> bool:
        return self.precedence <= other.precedence

    def __gt__(self, other: SemVer) -> bool:
        return self.precedence > other.precedence

    def __ge__(self, other: SemVer) -> bool:
        return self.precedence >= other.precedence

    def bump(self, part: str) -> SemVer:
        """The next release after this one (pre-release and build metadata dropped)."""
        if part == "major":
            return SemVer(self.major + 1, 0, 0)
        if part == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        if part == "patch":
            return SemVer(self.major, self.minor, self.patch + 1)
        raise ValueError(part)

    def __str__(self) -> str:
        pre = "-" + ".".join(self.prerelease) if self.prerelease else ""
        build = "+" + self.build if self.build else ""
        return f"v{self.major}.{self.minor}.{self.patch}{pre}{build}"


FIRST_VERSION = SemVer(1, 0, 0)


def parse(name: str) -> ParsedTag | None:
    """A registry tag's meaning, or None for any other tag."""
    m = TAG_RE.fullmatch(name)
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
    """The register tag of a version, `<model>@v1.2.3` (GTO's form). Raises UsageError for a bad version."""
    return f"{model}@{_v(version)}"


def deregister_tag(model: str, version: SemVer | str, counter: int) -> str:
    """The deregister tag, `<model>@v1.2.3!#<counter>` (GTO's form). Raises UsageError for a bad version."""
    return f"{model}@{_v(version)}!#{counter}"


def assign_tag(model: str, stage: str, counter: int) -> str:
    """The stage assignment tag, `<model>#<stage>#<counter>` (GTO's form). Raises UsageError for a bad stage."""
    check_stage(stage)
    return f"{model}#{stage}#{counter}"


def unassign_tag(model: str, stage: str, counter: int) -> str:
    """The stage removal tag, `<model>#<stage>!#<counter>` (GTO's form). Raises UsageError for a bad stage."""
    check_stage(stage)
    return f"{model}#{stage}!#{counter}"


def deprecate_tag(model: str, counter: int) -> str:
    """The model deprecation tag, `<model>@deprecated#<counter>` (GTO's form)."""
    return f"{model}@deprecated#{counter}"


RESERVED_STAGES = ("latest", "greatest")  # MODEL@latest names the newest version (GTO: also `greatest`)


def check_stage(stage: str) -> str:
    """`stage` itself when it is a valid stage name (lowercase letters, digits, `-`; no `/`).

    Raises UsageError for another name or a reserved one (`latest`, `greatest`: they name the newest version).
    """
    if stage in RESERVED_STAGES:
        raise UsageError(f"stage {stage!r} is reserved (MODEL@{stage} names the newest version); pick another name")
    if not isinstance(stage, str) or not STAGE_RE.fullmatch(stage) or "/" in stage:
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



def instant(date: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 tagger date (`2026-01-01T15:00:00+00:00`, `...Z`).

    Dates compare as instants, never as text: `11:00-05:00` is later than `15:00+00:00`. A date
    without an offset is read as UTC (git always writes one). None when `date` is not a date.
    """
    from datetime import UTC, datetime

    if not isinstance(date, str) or not date:
        return None
    try:
        parsed = datetime.fromisoformat(date.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@record(frozen=True)
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


@record
class VersionState:
    """One registered version as the tags make it: its tag, commit, tagger and date (ISO 8601), the tag
    message (release metadata), whether it is still active and the stages it holds now.
    """

    version: str  # "v1.2.3", "v1.2.3-rc.1", "v1.2.3+build.5": as the tag spells it
    commit: str
    tag: str
    date: str
    tagger: str
    message: str
    active: bool = True  # False once deregistered
    stages: list[str] = field(default_factory=list)  # stages this version currently holds

    @property
    def semver(self) -> SemVer:
        """The version parsed as `SemVer` (for ordering)."""
        return SemVer.parse(self.version)

    @property
    def prerelease(self) -> bool:
        """True when the version is a pre-release (`v1.2.0-rc.1`)."""
        return self.semver.is_prerelease


@record
class ModelState:
    """One model's registry state computed from its tags (GTO's rules, see the module docstring): versions,
    stage -> version, every event oldest first, deprecation, and warnings for skipped tags.
    """

    model: str
    versions: dict[str, VersionState] = field(default_factory=dict)  # "v1.2.3" -> state
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "v1.2.3"
    events: list[Event] = field(default_factory=list)  # all, oldest first
    deprecated: bool = False
    warnings: list[str] = field(default_factory=list)  # tags skipped, each named

    def active_versions(self) -> list[VersionState]:
        """Registered, not deregistered (pre-releases included), highest precedence first."""
        return sorted((v for v in self.versions.values() if v.active), key=lambda v: v.semver, reverse=True)

    def releases(self) -> list[VersionState]:
        """Active versions that are not pre-releases, highest first: the candidates for "latest"."""
        return [v for v in self.active_versions() if not v.prerelease]

    def latest(self) -> VersionState | None:
        """The highest active release; a pre-release never is (it is reached by its exact reference)."""
        releases = self.releases()
        return releases[0] if releases else None

    def highest_ever(self) -> SemVer | None:
        """Highest release ever registered, the base of the next bump.

        Deregistered versions count (a version number is never reused); pre-releases do not: after
        `v1.2.0-rc.1`, a minor bump of v1.1.0 gives v1.2.0.
        """
        releases = [v.semver for v in self.versions.values() if not v.prerelease]
        return max(releases) if releases else None

    def find(self, version: str) -> VersionState | None:
        """The version `version` names: its exact spelling, else the one of equal precedence.

        `v1.2.0` finds `v1.2.0+build.5` (only one version per precedence is ever kept); a reference
        that spells build metadata must match it exactly.
        """
        semver = SemVer.try_parse(version)
        if semver is None:
            return None
        exact = self.versions.get(str(semver))
        if exact is not None or semver.build:
            return exact
        for v in self.versions.values():
            if v.semver.precedence == semver.precedence:
                return v
        return None


def _sort_key(tag: TagInfo, parsed: ParsedTag, when: float) -> tuple:
    # Instants, not text: tagger dates carry offsets. Dates have one-second resolution; the `#N`
    # counter orders ties (as GTO's counter does), a version's registration (no counter) first.
    semver = SemVer.try_parse(parsed.version or "")
    return (when, parsed.counter if parsed.counter is not None else -1,
            semver.precedence if semver else (), tag.name)


def model_state(tags: list[TagInfo], model: str) -> ModelState:
    """The registry state of one model from all tags (other models' tags are ignored)."""
    return registry_state(tags, only=model).get(model, ModelState(model))


def registry_state(tags: list[TagInfo], only: str | None = None) -> dict[str, ModelState]:
    """Every model's registry state (or only `only`'s), computed from tags as GTO computes it.

    A tag that cannot be read (not in the grammar, no tagger date, a version equal in precedence to
    an earlier one, a stage tag on a commit holding no version) is skipped: its model's `warnings`
    name it, and it is logged once on the `gitops.registry` logger. It never blocks other versions
    or other models.
    """
    parsed_tags = []
    skipped: dict[str, list[str]] = {}

    def skip(model: str, message: str) -> None:
        skipped.setdefault(model, []).append(message)

    for tag in tags:
        parsed = parse(tag.name)
        if parsed is None:
            loose = _LOOKS_LIKE_OURS.fullmatch(tag.name)
            if loose and (only is None or loose["artifact"] == only):
                skip(loose["artifact"], f"tag {tag.name!r} is not in GTO's tag grammar "
                                        "(<model>@vX.Y.Z[-PRE][+BUILD], <model>#<stage>#<N>, ...); ignored")
            continue
        if only is not None and parsed.model != only:
            continue
        when = instant(tag.date)
        if when is None:
            skip(parsed.model, f"tag {tag.name!r} has no readable tagger date ({tag.date or 'none'}: "
                               "a lightweight tag?); ignored")
            continue
        parsed_tags.append((tag, parsed, when))
    parsed_tags.sort(key=lambda tpw: _sort_key(*tpw))

    states: dict[str, ModelState] = {}
    # stage activations: model -> stage -> version -> (activated sort key) or None when unassigned
    activations: dict[str, dict[str, dict[str, tuple | None]]] = {}
    for tag, p, when in parsed_tags:
        state = states.setdefault(p.model, ModelState(p.model))
        version = p.version
        if p.action == Action.REGISTER:
            same = _same_version(state, p.version)
            if same is not None and same != p.version:
                earlier = state.versions[same].tag
                skip(p.model, f"tag {tag.name!r} ignored: {p.version} equals {same} ({earlier}) in SemVer "
                              "precedence (they differ only in build metadata), so it is ambiguous")
                continue
        if p.action in (Action.ASSIGN, Action.UNASSIGN):
            version = _version_at(state, tag.commit)
            if version is None:
                skip(p.model, f"stage tag {tag.name!r} is on commit {tag.commit[:12]}, where no version of "
                              f"{p.model} is registered; ignored")
        event = Event(p.action, p.model, tag.name, tag.commit, tag.date, tag.tagger, tag.message,
                      version, p.stage, p.counter)
        state.events.append(event)
        if p.action == Action.REGISTER:
            state.versions.setdefault(version, VersionState(version, tag.commit, tag.name, tag.date,
                                                            tag.tagger, tag.message))
            state.versions[version].active = True
        elif p.action == Action.DEREGISTER:
            if version in state.versions:
                state.versions[version].active = False
        elif p.action == Action.DEPRECATE:
            state.deprecated = True
        elif p.action in (Action.ASSIGN, Action.UNASSIGN) and version is not None:
            slot = activations.setdefault(p.model, {}).setdefault(p.stage, {})
            slot[version] = _sort_key(tag, p, when) if p.action == Action.ASSIGN else None

    for model, state in states.items():
        for stage, by_version in activations.get(model, {}).items():
            live = [(key, v) for v, key in by_version.items()
                    if key is not None and v in state.versions and state.versions[v].active]
            if live:
                _, holder = max(live)
                state.stages[stage] = holder
                state.versions[holder].stages.append(stage)
    for model, messages in skipped.items():
        state = states.setdefault(model, ModelState(model))
        state.warnings.extend(messages)
        for message in messages:
            logs.logger("gitops.registry").warning("%s", message)  # logging loads at the first warning
    return states


def _same_version(state: ModelState, version: str) -> str | None:
    """The registered version equal to `version` in precedence (its own spelling first), or None."""
    if version in state.versions:
        return version
    key = SemVer.parse(version).precedence
    for v in state.versions:
        if SemVer.parse(v).precedence == key:
            return v
    return None


def _version_at(state: ModelState, commit: str) -> str | None:
    """The version registered on `commit` (the highest, if several; a release above its pre-releases)."""
    found = [v for v in state.versions.values() if v.commit == commit]
    if not found:
        return None
    return max(found, key=lambda v: v.semver).version


# --- references: MODEL@VERSION | MODEL@STAGE | MODEL#STAGE | MODEL ----------------------------


@record(frozen=True)
class Ref:
    """A parsed reference (see `parse_ref`): a model with a version, a stage, or neither (its latest release)."""

    model: str
    version: str | None = None  # "v1.2.3"
    stage: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{self.model}@{self.version}"
        if self.stage:
            return f"{self.model}@{self.stage}"
        return self.model


MODEL_RE = re.compile(r"[a-z][a-z0-9-]{0,61}[a-z0-9]")  # fullmatch only


def parse_ref(text: str) -> Ref:
    """`digits-mlp`, `digits-mlp@v1.2.0`, `digits-mlp@1.2.0`, `digits-mlp@production`, `digits-mlp#production`.

    A version may be a pre-release or carry build metadata (`@v1.2.0-rc.1`): that is the only way
    to reach a pre-release. Every part must match whole: `staging\\n` is not a stage.
    """
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
        raise UsageError(f"{text!r}: not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], "
                         f"e.g. {model}@v1.2.0)")
    return Ref(model, stage=check_stage(rest))


def _check_model(model: str) -> str:
    if not MODEL_RE.fullmatch(model):
        raise UsageError(f"{model!r} is not a model name (lowercase letters, digits, '-')")
    return model


def resolve_ref(state: ModelState, ref: Ref) -> VersionState:
    """The version a reference names (the latest release, never a pre-release, when it names none)."""
    if ref.version:
        found = state.find(ref.version)
        if found is None:
            known = ", ".join(v.version for v in state.active_versions()) or "none"
            skipped = [w for w in state.warnings if ref.version in w]
            why = f"; {skipped[0]}" if skipped else ""
            raise UsageError(f"{ref.model} has no version {ref.version} (released: {known}){why}")
        return found
    if ref.stage:
        holder = state.stages.get(ref.stage)
        if holder is None:
            known = ", ".join(f"{s} -> {v}" for s, v in sorted(state.stages.items())) or "none"
            raise UsageError(f"no version of {ref.model} is in stage {ref.stage!r} (stages: {known})")
        return state.versions[holder]
    latest = state.latest()
    if latest is None:
        pre = [v.version for v in state.active_versions()]
        hint = f"; pre-releases are reached by exact reference only: {ref.model}@{pre[0]}" if pre else ""
        raise UsageError(f"{ref.model} has no releases yet (release one: gitops release {ref.model}){hint}")
    return latest
