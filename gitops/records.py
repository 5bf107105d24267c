"""`record`: dataclasses whose methods are shared functions, not code compiled for each class at import.

Python 3.11's `@dataclass` writes the source of `__init__`, `__repr__`, `__eq__`, `__hash__` and, frozen,
`__setattr__`/`__delattr__` (order: four more) for every class and compiles each with `exec`: about
0.5 ms a class. The ~45 dataclasses that `validate`, `ci plan` or `ls` import cost a third of their
start-up that way (benchmarks/cli_startup.py). Python 3.13 batches those compilations for the same
reason; here the methods are written once, in this module, and read the field list at call time.

A `record` class is still a dataclass: `dataclasses.fields`, `replace`, `asdict` and `is_dataclass`
work, and equality, hashing, ordering, `repr` and immutability behave as `@dataclass(frozen=...,
order=...)`'s (fields with `compare=False` or `repr=False` are left out alike). `fast_init=True` keeps
the compiled `__init__` (one `exec`) for classes built in bulk, such as the position of every YAML node.
Not supported (a TypeError at definition): `field(init=False)`, `kw_only`, `InitVar`, `__post_init__`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(field_specifiers=(dataclasses.field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = False, order: bool = False,
           fast_init: bool = False) -> Any:
    """Make `cls` a dataclass like `@dataclass(frozen=frozen, order=order)`, without compiling methods per class.

    Used as `@record` or `@record(frozen=True, ...)`; returns the class (or the decorator).

    Raises:
        TypeError: the class uses what `record` does not support (see the module docstring).
    """

    def wrap(klass: type[T]) -> type[T]:
        if "__post_init__" in klass.__dict__:
            raise TypeError(f"{klass.__qualname__}: record does not support __post_init__")
        klass = dataclasses.dataclass(klass, init=fast_init, repr=False, eq=False,  # type: ignore[call-overload]
                                      frozen=frozen and fast_init)
        fields = list(dataclasses.fields(klass))  # type: ignore[arg-type]
        initvars = [f for f in klass.__dataclass_fields__.values()  # type: ignore[attr-defined]
                    if f._field_type is dataclasses._FIELD_INITVAR]  # type: ignore[attr-defined]
        if initvars or any(not f.init or f.kw_only is True for f in fields):
            raise TypeError(f"{klass.__qualname__}: record supports plain fields only (no init=False, kw_only, InitVar)")
        _add_methods(klass, fields, frozen=frozen, order=order, init=not fast_init)
        return klass

    return wrap if cls is None else wrap(cls)


def _add_methods(klass: type, fields: list[dataclasses.Field], *, frozen: bool, order: bool, init: bool) -> None:
    compared = tuple(f.name for f in fields if f.compare)
    shown = tuple(f.name for f in fields if f.repr)
    hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))

    def key(obj: Any, which: tuple[str, ...] = compared) -> tuple:
        return tuple([getattr(obj, name) for name in which])

    if init:
        klass.__init__ = _make_init(klass, fields)  # type: ignore[misc]

    def __repr__(self: Any) -> str:
        return f"{self.__class__.__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")"

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return key(self) == key(other)

    own = klass.__dict__  # methods the class writes itself are kept, as dataclass keeps them
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    if "__repr__" not in own:
        klass.__repr__ = __repr__  # type: ignore[method-assign]
    if "__eq__" not in own:
        klass.__eq__ = __eq__  # type: ignore[method-assign]
    if explicit_hash:
        pass
    elif frozen:
        def __hash__(self: Any) -> int:
            return hash(key(self, hashed))

        klass.__hash__ = __hash__  # type: ignore[method-assign]
    else:
        klass.__hash__ = None  # type: ignore[assignment]  # mutable and compared by value: unhashable, as dataclass
    if frozen and init:  # with fast_init, the compiled frozen __setattr__/__delattr__ are dataclass's own
        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

        klass.__setattr__ = __setattr__  # type: ignore[method-assign]
        klass.__delattr__ = __delattr__  # type: ignore[method-assign]
    if order:
        for name, test in (("__lt__", tuple.__lt__), ("__le__", tuple.__le__), ("__gt__", tuple.__gt__),
                           ("__ge__", tuple.__ge__)):
            if name in own:
                raise TypeError(f"{klass.__qualname__} defines {name}; with order=True record writes it")
            setattr(klass, name, _comparison(name, test, key))


def _comparison(name: str, test: Callable[[tuple, tuple], bool], key: Callable[[Any], tuple]) -> Callable:
    def compare(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return test(key(self), key(other))

    compare.__name__ = name
    return compare


def _make_init(klass: type, fields: list[dataclasses.Field]) -> Callable[..., None]:
    names = tuple(f.name for f in fields)
    defaults = tuple((f.default, f.default_factory) for f in fields)
    count = len(names)
    missing = dataclasses.MISSING
    setter = object.__setattr__
    title = klass.__name__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = len(args)
        if given > count:
            raise TypeError(f"{title}.__init__() takes {count + 1} positional arguments but {given + 1} were given")
        for name, value in zip(names, args, strict=False):
            setter(self, name, value)
        for i in range(given, count):
            name = names[i]
            if name in kwargs:
                setter(self, name, kwargs.pop(name))
                continue
            default, factory = defaults[i]
            if default is not missing:
                setter(self, name, default)
            elif factory is not missing:
                setter(self, name, factory())
            else:
                raise TypeError(f"{title}.__init__() missing required argument: {name!r}")
        if kwargs:
            name = next(iter(kwargs))
            if name in names:
                raise TypeError(f"{title}.__init__() got multiple values for argument {name!r}")
            raise TypeError(f"{title}.__init__() got an unexpected keyword argument {name!r}")

    __init__.__qualname__ = f"{klass.__qualname__}.__init__"
    return __init__
