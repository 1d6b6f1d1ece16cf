"""Tests for proxy.strindex: the C StrIndex against a dict, and the fallback."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import strindex
from proxy.strindex import NATIVE, index_of

# Keys of every str width (1, 2 and 4 bytes a character), short enough to be kept inline in a
# slot and too long for it (more than 36 bytes), and keys equal up to the inline length.
WIDE = "日本-会議"
EMOJI = "meet-\U0001f600"
LONG = "memorial-" + "x" * 40
KEYS = ["", "a", "m-00001", "é", WIDE, EMOJI, LONG, LONG + "y", "x" * 36, "x" * 37, "\x00"]


def test_the_c_index_is_built() -> None:
    """`make test` installs with a C compiler, so the gate runs on StrIndex, not the fallback."""
    assert NATIVE
    assert type(index_of({"a": 1})).__name__ == "StrIndex"


@pytest.fixture(params=[True, False], ids=["StrIndex", "dict"])
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
        index = strindex.StrIndex([("a", 1), ("b", 2), ("a", 3)])
        assert (len(index), index["a"], index["b"]) == (2, 3, 2)

    @pytest.mark.parametrize("items", [[("a",)], [1], [("a", 1, 2)]])
    def test_bad_pairs(self, items: list[object]) -> None:
        with pytest.raises(TypeError, match="item 0 is not a"):
            strindex.StrIndex(items)  # type: ignore[arg-type]

    def test_a_str_is_not_taken_for_pairs(self) -> None:
        with pytest.raises(TypeError, match="item 0 is not a"):
            strindex.StrIndex("ab")  # type: ignore[arg-type]

    def test_get_arguments(self) -> None:
        index = strindex.StrIndex({"a": 1})
        with pytest.raises(TypeError, match="1 or 2 arguments, got 0"):
            index.get()  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="1 or 2 arguments, got 3"):
            index.get("a", 1, 2)  # type: ignore[call-overload]

    def test_references_are_counted(self) -> None:
        """Building takes a reference to each key and value; freeing gives them back."""
        key, value = "".join(["k", "ey"]), object()
        before = sys.getrefcount(key), sys.getrefcount(value)
        index = strindex.StrIndex({key: value})
        assert (sys.getrefcount(key), sys.getrefcount(value)) == (before[0] + 1, before[1] + 1)
        got = index[key]
        assert got is value
        del got, index
        assert (sys.getrefcount(key), sys.getrefcount(value)) == before

    def test_cycles_through_values_are_collected(self) -> None:
        """A value that refers back to its index does not leak: the collector sees through it."""

        class Table:
            index: object = None

        table = Table()
        table.index = strindex.StrIndex({"a": table})
        gone = weakref.ref(table)
        del table
        gc.collect()
        assert gone() is None


@settings(max_examples=200, deadline=None)
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
