"""Shared fixtures: the committed test plugins (built from tests/plugins/, see build.sh)."""
from __future__ import annotations

import pathlib
import subprocess
import threading
import time

import pytest

PLUGINS = pathlib.Path(__file__).parent / "plugins"
GO_HTTP = PLUGINS / "go" / "httpfilter.wasm"
GO_TCP = PLUGINS / "go" / "tcpfilter.wasm"
AS_020 = PLUGINS / "as" / "as_abi020.wasm"
AS_010 = PLUGINS / "as" / "as_abi010.wasm"
WAT = PLUGINS / "wat"

REQUEST = [(":method", "GET"), (":path", "/hello?x=1"), (":authority", "example.com"),
           (":scheme", "http"), ("user-agent", "pytest")]
RESPONSE = [(":status", "200"), ("content-type", "text/plain")]


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Polls predicate() until true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def kill_all(procs) -> None:  # type: ignore[no-untyped-def]
    """Kills and reaps every process of procs still running (closing its pipes): a test's
    child processes never outlive it, whatever failed first."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.communicate(timeout=10)
        except (ValueError, OSError, subprocess.TimeoutExpired):  # pipes already read/closed
            p.wait()


def wat(name: str) -> bytes:
    """A committed WAT edge-case plugin, built (tests/plugins/build.sh)."""
    return (WAT / f"{name}.wasm").read_bytes()


@pytest.fixture
def request_headers():
    return list(REQUEST)


@pytest.fixture
def response_headers():
    return list(RESPONSE)


class BusyThread(threading.Thread):
    """A Python thread that notes the time every few thousand bytecodes: whether it ran
    during some window shows whether the GIL was free then."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stamps: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sum(range(2000))
            self.stamps.append(time.monotonic())

    def __enter__(self) -> "BusyThread":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10)


@pytest.fixture
def hold_gil():
    """The C event path keeps the GIL across core calls during the test, whatever states
    other tests left; the choice the VM threads call for comes back after."""
    from pyproxywasm import http as http_mod

    if http_mod._fast is None:
        pytest.skip("the C event path is not built")
    http_mod._fast.set_hold_gil(True)
    yield
    http_mod.vm_thread(threading.get_ident(), 0)  # recomputes the choice
