"""Real servers for the adapter tests: uvicorn and hypercorn (ASGI), waitress (WSGI), each
started on a free 127.0.0.1 port in a thread of its own and stopped by the test."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, thread: threading.Thread, timeout: float = 180.0) -> None:
    # Generous: a server listens only after lifespan startup, which compiles the plugins
    # (slow under the sanitizers on a loaded machine).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the server thread ended")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def uvicorn_server(app: Any, **options: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan=options.pop("lifespan", "on"), **options)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    t = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    t.start()
    _wait_listening(port, t)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(30)


@contextlib.contextmanager
def hypercorn_server(app: Any) -> Iterator[str]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))
        loop.close()

    t = threading.Thread(target=run, name="hypercorn", daemon=True)
    t.start()
    _wait_listening(port, t)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)


@contextlib.contextmanager
def asgi_server(kind: str, app: Any) -> Iterator[str]:
    cm = uvicorn_server(app) if kind == "uvicorn" else hypercorn_server(app)
    with cm as url:
        yield url


@contextlib.contextmanager
def waitress_server(app: Any, threads: int = 8) -> Iterator[str]:
    from waitress.server import create_server

    port = free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=threads,
                           channel_timeout=30, connection_limit=2000, backlog=2048)
    closing = threading.Event()

    def run() -> None:
        try:
            server.run()
        except OSError:
            # close() from this (the test's) thread can pull the socket from under the
            # server's select(); only that is expected.
            if not closing.is_set():
                raise

    t = threading.Thread(target=run, name="waitress", daemon=True)
    t.start()
    _wait_listening(port, t)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        closing.set()
        server.close()
        server.task_dispatcher.shutdown()
        t.join(30)


@contextlib.contextmanager
def cheroot_server(app: Any, threads: int = 8) -> Iterator[str]:
    """cheroot (CherryPy's server): a thread pool behind an epoll selector, so it takes
    more than 1,024 connections (waitress's select() loop does not)."""
    from cheroot import wsgi

    port = free_port()
    server = wsgi.Server(("127.0.0.1", port), app, numthreads=threads, request_queue_size=2048,
                         accepted_queue_size=-1)
    server.prepare()
    t = threading.Thread(target=server.serve, name="cheroot", daemon=True)
    t.start()
    _wait_listening(port, t)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        t.join(30)
