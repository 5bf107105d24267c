"""`gitops.records.record` behaves as `@dataclass` (same equality, hashing, order, repr, immutability and
dataclasses helpers) without compiling methods per class: the start-up path's classes use it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from gitops.records import record


def _pair(**options):
    """The same class body made by `record` and by `dataclass`."""

    def body():
        class Point:
            """A point."""

            x: int
            y: float = 0.5
            tags: list[str] = field(default_factory=list)
            note: str = field(default="", compare=False, repr=False)

            def norm(self) -> float:
                """Manhattan length."""
                return abs(self.x) + abs(self.y)

        return Point

    fast = {k: v for k, v in options.items() if k != "fast_init"}
    return record(**options)(body()), dataclass(**fast)(body())


@pytest.mark.parametrize("options", [{}, {"frozen": True}, {"frozen": True, "order": True},
                                     {"frozen": True, "fast_init": True}, {"order": True}])
def test_a_record_behaves_as_the_dataclass(options) -> None:
    ours, theirs = _pair(**options)
    for cls in (ours, theirs):
        a, b = cls(1, 2.0, ["t"], note="n"), cls(x=1, y=2.0, tags=["t"])
        assert a == b and a != cls(2) and a.__eq__(("not", "it")) is NotImplemented  # `note` is not compared
        assert cls(3).tags == [] and cls(3).tags is not cls(3).tags and cls(3).y == 0.5
        assert dataclasses.is_dataclass(cls) and [f.name for f in dataclasses.fields(cls)] == ["x", "y", "tags", "note"]
        assert dataclasses.replace(a, x=5) == cls(5, 2.0, ["t"]) and dataclasses.asdict(a)["tags"] == ["t"]
        assert a.norm() == 3.0 and cls.__match_args__ == ("x", "y", "tags", "note")
    assert repr(ours(1, tags=["a"])).replace(ours.__qualname__, "P") == repr(theirs(1, tags=["a"])).replace(
        theirs.__qualname__, "P") == "P(x=1, y=0.5, tags=['a'])"
    if options.get("frozen"):
        p = ours(1, tags=("a",))  # hashable values: a hash over the compared fields
        assert hash(p) == hash(ours(1, tags=("a",), note="other")) and len({p, ours(1, tags=("a",))}) == 1
        assert hash(p) == hash(theirs(1, tags=("a",)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.x = 2  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            del p.x
    else:
        p = ours(1)
        p.x = 2
        assert p.x == 2
        with pytest.raises(TypeError):
            hash(p)
    if options.get("order"):
        assert sorted([ours(2), ours(1, 9.0), ours(1, 1.0)]) == [ours(1, 1.0), ours(1, 9.0), ours(2)]
        assert ours(1) <= ours(1) and ours(2) > ours(1) and ours(1) >= ours(1)
        with pytest.raises(TypeError):
            _ = ours(1) < (1,)
    else:
        with pytest.raises(TypeError):
            _ = ours(1) < ours(2)


def test_wrong_arguments_are_type_errors_as_with_dataclass() -> None:
    ours, _theirs = _pair(frozen=True)
    for call, words in ((lambda: ours(), "missing required argument: 'x'"),
                        (lambda: ours(1, 2, [], "", 5), "takes 5 positional arguments but 6 were given"),
                        (lambda: ours(1, z=2), "unexpected keyword argument 'z'"),
                        (lambda: ours(1, x=2), "multiple values for argument 'x'")):
        with pytest.raises(TypeError, match=words):
            call()


def test_what_record_does_not_support_is_refused_at_definition() -> None:
    class WithPostInit:
        """Has __post_init__."""

        x: int

        def __post_init__(self) -> None:
            """Never runs."""

    class WithoutInit:
        """A field left out of __init__."""

        x: int = field(default=0, init=False)

    for cls in (WithPostInit, WithoutInit):
        with pytest.raises(TypeError, match="record"):
            record(cls)
