"""The github backend against the GitHub emulator in tests/github_server.py (127.0.0.1, no network)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from github_server import GitHubServer  # noqa: E402

from gitops.backends.base import COMMENT_MARKER, AssetNotFoundError, TagExistsError  # noqa: E402
from gitops.backends.github import GitHubBackend  # noqa: E402
from gitops.errors import EXIT_SERVICE, EXIT_USAGE, GitopsError, ServiceError, UsageError  # noqa: E402

TOKEN = "ghs_Sup3rS3cretT0ken1234567890abcdefXYZ"
BOT = "github-actions[bot]"
COMMIT = "3f786850e387550fdab836ed7e6dc881de23001b"
TAG = "digits-mlp@v1.2.0"
STAGE = "digits-mlp#production#3"


@pytest.fixture
def gh():
    with GitHubServer(token=TOKEN) as server:
        yield server


def backend(gh: GitHubServer, **kw) -> GitHubBackend:
    settings = {"backoff": 0.01, "seconds_between_writes": 0, "max_wait": 5.0, "timeout": 5, "retries": 3, **kw}
    return GitHubBackend(TOKEN, gh.full_name, gh.url, **settings)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    tarball = tmp_path / "digits-mlp-v1.2.0.tar.gz"
    tarball.write_bytes(bytes(range(256)) * 800)  # 200 KiB
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("0" * 64 + "  digits-mlp-v1.2.0.tar.gz\n")
    return [tarball, sums]


def uploads(gh: GitHubServer) -> list:
    return gh.requests_matching("POST", r"^/uploads/")


# --- configuration -----------------------------------------------------------------------
def test_from_env_reads_settings_and_requires_token_and_repository(gh):
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": gh.full_name, "GITHUB_API_URL": gh.url + "/",
           "GITOPS_GITHUB_MAX_WAIT": "7", "GITOPS_GITHUB_BACKOFF": "0.01", "GITOPS_GITHUB_WRITE_INTERVAL": "0"}
    b = GitHubBackend.from_env(env)
    assert (b.max_wait, b.backoff, b.api_url, b.repository) == (7.0, 0.01, gh.url, gh.full_name)
    assert b.list_tags() == []
    assert TOKEN not in repr(b)

    for missing in ("GITHUB_TOKEN", "GITHUB_REPOSITORY"):
        with pytest.raises(UsageError, match=missing) as err:
            GitHubBackend.from_env({k: v for k, v in env.items() if k != missing})
        assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match="OWNER/NAME"):
        GitHubBackend.from_env({**env, "GITHUB_REPOSITORY": "no-slash"})
    with pytest.raises(UsageError, match="GITOPS_GITHUB_MAX_WAIT"):
        GitHubBackend.from_env({**env, "GITOPS_GITHUB_MAX_WAIT": "soon"})
    assert GitHubBackend.from_env({k: v for k, v in env.items() if k != "GITHUB_API_URL"}).api_url == (
        "https://api.github.com"
    )


def test_bad_token_gives_a_clear_error(gh):
    bad = "ghs_wrongwrongwrongwrong"
    b = GitHubBackend(bad, gh.full_name, gh.url, backoff=0.01)
    with pytest.raises(UsageError) as err:
        b.list_tags()
    msg = str(err.value)
    assert "HTTP 401" in msg and "Bad credentials" in msg and "GITHUB_TOKEN" in msg
    assert bad not in msg
    assert len(gh.requests) == 1  # a 401 is not retried


# --- tags ----------------------------------------------------------------------------------
def test_create_tag_twice_raises_tag_exists_and_list_tags_reads_annotations(gh):
    b = backend(gh)
    info = b.create_tag(TAG, COMMIT, "bump: minor\nfingerprint: abc")
    assert (info.name, info.commit, info.message) == (TAG, COMMIT, "bump: minor\nfingerprint: abc")
    assert info.tagger.startswith(BOT + " <")
    b.create_tag(STAGE, COMMIT, "version: v1.2.0")
    with pytest.raises(TagExistsError):
        b.create_tag(TAG, COMMIT, "a racing run")
    gh.add_lightweight_tag("old-light", COMMIT)

    tags = {t.name: t for t in backend(gh).list_tags()}
    assert set(tags) == {TAG, STAGE, "old-light"}
    assert tags[TAG].message == "bump: minor\nfingerprint: abc" and tags[TAG].commit == COMMIT
    assert tags[STAGE].message == "version: v1.2.0"
    assert tags[TAG].date.startswith("20") and tags[TAG].tagger == info.tagger
    assert tags["old-light"].message == "" and tags["old-light"].commit == COMMIT
    # names with "@" and "#" went over the wire percent-encoded and came back intact
    assert gh.requests_matching("GET", "/git/ref/tags/digits-mlp@v1.2.0$")


def test_create_tag_survives_a_lost_answer(gh):
    """POST git/refs took effect but its answer was a 502: the retry's 422 is recognised as ours."""
    gh.inject("POST", r"/git/refs$", status=502, after_processing=True)
    info = backend(gh).create_tag(TAG, COMMIT, "m")
    assert info.name == TAG and gh.tag_names() == [TAG]


def test_list_tags_paginates_and_caches_tag_objects(gh):
    for i in range(150):
        gh.add_annotated_tag(f"m@v1.{i}.0", COMMIT, f"release {i}")
    b = backend(gh)
    tags = b.list_tags()
    assert len(tags) == 150 and {t.message for t in tags} == {f"release {i}" for i in range(150)}
    assert len(gh.requests_matching("GET", "/git/matching-refs/")) == 2
    gh.reset_log()
    assert len(b.list_tags()) == 150
    assert [r.method for r in gh.requests] == ["GET", "GET"]  # ref pages only: tag objects are cached


def test_delete_tag_removes_tag_and_release(gh, files):
    b = backend(gh)
    b.create_tag(TAG, COMMIT, "m")
    b.publish_release(TAG, "t", "n", files)
    b.delete_tag(TAG)
    assert gh.tag_names() == [] and gh.releases == {} and gh.assets == {}
    b.delete_tag(TAG)  # already gone: no error


# --- releases ------------------------------------------------------------------------------
def test_publish_release_is_idempotent_and_downloads_are_identical(gh, files, tmp_path):
    b = backend(gh)
    b.create_tag(TAG, COMMIT, "m")
    url = b.publish_release(TAG, "digits-mlp v1.2.0", "notes", files)
    assert url.endswith("/releases/tag/digits-mlp%40v1.2.0")
    assert len(uploads(gh)) == 2
    assert b.list_assets(TAG) == sorted(f.name for f in files)

    gh.reset_log()
    assert b.publish_release(TAG, "digits-mlp v1.2.0", "notes", files) == url
    assert uploads(gh) == [] and all(r.method == "GET" for r in gh.requests)
    assert len(gh.releases) == 1

    got = b.download_asset(TAG, files[0].name, tmp_path / "dl" / files[0].name)
    assert got.read_bytes() == files[0].read_bytes()
    assert [p.name for p in got.parent.iterdir()] == [files[0].name]  # no temp file left
    with pytest.raises(AssetNotFoundError, match="no-such"):
        b.download_asset(TAG, "no-such.tar.gz", tmp_path / "x")
    with pytest.raises(AssetNotFoundError):
        b.download_asset("digits-mlp@v9.9.9", files[0].name, tmp_path / "x")
    assert b.list_assets("digits-mlp@v9.9.9") == []


def test_publish_release_finds_a_release_created_by_another_run(gh, files):
    b = backend(gh)
    gh.inject("POST", r"/releases$", status=502, after_processing=True)  # created; answer lost
    b.publish_release(STAGE, "t", "n", files[:1])
    assert len(gh.releases) == 1 and list(gh.release_assets(STAGE)) == [files[0].name]


def test_failed_upload_then_rerun_completes(gh, files):
    b = backend(gh, retries=2)
    b.create_tag(TAG, COMMIT, "m")
    gh.inject_drop("POST", r"^/uploads/", leave_partial=True)  # the connection drops mid-body
    gh.inject("POST", r"^/uploads/", status=502, times=None)  # then GitHub stays down
    with pytest.raises(ServiceError, match=r"upload digits-mlp-v1\.2\.0\.tar\.gz .*HTTP 502") as err:
        b.publish_release(TAG, "t", "n", files)
    assert err.value.exit_code == EXIT_SERVICE
    statuses = [r.status for r in uploads(gh)]
    # the dropped body, then GitHub's 502s until the retries run out (under load a retry may itself be
    # cut off before the emulator answers, which it records as None): three attempts, one run
    assert len(statuses) == 3 and statuses[0] is None and 502 in statuses[1:], statuses
    gh.clear_faults()

    backend(gh).publish_release(TAG, "t", "n", files)  # a re-run completes the release
    assert gh.release_assets(TAG) == {f.name: f.read_bytes() for f in files}
    assert all(a["state"] == "uploaded" for a in gh.assets.values())


def test_dropped_upload_is_retried_within_one_run(gh, files):
    b = backend(gh)
    b.create_tag(TAG, COMMIT, "m")
    gh.inject_drop("POST", r"^/uploads/", leave_partial=True, after_bytes=4096)
    b.publish_release(TAG, "t", "n", files)
    assert gh.release_assets(TAG) == {f.name: f.read_bytes() for f in files}


def test_half_finished_asset_is_replaced(gh, files):
    b = backend(gh)
    b.create_tag(TAG, COMMIT, "m")
    b.publish_release(TAG, "t", "n", files[1:])
    gh.add_release_asset(TAG, files[0].name, b"partial", state="starter")
    b.publish_release(TAG, "t", "n", files)
    assert gh.release_assets(TAG)[files[0].name] == files[0].read_bytes()
    assert len(uploads(gh)) == 2  # SHA256SUMS once, the tarball once


# --- comments and pull requests ------------------------------------------------------------
def test_one_sticky_comment_across_pages_second_body_wins(gh):
    pr = gh.add_pull()
    for i in range(120):
        gh.add_comment(pr, f"review comment {i}", login=f"user{i % 3}")
    gh.add_comment(pr, f"{COMMENT_MARKER}\nquoted by a human", login="mallory")  # not the bot's
    gh.add_comment(pr, "an unrelated bot comment", login=BOT, user_type="Bot")
    b = backend(gh)
    first = b.upsert_comment(pr, f"{COMMENT_MARKER}\nreport 1")
    for i in range(2, 5):
        assert b.upsert_comment(pr, f"report {i}") == first  # the marker is added when missing
    ours = [body for body in gh.comment_bodies(pr, BOT) if body.startswith(COMMENT_MARKER)]
    assert ours == [f"{COMMENT_MARKER}\nreport 4"]
    assert len(gh.comment_bodies(pr)) == 123
    assert f"{COMMENT_MARKER}\nquoted by a human" in gh.comment_bodies(pr, "mallory")
    assert gh.requests_matching("GET", r"/issues/\d+/comments$") and any(
        "page=2" in r.path for r in gh.requests_matching("GET", r"/comments$")
    )


def test_duplicates_from_a_race_are_collapsed_to_the_oldest(gh):
    pr = gh.add_pull()
    oldest = gh.add_comment(pr, f"{COMMENT_MARKER}\nold A", login=BOT, user_type="Bot")
    gh.add_comment(pr, f"{COMMENT_MARKER}\nold B", login=BOT, user_type="Bot")
    url = backend(gh).upsert_comment(pr, "new")
    assert url.endswith(f"#issuecomment-{oldest}")
    assert gh.comment_bodies(pr) == [f"{COMMENT_MARKER}\nnew"]


def test_two_racing_upserts_leave_one_comment(gh):
    for delay in (0.2, 0.0, 0.0):
        pr = gh.add_pull()
        gh.reset_log()
        if delay:  # both runs list the (empty) comments before either post lands: a certain race
            gh.inject_delay("POST", r"/comments$", delay, times=2)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(i: int, pr: int = pr, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            b = backend(gh)
            b._my_login()
            barrier.wait()
            try:
                b.upsert_comment(pr, f"report from run {i}")
            except BaseException as e:  # reported by the assert below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        bodies = gh.comment_bodies(pr)
        assert len(bodies) == 1 and bodies[0].startswith(COMMENT_MARKER + "\nreport from run ")
        if delay:
            assert len(gh.requests_matching("POST", "/comments$")) == 2
            assert gh.requests_matching("DELETE", "/comments/")  # the duplicate was removed


def test_installation_token_without_user_endpoint_acts_as_actions_bot():
    with GitHubServer(token=TOKEN, user_endpoint="forbidden") as gh:
        pr = gh.add_pull()
        existing = gh.add_comment(pr, f"{COMMENT_MARKER}\nold", login=BOT, user_type="Bot")
        assert backend(gh).upsert_comment(pr, "new").endswith(f"#issuecomment-{existing}")
        assert gh.comment_bodies(pr) == [f"{COMMENT_MARKER}\nnew"]


def test_comment_on_missing_pr_is_a_clear_error(gh):
    with pytest.raises(GitopsError, match="#99 is not an issue or pull request"):
        backend(gh).upsert_comment(99, "x")


def test_open_pull_request_returns_url_and_reuses_an_open_one(gh):
    b = backend(gh)
    url = b.open_pull_request("gitops/rollback-digits", "main", "Roll back", "body")
    assert url and url.endswith("/pull/1")
    assert b.open_pull_request("gitops/rollback-digits", "main", "Roll back", "body") == url


# --- failures ------------------------------------------------------------------------------
def test_retries_through_502s_and_a_secondary_rate_limit(gh, files):
    b = backend(gh, retries=4)
    pr = gh.add_pull()
    gh.inject("GET", r"/git/matching-refs/", status=502, times=3)
    gh.inject("POST", r"/git/tags$", status=503, times=2)
    gh.inject("*", r"^/uploads/", status=500, times=1)
    gh.inject_secondary_rate_limit("POST", r"/comments$", retry_after=1)
    t0 = time.monotonic()
    assert b.list_tags() == []
    b.create_tag(TAG, COMMIT, "m")
    b.publish_release(TAG, "t", "n", files)
    b.upsert_comment(pr, "report")
    assert time.monotonic() - t0 >= 1.0  # Retry-After was honoured
    assert gh.comment_bodies(pr) == [f"{COMMENT_MARKER}\nreport"]
    assert gh.release_assets(TAG) == {f.name: f.read_bytes() for f in files}
    assert all(f.hits == f.times for f in gh.faults)


def test_primary_rate_limit_within_the_cap_is_waited_out(gh):
    waits: list[float] = []
    b = backend(gh, sleep=waits.append, max_wait=30)
    gh.inject_primary_rate_limit("GET", r"/git/matching-refs/", reset_in=5, status=429)
    assert b.list_tags() == []
    assert len(waits) == 1 and 4 <= waits[0] <= 7


def test_github_down_gives_service_error(gh):
    gh.inject("*", r".", status=502, times=None)
    b = backend(gh, retries=3)
    with pytest.raises(ServiceError) as err:
        b.list_tags()
    assert err.value.exit_code == EXIT_SERVICE
    assert "list tags" in str(err.value) and "HTTP 502" in str(err.value) and "4 attempts" in str(err.value)
    assert len(gh.requests) == 4


def test_rate_limit_reset_beyond_the_cap_gives_service_error(gh):
    waits: list[float] = []
    gh.inject_primary_rate_limit("*", r".", reset_in=3600, times=None)
    with pytest.raises(ServiceError, match=r"rate limit .*reset at .*waited 0 s") as err:
        backend(gh, max_wait=60, sleep=waits.append).list_tags()
    assert err.value.exit_code == EXIT_SERVICE and waits == []

    gh.clear_faults()
    gh.inject_secondary_rate_limit("*", r".", retry_after=20, times=None)
    with pytest.raises(ServiceError, match=r"waited 40 s") as err:
        backend(gh, max_wait=50, sleep=waits.append).list_tags()
    assert waits == [20, 20]


def test_token_never_leaks(gh, files, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    b = backend(gh, retries=1)
    pr = gh.add_pull()
    b.create_tag(TAG, COMMIT, "m")
    gh.inject_drop("POST", r"^/uploads/")
    gh.inject("GET", r"/releases/tags/", status=502)
    b.publish_release(TAG, "t", "n", files)
    b.download_asset(TAG, files[1].name, tmp_path / "s")
    b.upsert_comment(pr, "report")
    b.list_tags()
    for fault in (lambda: gh.inject("*", r".", status=502, times=None),
                  lambda: gh.inject_primary_rate_limit("*", r".", reset_in=3600, times=None),
                  lambda: gh.inject("POST", r"/git/refs$", status=403, body={"message": "Forbidden"})):
        gh.clear_faults()
        fault()
        with pytest.raises(GitopsError) as err:
            b.create_tag("x@v1.0.0", COMMIT, "m")
        texts += [str(err.value), repr(err.value), str(err.value.__cause__), str(err.value.__context__)]
    out = capsys.readouterr()
    texts += [caplog.text, out.out, out.err]
    assert "github" in caplog.text.lower()  # PyGithub's and our debug logs were captured
    for text in texts:
        assert TOKEN not in text
    for r in gh.requests:
        assert "authorization" not in {k.lower() for k in r.headers}
        assert TOKEN not in r.path and TOKEN.encode() not in r.body
        assert all(TOKEN not in v for v in r.headers.values())


# --- pull requests, workflow runs and artifacts as backend-neutral records (PyGithub's methods) -----------
def test_pulls_runs_and_artifacts_come_back_as_records(gh):
    from gitops.backends.base import ArtifactInfo, PullRequestInfo, WorkflowRunInfo

    b = backend(gh)
    head, merge = "a" * 40, "b" * 40
    mine = gh.add_pull(head="tune", head_sha=head)
    fork = gh.add_pull(head="evil", head_sha="c" * 40, head_repo="someone/models")
    gh.merge_pull(mine, merge)
    gh.merge_pull(fork, merge)
    open_pr = gh.add_pull(head="wip", head_sha="d" * 40)
    gh.commit_pulls.setdefault(merge, []).append(open_pr)
    got = {p.number: p for p in b.pulls_for_commit(merge)}
    assert got[mine] == PullRequestInfo(mine, True, head, gh.full_name, "main")
    assert got[fork].head_repository == "someone/models" and got[fork].merged
    assert not got[open_pr].merged
    assert b.pulls_for_commit("e" * 40) == []
    assert b.pull_head_sha(mine) == head
    with pytest.raises(GitopsError, match="not a pull request"):
        b.pull_head_sha(999)

    gh.add_workflow_run(11, path=".github/workflows/pr-train.yml@refs/heads/main", event="pull_request_target",
                        head_sha=head, head_repo="someone/models")
    assert b.workflow_run(11) == WorkflowRunInfo(11, "pull_request_target", ".github/workflows/pr-train.yml", head,
                                                 "someone/models", gh.full_name)
    assert b.workflow_run(12) is None

    older = gh.add_artifact("run-x", b"zip1", run_id=11, created_at="2024-01-01T00:00:00Z")
    newer = gh.add_artifact("run-x", b"zip22", run_id=12, head_sha="f" * 40, created_at="2024-02-01T00:00:00Z")
    gh.add_artifact("run-x", b"gone", run_id=11, expired=True)
    gh.add_artifact("other", b"z", run_id=11)
    listed = b.list_artifacts("run-x")
    assert [a.id for a in listed] == [newer, older]  # newest first, expired and other names left out
    assert listed[1] == ArtifactInfo(older, "run-x", 4, "2024-01-01T00:00:00Z", 11, head)
    assert [a.id for a in b.list_artifacts("run-x", run_id=12)] == [newer]  # run 12 is not recorded: still listed
    assert b.list_artifacts("nothing") == []
    # one request per listing: artifacts of a run are listed without reading the run first
    gh.reset_log()
    b.list_artifacts("run-x", run_id=11)
    assert [r.path.split("?")[0] for r in gh.requests] == [f"/repos/{gh.full_name}/actions/runs/11/artifacts"]


def test_hosted_backend_pushes_no_tags_and_says_what_it_can(gh):
    b = backend(gh)
    assert b.push_tags(["x@v1.0.0"]) is False and gh.requests == []
    assert b.hosted and b.hosts_pull_requests and b.keeps_ci_artifacts and b.repository == gh.full_name
