"""The gate's index of exact meeting ids: the C ``StrIndex`` where it was built, else a dict.

``StrIndex`` (proxy/_strindex.c) is an immutable map of str keys laid out for lookups that miss
the CPU caches: one control byte per slot, in an array small enough to stay cached, and each key
inline in a 64-byte slot. A dict lookup on a large set costs two or three cache misses (a slot of
its index, the entry, the key string); StrIndex answers an absent id from the control bytes and a
present one from one slot. Both give the same answers; the extension is optional, built when the
package is installed with a C compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

__all__ = ["NATIVE", "index_of"]

_V = TypeVar("_V")

try:
    from proxy._strindex import StrIndex
except ImportError:  # installed without a C compiler
    StrIndex = None  # type: ignore[assignment,misc]

NATIVE = StrIndex is not None
"""Whether the C index is in use."""
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
