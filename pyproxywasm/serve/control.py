"""The channel between serve's supervisor and one worker process: a Unix socket pair,
length-prefixed frames.

A frame is a kind byte, a sequence number (u32) and a payload length (u32), then the
payload. Worker → supervisor: READY (JSON: pid, ports) once it accepts, ERROR (text)
when it cannot start, METRICS (the C core's `pw_metrics_dump` records, csrc/pw.h)
answering a request with the same sequence number. Supervisor → worker: METRICS (empty)
asks for a snapshot. The worker also reads end-of-file as "the supervisor is gone".
"""
from __future__ import annotations

import asyncio
import socket
import struct

# The worker's spec (JSON) comes in this environment variable, not the command line: it may
# hold a Redis URL with its password, and a process's environment is readable by its
# owner only, its command line by every local user.
SPEC_ENV = "PYPROXYWASM_WORKER_SPEC"

HEADER = struct.Struct("<cII")
READY, ERROR, METRICS = b"R", b"E", b"M"
MAX_PAYLOAD = 64 << 20  # a metrics snapshot is far below; more is a broken peer


def frame(kind: bytes, seq: int = 0, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, seq & 0xFFFFFFFF, len(payload)) + payload


def _check(length: int) -> None:
    if length > MAX_PAYLOAD:
        raise ConnectionError(f"control frame of {length} bytes")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> tuple[bytes, int, bytes] | None:
    """The next frame (blocking), or None at end of file."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    kind, seq, length = HEADER.unpack(head)
    _check(length)
    payload = _recv_exact(sock, length) if length else b""
    if payload is None:
        return None
    return kind, seq, payload


async def read_frame_async(reader: asyncio.StreamReader) -> tuple[bytes, int, bytes] | None:
    """The next frame, or None at end of file."""
    try:
        head = await reader.readexactly(HEADER.size)
        kind, seq, length = HEADER.unpack(head)
        _check(length)
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        return None
    return kind, seq, payload
