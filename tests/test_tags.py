"""GTO's tag grammar and the registry state computed from tags (no git needed)."""

from __future__ import annotations

import pytest

from gitops.backends.base import TagInfo
from gitops.errors import UsageError
from gitops.registry import tags


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("digits-mlp@v1.2.3", tags.ParsedTag("digits-mlp", tags.Action.REGISTER, version="v1.2.3")),
        ("digits-mlp@v1.2.3!#4", tags.ParsedTag("digits-mlp", tags.Action.DEREGISTER, version="v1.2.3", counter=4)),
        ("digits-mlp#production#2", tags.ParsedTag("digits-mlp", tags.Action.ASSIGN, stage="production", counter=2)),
        ("digits-mlp#production!#3", tags.ParsedTag("digits-mlp", tags.Action.UNASSIGN, stage="production", counter=3)),
        ("digits-mlp@deprecated#5", tags.ParsedTag("digits-mlp", tags.Action.DEPRECATE, counter=5)),
        ("digits-mlp#staging", tags.ParsedTag("digits-mlp", tags.Action.ASSIGN, stage="staging")),
    ],
)
def test_parse_gto_forms(name, expected):
    assert tags.parse(name) == expected


@pytest.mark.parametrize("name", ["v1.0.0", "digits-mlp@1.2.3", "Digits@v1.0.0", "m@v1.0", "x#prod#a", "release-2024"])
def test_other_tags_are_not_registry_tags(name):
    assert tags.parse(name) is None


def test_format_round_trips():
    for name in (tags.version_tag("m1", "1.2.3"), tags.deregister_tag("m1", "v1.2.3", 7),
                 tags.assign_tag("m1", "prod", 1), tags.unassign_tag("m1", "prod", 2), tags.deprecate_tag("m1", 3)):
        assert tags.parse(name) is not None
    assert tags.version_tag("m1", "1.2.3") == "m1@v1.2.3"
    assert tags.assign_tag("m1", "prod", 1) == "m1#prod#1"
    assert tags.unassign_tag("m1", "prod", 2) == "m1#prod!#2"
    assert tags.deregister_tag("m1", "v1.2.3", 7) == "m1@v1.2.3!#7"
    assert tags.deprecate_tag("m1", 3) == "m1@deprecated#3"


def _t(name, commit, date, message=""):
    return TagInfo(name=name, commit=commit, message=message, tagger="T <t@x>", date=date)


def test_counter_is_per_model_and_shared_by_all_counted_tags():
    tag_list = [_t("a1#prod#1", "c1", "2026-01-01T00:00:01"), _t("a1@v1.0.0!#4", "c1", "2026-01-01T00:00:02"),
                _t("b1#prod#9", "c2", "2026-01-01T00:00:03"), _t("a1@v1.0.0", "c1", "2026-01-01T00:00:00")]
    assert tags.next_counter(tag_list, "a1") == 5
    assert tags.next_counter(tag_list, "b1") == 10
    assert tags.next_counter(tag_list, "c1") == 1


def test_state_stages_follow_latest_assignment_and_unassignment():
    ts = [
        _t("m1@v1.0.0", "c1", "2026-01-01T00:00:00"),
        _t("m1@v1.1.0", "c2", "2026-01-01T00:00:10"),
        _t("m1#prod#1", "c1", "2026-01-01T00:00:20"),
        _t("m1#prod#2", "c2", "2026-01-01T00:00:30"),
        _t("m1#staging#3", "c1", "2026-01-01T00:00:30"),
        _t("other@v9.0.0", "c9", "2026-01-01T00:00:00"),
    ]
    st = tags.model_state(ts, "m1")
    assert st.stages == {"prod": "v1.1.0", "staging": "v1.0.0"}
    assert st.latest().version == "v1.1.0"
    # unassigning prod from v1.1.0 leaves v1.0.0's earlier, still active assignment holding it (GTO)
    st = tags.model_state([*ts, _t("m1#prod!#4", "c2", "2026-01-01T00:00:40")], "m1")
    assert st.stages["prod"] == "v1.0.0"
    # ties in time are ordered by the counter
    st = tags.model_state([*ts, _t("m1#prod#5", "c1", "2026-01-01T00:00:30")], "m1")
    assert st.stages["prod"] == "v1.0.0"


def test_deregistered_versions_and_deprecation():
    ts = [_t("m1@v1.0.0", "c1", "2026-01-01T00:00:00"), _t("m1@v1.1.0", "c2", "2026-01-01T00:00:10"),
          _t("m1#prod#1", "c2", "2026-01-01T00:00:20"), _t("m1@v1.1.0!#2", "c2", "2026-01-01T00:00:30")]
    st = tags.model_state(ts, "m1")
    assert st.latest().version == "v1.0.0"
    assert "prod" not in st.stages  # a deregistered version holds no stage
    assert st.highest_ever() == tags.SemVer(1, 1, 0)  # its number is never reused
    st = tags.model_state([*ts, _t("m1@deprecated#3", "c2", "2026-01-01T00:00:40")], "m1")
    assert st.deprecated


def test_refs():
    assert tags.parse_ref("m1@v1.2.0") == tags.Ref("m1", version="v1.2.0")
    assert tags.parse_ref("m1@1.2.0") == tags.Ref("m1", version="v1.2.0")
    assert tags.parse_ref("m1@production") == tags.Ref("m1", stage="production")
    assert tags.parse_ref("m1#production") == tags.Ref("m1", stage="production")
    assert tags.parse_ref("m1") == tags.Ref("m1")
    with pytest.raises(UsageError):
        tags.parse_ref("m1@1.2")
    with pytest.raises(UsageError):
        tags.parse_ref("M1@v1.0.0")
    st = tags.model_state([_t("m1@v1.0.0", "c1", "2026-01-01T00:00:00")], "m1")
    with pytest.raises(UsageError, match="no version v2.0.0"):
        tags.resolve_ref(st, tags.Ref("m1", version="v2.0.0"))
    with pytest.raises(UsageError, match="stage 'prod'"):
        tags.resolve_ref(st, tags.Ref("m1", stage="prod"))


def test_semver_order_and_bumps():
    assert tags.SemVer.parse("v1.10.0") > tags.SemVer.parse("1.9.3")
    assert str(tags.SemVer(1, 2, 3).bump("major")) == "v2.0.0"
    assert str(tags.SemVer(1, 2, 3).bump("minor")) == "v1.3.0"
    assert str(tags.SemVer(1, 2, 3).bump("patch")) == "v1.2.4"
