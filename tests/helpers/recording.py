"""A transport that records what a load client writes, for tests of the clients' parsing."""

from __future__ import annotations


class RecordingTransport:
    """Collects what a client writes; no socket. ``closed`` is set by close() and abort()."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True
