"""The I/O event loop the network clients run on.

Outbound calls never run on a VM's thread: a VM thread hands the call to this loop and
goes on; the answer is posted back to it. Either the process owns a loop on a daemon
thread (`IoLoop.shared()`, started lazily), or an embedding that already runs asyncio
(`serve`) lends its own loop (`IoLoop.attach(loop)`), so its server and its callouts
share one loop and one set of pooled connections.

The shared loop is a plain asyncio loop, not uvloop: measured on 127.0.0.1 (bench/README.md,
"Outbound clients"), asyncio cost about 1.1x uvloop's client CPU per HTTP round trip (the
clients' own Python dominates; on gRPC 0.86-1.63x) with no steady difference in latency,
which does not pay for a compiled dependency on a path that is not the host's hot one. grpc.aio does run on uvloop
(the benchmark does it), so an embedding that serves on uvloop can `attach` that loop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Callable, ClassVar, Coroutine

THREAD_NAME = "pyproxywasm-io"


class IoLoop:
    """A handle on an asyncio loop that other threads can hand work to."""

    # The process-wide loop: created once under _lock by whichever thread first asks,
    # then only read. Reset in a forked child (the thread does not survive fork).
    _shared: ClassVar["IoLoop | None"] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        self.loop = loop
        self._thread = thread

    @classmethod
    def shared(cls) -> "IoLoop":
        """The process's own I/O loop, on a daemon thread named "pyproxywasm-io"."""
        io = cls._shared
        if io is not None:
            return io
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls._start()
            return cls._shared

    @classmethod
    def _start(cls) -> "IoLoop":
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        t = threading.Thread(target=run, name=THREAD_NAME, daemon=True)
        t.start()
        ready.wait()
        return cls(loop, t)

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop) -> "IoLoop":
        """Wrap a loop the embedding runs itself (it keeps running and closing it)."""
        return cls(loop, None)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run `coro` on the loop; callable from any thread (also the loop's own, but
        blocking there on the returned future's result() would deadlock: await instead)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn(*args)` on the loop thread; callable from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def in_loop_thread(self) -> bool:
        """True when the caller is running on this loop (inside its thread)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def __repr__(self) -> str:
        owner = "shared" if self._thread is not None else "attached"
        return f"<IoLoop {owner} running={self.loop.is_running()}>"


def _after_fork_in_child() -> None:
    IoLoop._shared = None
    IoLoop._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
