"""The GitHub event payload ($GITHUB_EVENT_PATH): one reader for the PR number (report, trackers) and labels
(budget override); a missing, unreadable or odd payload means "no PR", never an error."""

from __future__ import annotations

import json

import pytest

from gitops.repo import ci_event


def _event(tmp_path, doc) -> str:
    path = tmp_path / "event.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return str(path)


def test_pull_request_event_gives_number_and_labels(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _event(tmp_path, {"number": 7, "pull_request": {"number": 7, "labels": [
        {"name": "gitops:budget-override"}, {"name": "docs"}, "not-a-label"]}})
    monkeypatch.setenv("GITHUB_EVENT_PATH", path)
    assert ci_event.pr_number() == 7
    assert ci_event.pr_labels() == ["gitops:budget-override", "docs"]
    assert ci_event.pr_labels(path) == ["gitops:budget-override", "docs"]  # an explicit path, as the CLI passes


def test_a_top_level_number_counts_and_other_events_have_no_pr(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_EVENT_PATH", _event(tmp_path, {"number": "12", "action": "labeled"}))
    assert ci_event.pr_number() == 12 and ci_event.pr_labels() == []
    monkeypatch.setenv("GITHUB_EVENT_PATH", _event(tmp_path, {"ref": "refs/heads/main", "pusher": {}}))
    assert ci_event.pr_number() is None and ci_event.pr_labels() == []


@pytest.mark.parametrize("doc", ["{not json", "[1, 2]", json.dumps({"pull_request": "x", "number": "seven"}),
                                 json.dumps({"pull_request": {"labels": "x"}})])
def test_unreadable_or_odd_payloads_mean_no_pr(tmp_path, monkeypatch: pytest.MonkeyPatch, doc: str) -> None:
    monkeypatch.setenv("GITHUB_EVENT_PATH", _event(tmp_path, doc))
    assert ci_event.pr_number() is None and ci_event.pr_labels() == []


def test_outside_a_workflow_there_is_no_event(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_EVENT_PATH", raising=False)
    assert ci_event.event() == {} and ci_event.pr_number() is None and ci_event.pr_labels() == []
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(tmp_path / "missing.json"))
    assert ci_event.event() == {} and ci_event.pr_number() is None
