"""GTO's registry settings (`.gto` at the repository root): the stages a repository allows.

GTO (`gto/config.py`) reads `.gto` as YAML; `stages:` and `types:` list the allowed names (absent or
null: anything goes), and `gto assign`/`gto unassign` refuse a stage outside the list. We honour
`stages` the same way in `promote` and `demote`, so both tools agree on one registry. Other keys
(`types`, `enrichments`, `autoload_enrichments`, ...) configure GTO features we have no notion of
(artifact types belong to `gto annotate`'s index, which we never write) and are ignored without
error. GTO also reads `GTO_STAGES` from the environment (pydantic-settings, a JSON list), which takes
precedence over the file; so do we.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gitops.errors import ConfigError, Problem, UsageError

GTO_FILE = ".gto"
STAGES_ENV = "GTO_STAGES"
# GTO's own name rule (`gto/constants.py` `name`): what `.gto` may list. Our tag grammar is stricter
# (lowercase), so a listed name outside it is allowed yet can never be promoted to.
_GTO_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-/_]*[a-zA-Z0-9])?")


@dataclass(frozen=True)
class GtoConfig:
    """The parts of `.gto` we use. `stages` None: every stage name in the grammar is allowed."""

    stages: tuple[str, ...] | None = None
    source: str = ""  # where `stages` came from, for messages

    def check_stage(self, stage: str) -> str:
        """`stage` if allowed; UsageError (exit 2) naming the allowed stages and their source otherwise."""
        from gitops.registry import tags

        tags.check_stage(stage)
        if self.stages is not None and stage not in self.stages:
            allowed = ", ".join(self.stages) or "none"
            raise UsageError(f"stage {stage!r} is not allowed by {self.source} (allowed stages: {allowed})")
        return stage


def load(root: Path) -> GtoConfig:
    """Read `<root>/.gto` (and `$GTO_STAGES`); an absent file allows every stage.

    Raises:
        ConfigError (exit 1): `.gto` is not YAML, or `stages` is not a list of valid stage names.
    """
    env = os.environ.get(STAGES_ENV)
    if env is not None:
        try:
            stages = json.loads(env)
        except ValueError:
            stages = env  # not JSON: reported below as not a list
        if stages is not None and (not isinstance(stages, list) or not all(
                isinstance(s, str) and _GTO_NAME.fullmatch(s) for s in stages)):
            raise UsageError(f"${STAGES_ENV} must be a JSON list of stage names, e.g. '[\"dev\", \"prod\"]'")
        return GtoConfig(tuple(stages) if stages is not None else None, f"${STAGES_ENV}")
    path = Path(root) / GTO_FILE
    if not path.is_file():
        return GtoConfig()
    from gitops.config.yamlio import load_yaml_text

    doc = load_yaml_text(path.read_bytes(), GTO_FILE)
    data = doc.data
    if data is None:
        return GtoConfig()
    if not isinstance(data, dict):
        mark = doc.mark_for(())
        raise ConfigError([Problem(mark.file, mark.line, mark.col, "", "expected a mapping of GTO settings")])
    stages = data.get("stages")
    if stages is None:
        return GtoConfig()
    problems = []
    if not isinstance(stages, list):
        mark = doc.mark_for(("stages",))
        problems.append(Problem(mark.file, mark.line, mark.col, "stages", "expected a list of stage names"))
    else:
        for i, stage in enumerate(stages):
            if not isinstance(stage, str) or not _GTO_NAME.fullmatch(stage):
                mark = doc.mark_for(("stages", i))
                problems.append(Problem(mark.file, mark.line, mark.col, f"stages[{i}]",
                                        f"{stage!r} is not a GTO name (letters, digits, '-', '_', '/')"))
    if problems:
        raise ConfigError(problems)
    return GtoConfig(tuple(stages), f"{GTO_FILE} (stages:)")
