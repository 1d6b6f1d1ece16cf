"""How the proxy notices that a file it watches was changed or replaced on disk."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FileSignature", "file_signature", "file_signature_or_none", "file_signatures"]

FileSignature = tuple[int, int, int]
"""Modification time (ns), size and inode: a file rewritten in place or replaced by a rename
changes at least one of them."""


def file_signature(path: Path) -> FileSignature:
    """The signature of the file at ``path``.

    Raises:
        OSError: the file cannot be read.
    """
    stat = os.stat(path)
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def file_signature_or_none(path: Path | None) -> FileSignature | None:
    """The signature of the file at ``path``; None when there is no path or no readable file."""
    if path is None:
        return None
    try:
        return file_signature(path)
    except OSError:
        return None


def file_signatures(*paths: Path | None) -> tuple[FileSignature | None, ...]:
    """The signatures of several files (see ``file_signature_or_none``), compared as one."""
    return tuple(file_signature_or_none(path) for path in paths)
