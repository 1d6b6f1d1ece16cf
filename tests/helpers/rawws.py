"""A raw WebSocket client for tests that need exact control of bytes and frame boundaries."""

from __future__ import annotations

import asyncio
import base64
import os

from proxy.frames import Opcode, apply_mask, encode_close_payload, encode_frame, parse_header

__all__ = ["RawClient", "frame"]


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame."""
    return encode_frame(opcode, payload, fin=fin, mask=True)


class RawClient:
    """Writes exact bytes to the proxy; reads whole frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.3.20", *, path: str = "/",
                      after_request: bytes = b"") -> RawClient:
        """Open a connection and send an upgrade request, followed at once by ``after_request``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode() + after_request
        )
        client = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101 "):
            raise AssertionError(head)
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv_frame(self, timeout: float = 10) -> tuple[int, bytes, bool]:
        """The next frame: (opcode, unmasked payload, fin)."""
        while True:
            header = parse_header(self.buffer, 0, False)
            if header is not None and len(self.buffer) >= header.frame_len:
                payload = self.buffer[header.header_len:header.frame_len]
                if header.mask:
                    payload = apply_mask(payload, header.mask)
                self.buffer = self.buffer[header.frame_len:]
                return header.opcode, payload, header.fin
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise ConnectionError("closed before a whole frame")
            self.buffer += chunk

    async def recv_close(self, timeout: float = 10) -> tuple[int, str]:
        """Skip frames until a close frame; return its code and reason."""
        while True:
            opcode, payload, _ = await self.recv_frame(timeout)
            if opcode == Opcode.CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    def close_frame(self, code: int = 1000) -> bytes:
        return frame(Opcode.CLOSE, encode_close_payload(code, ""))

    def close(self) -> None:
        self.writer.close()
