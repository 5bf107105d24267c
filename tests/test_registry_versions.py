"""The registry read the way users mean it: instants, SemVer precedence, pre-releases, `.gto` stages.

Each case replays a user's bug report (issue 14, faults 6-9): tags written by git with real tagger
dates and offsets, `git tag -a` by hand as GTO users do, and the CLI in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loop_support import commit_all, edit, fake_run, git
from typer.testing import CliRunner

from gitops import api
from gitops.backends.base import TagInfo
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.errors import UsageError
from gitops.registry import tags, versions

GOOD = {"test/accuracy": 0.95, "test/loss": 0.2}


def _t(name: str, commit: str, date: str, message: str = "") -> TagInfo:
    return TagInfo(name=name, commit=commit, message=message, tagger="T <t@x>", date=date)


# --- fault 6: instants, not text -----------------------------------------------------------------


def test_stage_order_compares_instants_across_offsets():
    ts = [
        _t("m1@v1.0.0", "c1", "2026-01-01T09:00:00+00:00"),
        _t("m1@v1.1.0", "c2", "2026-01-01T09:30:00+00:00"),
        _t("m1#staging#1", "c2", "2026-01-01T15:00:00+00:00"),
        _t("m1#staging#2", "c1", "2026-01-01T11:00:00-05:00"),  # 16:00Z: the later one
    ]
    st = tags.model_state(ts, "m1")
    assert st.stages == {"staging": "v1.0.0"}
    assert [e.tag for e in st.events][-1] == "m1#staging#2"
    # the same instant written with two offsets: the #N counter decides (GTO's counter)
    ts2 = ts[:2] + [_t("m1#prod#4", "c1", "2026-01-01T17:00:00+02:00"), _t("m1#prod#3", "c2", "2026-01-01T15:00:00Z")]
    assert tags.model_state(ts2, "m1").stages == {"prod": "v1.0.0"}
    assert tags.instant("2026-01-01T11:00:00-05:00") == tags.instant("2026-01-01T16:00:00Z")
    assert tags.instant("2026-01-01T16:00:00") == tags.instant("2026-01-01T16:00:00+00:00")  # naive: UTC
    assert tags.instant("yesterday") is None


def test_promote_at_offsets_then_history_and_pull_follow_the_later_instant(repo, monkeypatch):
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-03-01T08:00:00+00:00")
    two_releases(repo)
    runner = CliRunner()
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-03-01T15:00:00+00:00")
    assert runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "staging"]).exit_code == 0
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-03-01T11:00:00-05:00")  # 16:00Z
    assert runner.invoke(app, ["promote", "wine-mlp@v1.0.0", "--to", "staging"]).exit_code == 0
    doc = json.loads(runner.invoke(app, ["history", "wine-mlp", "--json"]).stdout)
    assert doc["stages"] == {"staging": "v1.0.0"}
    pulled = runner.invoke(app, ["pull", "wine-mlp@staging"])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.strip().endswith("v1.0.0")


# --- fault 7: SemVer precedence, pre-releases, ambiguity, unreadable tags -------------------------


def test_semver_precedence_follows_the_specification():
    # semver.org item 11's own example, shuffled
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    shuffled = [ordered[i] for i in (5, 0, 11, 3, 7, 1, 9, 4, 10, 2, 8, 6)]
    assert [str(v) for v in sorted(tags.SemVer.parse(s) for s in shuffled)] == [f"v{s}" for s in ordered]
    a, b = tags.SemVer.parse("v1.2.0+build.1"), tags.SemVer.parse("v1.2.0+build.2")
    assert a.precedence == b.precedence and a != b and not a < b and not b < a
    assert str(tags.SemVer.parse("v1.2.0-rc.1").bump("minor")) == "v1.3.0"
    for bad in ("v1.2", "01.2.0", "v1.2.0-", "v1.2.0-01", "v1.2.0\n", " v1.2.0", "v1.2.0+"):
        assert tags.SemVer.try_parse(bad) is None, bad


def test_prereleases_are_exact_reference_only_and_ambiguous_or_unreadable_tags_are_skipped():
    ts = [
        _t("m1@v1.0.0", "c1", "2026-01-01T00:00:00Z"),
        _t("m1@v1.1.0+build.1", "c2", "2026-01-02T00:00:00Z"),
        _t("m1@v1.1.0+build.2", "c3", "2026-01-03T00:00:00Z"),  # later, same precedence: ignored
        _t("m1@v1.2.0-rc.1", "c4", "2026-01-04T00:00:00Z"),
        _t("m1@v1.3", "c4", "2026-01-04T00:00:00Z"),  # not in GTO's grammar
        _t("m1@v1.4.0", "c5", ""),  # no tagger date (a lightweight tag on GitHub)
        _t("m1#qa#1", "c9", "2026-01-05T00:00:00Z"),  # on a commit with no version
        _t("m2@v3.0.0", "d1", "2026-01-01T00:00:00Z"),
    ]
    states = tags.registry_state(ts)
    st = states["m1"]
    assert sorted(st.versions) == ["v1.0.0", "v1.1.0+build.1", "v1.2.0-rc.1"]
    assert st.latest().version == "v1.1.0+build.1"  # never the pre-release
    assert str(st.highest_ever()) == "v1.1.0+build.1"  # the base of the next bump: not the pre-release
    assert str(st.highest_ever().bump("minor")) == "v1.2.0"
    assert tags.resolve_ref(st, tags.parse_ref("m1@v1.2.0-rc.1")).version == "v1.2.0-rc.1"
    assert tags.resolve_ref(st, tags.parse_ref("m1@1.1.0")).version == "v1.1.0+build.1"
    with pytest.raises(UsageError, match="build.2"):  # the ignored tag is named
        tags.resolve_ref(st, tags.parse_ref("m1@v1.1.0+build.2"))
    joined = "\n".join(st.warnings)
    for name in ("m1@v1.1.0+build.2", "m1@v1.3", "m1@v1.4.0", "m1#qa#1"):
        assert name in joined, name
    assert states["m2"].latest().version == "v3.0.0" and states["m2"].warnings == []
    only_pre = tags.model_state([_t("m3@v1.0.0-rc.1", "e1", "2026-01-01T00:00:00Z")], "m3")
    with pytest.raises(UsageError, match="m3@v1.0.0-rc.1"):
        tags.resolve_ref(only_pre, tags.parse_ref("m3"))


def test_one_prerelease_tag_breaks_nothing(repo, tmp_path):
    two_releases(repo)
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "wine-mlp@v1.2.0-rc.1", "-m", "x", head)
    git(repo, "tag", "-a", "wine-mlp@v1.1.0+rebuild", "-m", "x", head)  # ambiguous with v1.1.0
    git(repo, "tag", "-a", "wine-mlp@v1.3", "-m", "x", head)  # unreadable
    runner = CliRunner()
    hist = runner.invoke(app, ["history", "wine-mlp"])
    assert hist.exit_code == 0, hist.output
    assert "v1.2.0-rc.1" in hist.stdout and "pre-release" in hist.stdout
    for name in ("wine-mlp@v1.1.0+rebuild", "wine-mlp@v1.3"):
        assert name in hist.stderr and "warning:" in hist.stderr
    assert hist.stderr.count("wine-mlp@v1.3") == 1  # once per command, though the tags are read often
    pulled = runner.invoke(app, ["pull", "wine-mlp"])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.strip().endswith("v1.1.0")
    exact = versions.resolve(LocalBackend(repo), "wine-mlp@v1.2.0-rc.1")[1]
    assert exact.version == "v1.2.0-rc.1"
    site = runner.invoke(app, ["site", "--out", str(tmp_path / "site")])
    assert site.exit_code == 0, site.output
    page = (tmp_path / "site" / "models" / "wine-mlp.html").read_text(encoding="utf-8")
    for version in ("v1.0.0", "v1.1.0", "v1.2.0-rc.1"):  # every readable version has its row
        assert f'<a href="#{version}">{version}</a>' in page, version
    assert 'v1.2.0-rc.1</a> <span class="badge deregistered">pre-release</span>' in page
    # the next release bumps v1.1.0 (the latest release), not the pre-release
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.04", "learning_rate: 0.03")
    commit_all(repo, "lr again")
    fake_run(repo, "wine-mlp", {"test/accuracy": 0.96, "test/loss": 0.15})
    result = api.release(repo, LocalBackend(repo), "wine-mlp")
    assert result.version == "v1.2.0"
    meta = versions.release_metadata(next(t for t in LocalBackend(repo).list_tags() if t.name == result.tag).message)
    assert meta["previous"] == "v1.1.0"
    # the report's baseline is the newest release, never a pre-release
    from gitops.registry import report

    assert report.baseline_from_release(repo, LocalBackend(repo), "wine-mlp").version == "v1.2.0"


def test_build_metadata_versions_make_valid_image_tags_and_labels():
    from gitops.serve import deploy

    assert deploy.image_name("m1", "v1.2.0+build.7") == "gitops-m1:v1.2.0_build.7"
    docs = deploy.kubernetes("m1", "v1.2.0-rc.1+b", "img", deploy.DeployOptions())
    labels = [d["metadata"]["labels"]["app.kubernetes.io/version"] for d in docs.values() if "labels" in d["metadata"]]
    assert labels and set(labels) == {"v1.2.0-rc.1_b"}


# --- fault 8: .gto's allowed stages ----------------------------------------------------------------


def test_gto_allowed_stages_are_honoured(repo, monkeypatch):
    two_releases(repo)
    (repo / ".gto").write_text("stages: [dev, production]\ntypes: [model, dataset]\nenrichments: []\n"
                               "some_future_key: 1\n", encoding="utf-8")
    runner = CliRunner()
    refused = runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "qa"])
    assert refused.exit_code == 2 and "'qa' is not allowed by .gto" in refused.output
    assert "dev, production" in refused.output
    assert not [t for t in LocalBackend(repo).list_tags() if "#qa" in t.name]
    assert runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "production"]).exit_code == 0
    assert runner.invoke(app, ["demote", "wine-mlp", "--from", "qa"]).exit_code == 2
    monkeypatch.setenv("GTO_STAGES", '["qa"]')  # GTO's environment setting wins over the file
    assert runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "qa"]).exit_code == 0
    monkeypatch.delenv("GTO_STAGES")
    (repo / ".gto").write_text("stages:\n  - dev\n  - {bad: 1}\n", encoding="utf-8")
    bad = runner.invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "dev"])
    assert bad.exit_code == 1 and ".gto:3:5: stages[1]" in bad.output and "Traceback" not in bad.output
    (repo / ".gto").write_text("types: [model]\n", encoding="utf-8")  # no stages: any stage
    assert runner.invoke(app, ["promote", "wine-mlp@v1.0.0", "--to", "canary"]).exit_code == 0


# --- fault 9: full matches -------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["staging\n", "staging ", "\nstaging", "Staging", "stag ing"])
def test_stage_names_must_match_whole(stage):
    with pytest.raises(UsageError):
        tags.check_stage(stage)
    with pytest.raises(UsageError):
        tags.parse_ref(f"m1@{stage}")


@pytest.mark.parametrize("ref", ["m1\n", "m1@v1.0.0\n", "m1#prod\n", "m1\n@v1.0.0"])
def test_references_must_match_whole(ref):
    with pytest.raises(UsageError):
        tags.parse_ref(ref)
    assert tags.parse(ref) is None  # nor is it a registry tag


def test_promote_refuses_a_stage_with_a_trailing_newline(repo):
    two_releases(repo)
    result = CliRunner().invoke(app, ["promote", "wine-mlp@v1.1.0", "--to", "staging\n"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not [t for t in LocalBackend(repo).list_tags() if "staging" in t.name]


def test_schema_patterns_match_whole_strings_in_files_settings_and_handed_over_reports(repo):
    from gitops.registry import report

    edit(repo, "models/wine-mlp/release.yaml", "headline_metric: test/accuracy", 'headline_metric: "test/accuracy\\n"')
    result = CliRunner().invoke(app, ["validate", "models/wine-mlp"])
    assert result.exit_code == 1, result.output
    assert "release.headline_metric:" in result.output and "'test/accuracy\\n'" in result.output
    from gitops.config import sweep
    from gitops.repo.tree import FsTree

    edit(repo, "models/digits-mlp/sweep.yaml", "metric: val/accuracy", 'metric: "val/accuracy\\n"')
    _, problems = sweep.load("digits-mlp", FsTree(repo))
    assert any("sweep.metric" in str(p) for p in problems), problems
    doc = {"version": 1, "head_sha": "a" * 40 + "\n", "pr": None, "ok": True, "models": []}
    with pytest.raises(Exception, match="schema"):  # a fork's report.json: the head must be 40 hex, whole
        report.validate_report_json(json.dumps(doc), head_sha=None, pr=1)
    doc["head_sha"] = "a" * 40
    report.validate_report_json(json.dumps(doc), head_sha=None, pr=1)


def test_numbers_read_from_text_are_ascii_digits_only():
    from gitops.learn import parallel
    from gitops.repo.doctor import check_coordinator
    from gitops.site.data import _int

    assert "\u00b2".isdigit()  # why isdigit() alone is not enough: int("\u00b2") raises
    assert _int("\u00b2") is None and _int("12") == 12
    assert not check_coordinator("host:\u00b2", 0, timeout=0.1).ok
    with pytest.raises(UsageError, match="HOST:PORT"):
        parallel.cluster_from("host:\u00b2", 2, 0, env={})


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def repo(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    return example_repo


def two_releases(repo: Path) -> None:
    """wine-mlp v1.0.0 and v1.1.0 on the local backend, from fake (untrained) runs."""
    fake_run(repo, "wine-mlp", GOOD)
    api.release(repo, LocalBackend(repo), "wine-mlp")
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    commit_all(repo, "lr")
    fake_run(repo, "wine-mlp", {"test/accuracy": 0.97, "test/loss": 0.1})
    api.release(repo, LocalBackend(repo), "wine-mlp")
