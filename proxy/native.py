"""The gate's native parts (proxy/_native.c) where they were built, else Python equivalents.

What a decision reads on a large restriction set is laid out to touch few cache lines; on a set
of 10,000 restrictions most of a decision's extra time over the same decision on 10 is cache
misses, not instructions.

- ``StrIndex``: an immutable map of str keys for the exact meeting ids. One control byte per slot,
  in an array small enough to stay cached, and each key inline in a 64-byte slot. A dict lookup
  on a large set costs two or three cache misses (a slot of its index, the entry, the key
  string); StrIndex answers an absent id from the control bytes and a present one from one slot.
  Fallback: a dict.
- ``Schedule``: which value holds at a time, for a table entry of restrictions with a window: the
  window edges as doubles next to the values, in one object, rather than spread over every match,
  restriction and bound. Fallback: the same, in Python, with ``bisect``.

Both give the same answers as their fallbacks (the tests run the gate on each). The extension is
optional, built when the package is installed with a C compiler.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

__all__ = ["NATIVE", "PySchedule", "Schedule", "StrIndex", "index_of", "schedule_of"]

_V = TypeVar("_V")

try:
    from proxy._native import Schedule, StrIndex
except ImportError:  # installed without a C compiler
    Schedule = StrIndex = None  # type: ignore[assignment,misc]

NATIVE = StrIndex is not None
"""Whether the C parts are in use."""
if StrIndex is not None:
    Mapping.register(StrIndex)  # keys(), values() and items() give lists


def index_of(items: Mapping[str, _V], native: bool = NATIVE) -> Mapping[str, _V]:
    """An immutable index of ``items`` (str keys): a StrIndex, or a dict copy without it.

    Args:
        items: the keys and values.
        native: False to build a dict even where StrIndex exists (tests compare the two).

    Raises:
        TypeError: a key is not a str.
    """
    if native and StrIndex is not None:
        return StrIndex(items)
    for key in items:
        if not isinstance(key, str):
            raise TypeError(f"StrIndex: key {key!r} is not a str")
    return dict(items)


class PySchedule(Generic[_V]):
    """Which value holds at a time (the fallback of the C ``Schedule``; same API, immutable).

    Args:
        bounds: strictly ascending times (not NaN).
        values: one more than ``bounds``: ``values[i]`` holds from ``bounds[i - 1]`` (included)
            to ``bounds[i]`` (excluded).
        unordered: the value for a time that compares with nothing (NaN).

    Raises:
        ValueError: bounds not strictly ascending, or the wrong number of values.
    """

    __slots__ = ("bounds", "unordered", "values")

    bounds: tuple[float, ...]
    values: tuple[_V, ...]
    unordered: _V

    def __init__(self, bounds: Iterable[float], values: Iterable[_V], unordered: _V) -> None:
        bounds = tuple(_as_float(b) for b in bounds)
        values = tuple(values)
        if len(values) != len(bounds) + 1:
            raise ValueError(f"Schedule: {len(values)} values for {len(bounds)} bounds "
                             f"(expected {len(bounds) + 1})")
        if any(b != b for b in bounds) or any(not a < b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"Schedule: bounds {bounds!r} are not strictly ascending")
        init = object.__setattr__
        init(self, "bounds", bounds)
        init(self, "values", values)
        init(self, "unordered", unordered)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Schedule is immutable (cannot set {name!r})")

    def at(self, now: float) -> _V:
        """The value that holds at ``now``: ``values[i]`` where ``i`` bounds are <= now."""
        if now != now:
            return self.unordered
        return self.values[bisect.bisect_right(self.bounds, now)]


def _as_float(value: object) -> float:
    """``value`` as a float, as the C Schedule takes it (a str is refused, not parsed)."""
    kind = type(value)
    if not (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"Schedule: {value!r} is not a number")
    return float(value)  # type: ignore[arg-type]


def schedule_of(bounds: Iterable[float], values: Iterable[_V], unordered: _V,
                native: bool = NATIVE) -> Schedule[_V] | PySchedule[_V]:
    """A Schedule (C) or PySchedule (fallback) of ``values`` between ``bounds``.

    Raises:
        ValueError: as PySchedule.
    """
    if native and Schedule is not None:
        return Schedule(bounds, values, unordered)
    return PySchedule(bounds, values, unordered)
