"""Tests for proxy.native: the C StrIndex and Schedule against their Python fallbacks."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import weakref
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import native as parts
from proxy.native import NATIVE, PySchedule, index_of, schedule_of

# Keys of every str width (1, 2 and 4 bytes a character), short enough to be kept inline in a
# slot and too long for it (more than 36 bytes), and keys equal up to the inline length.
WIDE = "日本-会議"
EMOJI = "meet-\U0001f600"
LONG = "memorial-" + "x" * 40
KEYS = ["", "a", "m-00001", "é", WIDE, EMOJI, LONG, LONG + "y", "x" * 36, "x" * 37, "\x00"]


def test_the_c_parts_are_built() -> None:
    """`make test` installs with a C compiler, so the gate runs on its C parts, not fallbacks."""
    assert NATIVE
    assert type(index_of({"a": 1})).__name__ == "StrIndex"
    assert type(schedule_of((), ("v",), None)).__name__ == "Schedule"


@pytest.fixture(params=[True, False], ids=["native", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_lookups_agree_with_a_dict(native: bool) -> None:
    """get, [], in, len, iteration, keys, values and items answer as a dict does."""
    items = {key: i for i, key in enumerate(KEYS)}
    index = index_of(items, native=native)
    assert isinstance(index, Mapping)
    assert len(index) == len(items)
    for key, value in items.items():
        assert index.get(key) == value
        assert index[key] == value
        assert key in index
    for absent in ("b", "m-00002", "日本", LONG + "z", "x" * 38, "X" * 36, "a\x00"):
        assert index.get(absent) is None
        assert index.get(absent, 7) == 7
        assert absent not in index
        with pytest.raises(KeyError):
            index[absent]
    assert sorted(index) == sorted(items)
    assert sorted(index.keys()) == sorted(items)
    assert sorted(index.items()) == sorted(items.items())
    assert sorted(index.values()) == sorted(items.values())


def test_keys_are_compared_by_text(native: bool) -> None:
    """A different object with the same text is found, even a str subclass with its own hash."""

    class Odd(str):
        def __hash__(self) -> int:
            return 1

    index = index_of({"room-1": "a", LONG: "b"}, native=native)
    assert index.get("".join(["room", "-1"])) == "a"
    assert index.get("".join([LONG[:5], LONG[5:]])) == "b"
    if native:  # a dict would use the subclass's hash
        assert index.get(Odd("room-1")) == "a"


def test_non_str_lookups_are_absent(native: bool) -> None:
    """Looking up something that is not a str finds nothing and raises nothing."""
    index = index_of({"1": "a"}, native=native)
    assert index.get(1) is None  # type: ignore[call-overload]
    assert 1 not in index
    assert b"1" not in index


def test_non_str_keys_are_refused(native: bool) -> None:
    """A key that is not a str is refused with the key named."""
    with pytest.raises(TypeError, match=r"key 1 is not a str"):
        index_of({"a": 0, 1: 2}, native=native)  # type: ignore[dict-item]


def test_empty_index(native: bool) -> None:
    index = index_of({}, native=native)
    assert len(index) == 0
    assert index.get("a") is None
    assert list(index) == []


@pytest.mark.skipif(not NATIVE, reason="the C index was not built")
class TestStrIndex:
    def test_pairs_and_duplicates(self) -> None:
        """StrIndex also takes (key, value) pairs; a repeated key keeps its last value."""
        index = parts.StrIndex([("a", 1), ("b", 2), ("a", 3)])
        assert (len(index), index["a"], index["b"]) == (2, 3, 2)

    @pytest.mark.parametrize("items", [[("a",)], [1], [("a", 1, 2)]])
    def test_bad_pairs(self, items: list[object]) -> None:
        with pytest.raises(TypeError, match="item 0 is not a"):
            parts.StrIndex(items)  # type: ignore[arg-type]

    def test_a_str_is_not_taken_for_pairs(self) -> None:
        with pytest.raises(TypeError, match="item 0 is not a"):
            parts.StrIndex("ab")  # type: ignore[arg-type]

    def test_get_arguments(self) -> None:
        index = parts.StrIndex({"a": 1})
        with pytest.raises(TypeError, match="1 or 2 arguments, got 0"):
            index.get()  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="1 or 2 arguments, got 3"):
            index.get("a", 1, 2)  # type: ignore[call-overload]

    def test_references_are_counted(self) -> None:
        """Building takes a reference to each key and value; freeing gives them back."""
        key, value = "".join(["k", "ey"]), object()
        before = sys.getrefcount(key), sys.getrefcount(value)
        index = parts.StrIndex({key: value})
        assert (sys.getrefcount(key), sys.getrefcount(value)) == (before[0] + 1, before[1] + 1)
        got = index[key]
        assert got is value
        del got, index
        assert (sys.getrefcount(key), sys.getrefcount(value)) == before

    def test_size_counts_the_slots(self) -> None:
        """sys.getsizeof reports the slots (64 bytes each) and control bytes it allocated."""
        small = sys.getsizeof(parts.StrIndex({}))
        big = sys.getsizeof(parts.StrIndex({f"m-{i}": i for i in range(1000)}))
        assert big - small >= 1000 * 65

    def test_cycles_through_values_are_collected(self) -> None:
        """A value that refers back to its index does not leak: the collector sees through it."""

        class Table:
            index: object = None

        table = Table()
        table.index = parts.StrIndex({"a": table})
        gone = weakref.ref(table)
        del table
        gc.collect()
        assert gone() is None


@settings(max_examples=200)
@given(keys=st.sets(st.text(max_size=50), max_size=300),
       probes=st.lists(st.text(max_size=50), max_size=50))
def test_any_keys_agree_with_a_dict(keys: set[str], probes: list[str]) -> None:
    """For any keys, StrIndex finds exactly the dict's keys, with their values."""
    items = {key: len(key) for key in keys}
    index = index_of(items)
    assert len(index) == len(items)
    for key in [*keys, *probes]:
        assert index.get(key, -1) == items.get(key, -1)
        assert (key in index) == (key in items)


# -- Schedule ----------------------------------------------------------------------------------

def test_schedule_picks_the_value_between_bounds(native: bool) -> None:
    """values[i] holds from bounds[i - 1] (included) to bounds[i] (excluded); NaN is apart."""
    schedule = schedule_of((10.0, 20, 30.5), ("before", "a", "b", "after"), "nan", native=native)
    cases = [(-math.inf, "before"), (-1e300, "before"), (9.999, "before"), (10.0, "a"), (10, "a"),
             (19.99, "a"), (20.0, "b"), (30.4, "b"), (30.5, "after"), (1e300, "after"),
             (math.inf, "after"), (math.nan, "nan")]
    for now, expected in cases:
        assert schedule.at(now) == expected, now
    assert schedule.bounds == (10.0, 20.0, 30.5)
    assert schedule.values == ("before", "a", "b", "after")
    assert schedule.unordered == "nan"


def test_schedule_without_bounds(native: bool) -> None:
    schedule = schedule_of([], [None], "nan", native=native)
    assert schedule.at(0.0) is None and schedule.at(-math.inf) is None
    assert schedule.at(math.nan) == "nan"


@pytest.mark.parametrize(("bounds", "values", "message"), [
    ((1.0, 2.0), ("a", "b"), "2 values for 2 bounds"),
    ((), (), "0 values for 0 bounds"),
    ((2.0, 1.0), ("a", "b", "c"), "not strictly ascending"),
    ((1.0, 1.0), ("a", "b", "c"), "not strictly ascending"),
    ((math.nan,), ("a", "b"), "not strictly ascending"),
])
def test_schedule_refuses_bad_input(native: bool, bounds: tuple[float, ...],
                                    values: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedule_of(bounds, values, None, native=native)


def test_schedule_refuses_bounds_and_times_that_are_not_numbers(native: bool) -> None:
    with pytest.raises(TypeError):
        schedule_of(("soon",), ("a", "b"), None, native=native)  # type: ignore[arg-type]
    schedule = schedule_of((1.0,), ("a", "b"), None, native=native)
    with pytest.raises(TypeError):
        schedule.at("now")  # type: ignore[arg-type]


def test_schedule_is_immutable(native: bool) -> None:
    schedule = schedule_of((1.0,), ("a", "b"), None, native=native)
    with pytest.raises(AttributeError):
        schedule.bounds = ()  # type: ignore[misc]


@settings(max_examples=200)
@given(bounds=st.sets(st.floats(allow_nan=False), max_size=8),
       times=st.lists(st.floats(allow_nan=True), max_size=30))
def test_the_c_schedule_agrees_with_the_python_one(bounds: set[float], times: list[float]) -> None:
    ordered = sorted(bounds)
    values = [f"v{i}" for i in range(len(ordered) + 1)]
    c = schedule_of(ordered, values, "nan")
    py = PySchedule(ordered, values, "nan")
    for now in [*times, *ordered]:
        assert c.at(now) == py.at(now), now


@pytest.mark.skipif(not NATIVE, reason="the C parts were not built")
class TestSchedule:
    def test_references_are_counted(self) -> None:
        value, nan = object(), object()
        before = sys.getrefcount(value), sys.getrefcount(nan)
        schedule = parts.Schedule([1.0], [value, value], nan)
        assert (sys.getrefcount(value), sys.getrefcount(nan)) == (before[0] + 2, before[1] + 1)
        got = schedule.at(2.0)
        assert got is value
        del got, schedule
        assert (sys.getrefcount(value), sys.getrefcount(nan)) == before

    def test_cycles_through_values_are_collected(self) -> None:
        class Entry:
            schedule: object = None

        entry = Entry()
        entry.schedule = parts.Schedule([], [entry], None)
        gone = weakref.ref(entry)
        del entry
        gc.collect()
        assert gone() is None

    def test_size_counts_bounds_and_values(self) -> None:
        one = sys.getsizeof(parts.Schedule([], [None], None))
        three = sys.getsizeof(parts.Schedule([1.0, 2.0, 3.0], [None] * 4, None))
        assert three - one == 3 * 8 + 3 * 8

    def test_a_failed_build_releases_what_it_took(self) -> None:
        value = object()
        before = sys.getrefcount(value)
        with pytest.raises(ValueError):
            parts.Schedule([2.0, 1.0], [value, value, value], value)
        assert sys.getrefcount(value) == before


def test_without_the_c_parts_the_gate_runs_on_the_fallbacks() -> None:
    """A machine without a C compiler: proxy._native is missing, the gate still decides."""
    script = (
        "import sys\n"
        "sys.modules['proxy._native'] = None  # import fails as if it was never built\n"
        "from proxy import native\n"
        "from proxy.policy.gate import RestrictionSet\n"
        "from proxy.policy.regions import Location\n"
        "from proxy.policy.restrictions import Mode, Restriction\n"
        "r = Restriction(id='a', mode=Mode.BLOCK, regions=frozenset({'CN'}), meetings=('m1',),\n"
        "                legal_basis='b', authority='a', starts_at=10.0)\n"
        "gate = RestrictionSet([r])\n"
        "print(native.NATIVE, type(gate._exact).__name__,\n"
        "      gate.decide('m1', Location('CN'), None, 5.0).allowed,\n"
        "      gate.decide('m1', Location('CN'), None, 10.0).allowed)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "dict", "True", "False"]
