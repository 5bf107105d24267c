"""The GitHub Actions event this job runs for (`$GITHUB_EVENT_PATH`): the pull request's number and labels.

One reader for the event payload (GitHub's webhook JSON, "pull_request" events and those that carry a
top-level `number`); the report, the trackers and the budget check ask it instead of parsing the file.
Outside a workflow, or with an unreadable file, every answer is empty: these are defaults, never errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

EVENT_PATH_ENV = "GITHUB_EVENT_PATH"


def event(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The event payload at `path` (default `$GITHUB_EVENT_PATH`); {} when there is none or it is unreadable."""
    path = path if path is not None else os.environ.get(EVENT_PATH_ENV)
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def pr_number(path: str | os.PathLike | None = None) -> int | None:
    """The pull request number of the event (`pull_request.number`, else a top-level `number`); None outside one."""
    doc = event(path)
    pull = doc.get("pull_request")
    number = (pull.get("number") if isinstance(pull, dict) else None) or doc.get("number")
    try:
        return int(number) if number else None
    except (TypeError, ValueError):
        return None


def pr_labels(path: str | os.PathLike | None = None) -> list[str]:
    """Label names of the event's pull request (empty outside a pull_request event)."""
    pull = event(path).get("pull_request")
    labels = pull.get("labels") if isinstance(pull, dict) else None
    return [label.get("name", "") for label in labels or [] if isinstance(label, dict)]
