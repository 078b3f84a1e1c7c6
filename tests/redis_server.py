"""A real redis-server for tests, on a free 127.0.0.1 port, started and stopped by the test.

`redis_server` (fixture, function scope) yields a `RedisServer`: `.url`, `.port`,
`.command(*args)` (a minimal RESP client, one connection per call), and the outage controls
`.pause()` / `.resume()` (SIGSTOP / SIGCONT: the server hangs, connections stay open),
`.kill()` (SIGKILL: connections are reset, state is lost) and `.start()` (again on the same
port). The server keeps nothing on disk (`--save '' --appendonly no`). When the binary is
absent (or the build has no Redis support) the tests that use it are skipped with the
reason, unless PYPROXYWASM_REQUIRE_REDIS=1 (CI), which makes that a failure.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyproxywasm._binding import lib

from _servers import free_port

REDIS_SERVER = shutil.which("redis-server")
#: Why the Redis tests cannot run here, or None. CI sets PYPROXYWASM_REQUIRE_REDIS=1: then
#: a missing server or a build without hiredis fails them instead of skipping them.
MISSING: str | None = (
    "redis-server is not installed (Debian: apt-get install redis-server)"
    if REDIS_SERVER is None else
    "this build has no Redis support (Debian: apt-get install libhiredis-dev, then reinstall)"
    if not lib.pw_redis_available() else None)
REQUIRED = os.environ.get("PYPROXYWASM_REQUIRE_REDIS") == "1"
needs_redis = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=MISSING or "")
#: For tests that need Redis support in the build but no server.
NO_SUPPORT = not lib.pw_redis_available()
needs_redis_build = pytest.mark.skipif(
    NO_SUPPORT and not REQUIRED,
    reason="this build has no Redis support (Debian: apt-get install libhiredis-dev, then reinstall)")


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()  # (a server that came up too late is not left running)
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a stopped process dies on SIGKILL anyway
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def command(self, *args: str | bytes | int) -> object:
        """One command on a fresh connection: the decoded reply (bytes for bulk strings,
        str for simple strings, int, list, None); an error reply raises RuntimeError."""
        out = bytearray(b"*%d\r\n" % len(args))
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(out)
            f = s.makefile("rb")
            return _read(f)


def _read(f) -> object:  # type: ignore[no-untyped-def]
    line = f.readline()
    if not line:
        raise OSError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise OSError(f"bad reply {line!r}")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if MISSING is not None:
        if REQUIRED:
            pytest.fail(f"PYPROXYWASM_REQUIRE_REDIS=1 but {MISSING}")
        pytest.skip(MISSING)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
