"""Running a bootstrap: threads in Envoy's model.

- The main thread (ours, "pyproxywasm-main") creates the Host, so it owns the singleton
  Wasm services, and runs the admin listener on its event loop.
- `concurrency` worker threads each run their own event loop (uvloop) with every listener
  on its own SO_REUSEPORT socket (the kernel spreads connections), their own VMs (the
  Host's per-thread model: each worker's VMs start when it first asks for its dispatcher)
  and their own upstream connection pools. Each thread's dispatcher is served by its loop,
  so ticks, queue notifications and callout answers arrive without blocking it.

HTTP listeners are uvicorn servers (httptools parser) over the router app behind the
listener's Wasm filters; TCP listeners are asyncio servers running the network filters
then tcp_proxy.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import uvicorn

from ..backends import Backend
from ..host import Host, Plugin
from ..net.http_client import HttpClient
from ..net.loop import IoLoop
from .admin import AdminApp
from .config import Bootstrap, HttpListener, TcpListener
from .filters import LoopDispatch, wrap
from .hcm import connection_manager
from .proxy import ProxyApp
from .tcp_proxy import TcpProxy
from .upstream import ByCluster, Http1Client, Upstream

log = logging.getLogger("pyproxywasm.serve")

try:
    import uvloop

    def _new_loop() -> asyncio.AbstractEventLoop:
        return uvloop.new_event_loop()
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    def _new_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process's signals are the Server's."""

    def capture_signals(self) -> Any:
        import contextlib
        return contextlib.nullcontext()


FIRST_REQUEST_GRACE = 0.1  # s between a worker's last accept and its closing of idle connections

# The foreign functions Envoy registers for every Wasm plugin (zlib's format both ways).
BUILTIN_FOREIGN_FUNCTIONS: dict[str, Callable[[bytes], bytes | None]] = {
    "compress": zlib.compress, "uncompress": zlib.decompress}


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def _uvicorn(app: Any) -> _Uvicorn:
    # proxy_headers off: uvicorn would otherwise take the scheme and client address from a
    # client's X-Forwarded-Proto / X-Forwarded-For (Envoy trusts no hops by default).
    cfg = uvicorn.Config(app, http="httptools", lifespan="off", access_log=False,
                         log_level="warning", server_header=False, date_header=False,
                         proxy_headers=False, timeout_graceful_shutdown=2)
    return _Uvicorn(cfg)


@dataclass
class _Thread:
    """One thread with its own loop: the main thread or a worker."""

    name: str
    target: Callable[["_Thread"], Any]
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            self.thread.join()
            raise self.error

    def _main(self) -> None:
        self.loop = _new_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as e:  # noqa: BLE001 - re-raised by start()
            if not self.ready.is_set():
                self.error = e
                self.ready.set()
            else:
                log.exception("%s failed", self.name)
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self.stop = asyncio.Event()
        await self.target(self)

    async def stopped(self) -> None:
        assert self.stop is not None  # made by _run before the target runs
        await self.stop.wait()

    def request_stop(self) -> None:
        if self.loop is not None and self.stop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.stop.set)
            except RuntimeError:
                pass  # the loop just ended

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


class Server:
    """A bootstrap served by a main thread and `concurrency` workers.

    start() returns once every listener accepts (their ports, port 0 resolved, are in
    `ports` by listener name, and `admin_port`); stop() drains and shuts down; run() does
    both around SIGINT/SIGTERM."""

    def __init__(self, bootstrap: Bootstrap, concurrency: int = 1, cache_dir: str | None = "default",
                 client: str = "auto", *, shared_state: Backend | Mapping[str, Backend] | None = None,
                 sockets: Sequence[Sequence[socket.socket]] | None = None) -> None:
        """client: how the proxy reaches clusters. "net": pyproxywasm.net.HttpClient
        (HTTP/1.1 and HTTP/2, TLS) for all; "httptools": serve's own HTTP/1.1 client
        (upstream.py) for all; "auto": the httptools client for plain HTTP/1.1 clusters
        (it costs about a third of the CPU per request, bench/README.md), net for TLS
        and HTTP/2 ones. shared_state: the Host's shared-state backend(s)
        (pyproxywasm.backends; None: in this process). sockets: listening sockets made
        by the caller, per listener one per worker thread (serve --processes N: the
        supervisor's, which outlive this process so that none closes with connections
        queued on it); the Server closes its own copies at stop()."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if client not in ("auto", "net", "httptools"):
            raise ValueError(f"unknown client {client!r}")
        self.client = client
        self.shared_state = shared_state
        if sockets is not None and (len(sockets) != len(bootstrap.listeners)
                                    or any(len(row) != concurrency for row in sockets)):
            raise ValueError(f"sockets: expected {concurrency} per listener for {len(bootstrap.listeners)} listeners")
        self._given = [list(row) for row in sockets] if sockets is not None else None
        self.bootstrap = bootstrap
        self.concurrency = concurrency
        self.cache_dir = cache_dir
        self.host: Host | None = None
        self.ports: dict[str, int] = {}
        self.admin_port: int | None = None
        self._sockets: list[list[socket.socket]] = []
        self._main: _Thread | None = None
        self._workers: list[_Thread] = []
        self._ready = False
        self._filters: list[list[tuple[Plugin, bool]]] = []

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> "Server":
        b = self.bootstrap
        # Sockets first, in the caller's thread: a bind error is the caller's error, and
        # port 0 resolves once so every worker listens on the same port.
        try:
            for i, (key, lst) in enumerate(zip(b.listener_keys(), b.listeners)):
                if self._given is not None:
                    socks = self._given[i]
                else:
                    socks = [_socket(lst.host, lst.port, self.concurrency > 1)]
                    socks += [_socket(lst.host, socks[0].getsockname()[1], True)
                              for _ in range(self.concurrency - 1)]
                self._sockets.append(socks)
                self.ports[key] = socks[0].getsockname()[1]
            self._admin_sock = _socket(*b.admin, False) if b.admin else None
            if self._admin_sock is not None:
                self.admin_port = self._admin_sock.getsockname()[1]
        except OSError:
            self._close_sockets()
            raise
        self._main = _Thread("pyproxywasm-main", self._main_thread)
        try:
            self._main.start()
            for i in range(self.concurrency):
                w = _Thread(f"pyproxywasm-worker-{i}", functools.partial(self._worker, index=i))
                w.start()
                self._workers.append(w)
        except BaseException:
            self.stop()
            raise
        self._ready = True
        return self

    def _close_sockets(self) -> None:
        for socks in self._sockets:
            for s in socks:
                s.close()
        admin_sock = getattr(self, "_admin_sock", None)
        if admin_sock is not None:
            admin_sock.close()

    async def _main_thread(self, t: _Thread) -> None:
        b = self.bootstrap
        # The clusters are also what plugins may call (proxy_http_call, proxy_grpc_*).
        host = self.host = Host(b.plugins, cache_dir=self.cache_dir, clusters=b.clusters.values(),
                                foreign_functions=BUILTIN_FOREIGN_FUNCTIONS, shared_state=self.shared_state)
        try:
            for lst in b.listeners:
                self._filters.append([(next(p for p in host.plugins if p.config == f.plugin), f.fail_open)
                                      for f in lst.filters])
            d = LoopDispatch(host.dispatcher, asyncio.get_running_loop())
            admin = None
            if self._admin_sock is not None:
                admin = _uvicorn(AdminApp(b.stats_tags, lambda: self._ready, listeners=self._listener_addresses))
                admin_task = asyncio.ensure_future(admin.serve(sockets=[self._admin_sock]))
                while not admin.started and not admin_task.done():
                    await asyncio.sleep(0.005)
                if admin_task.done():
                    admin_task.result()
            t.ready.set()
            await t.stopped()
            if admin is not None:
                admin.should_exit = True
                await admin_task
            d.close()
        finally:
            host.close()

    async def _worker(self, t: _Thread, index: int) -> None:
        host = self.host
        assert host is not None  # the main thread made it before any worker starts
        d = LoopDispatch(host.dispatcher, asyncio.get_running_loop())  # this thread's VMs start here
        upstream = self._upstream()
        servers: list[_Uvicorn] = []
        tasks: list[asyncio.Future[Any]] = []
        tcp_servers: list[asyncio.AbstractServer] = []
        tcp_handlers: list[TcpProxy] = []
        try:
            for lst, socks, filters in zip(self.bootstrap.listeners, self._sockets, self._filters):
                sock = socks[index]
                if isinstance(lst, HttpListener):
                    proxy = ProxyApp(lst, self.bootstrap.clusters, upstream, self.bootstrap.cluster_metadata)
                    # fail_open is the plugin's failure_policy, which the core applies per stream.
                    app = connection_manager(wrap(proxy, [p for p, _ in filters],
                                                  proxy.route_properties if proxy.has_metadata else None),
                                             lst.server_name, lst.server_header_transformation,
                                             lst.generate_request_id)
                    srv = _uvicorn(app)
                    servers.append(srv)
                    tasks.append(asyncio.ensure_future(srv.serve(sockets=[sock])))
                else:
                    assert isinstance(lst, TcpListener)
                    handler = TcpProxy(filters, lst.cluster, self.bootstrap.clusters,
                                       self.bootstrap.cluster_metadata, lambda: d)
                    tcp_handlers.append(handler)
                    tcp_servers.append(await asyncio.start_server(handler, sock=sock))
            while not all(s.started for s in servers):
                for task in tasks:
                    if task.done():
                        task.result()  # a server that failed to start
                await asyncio.sleep(0.005)
            t.ready.set()
            await t.stopped()
        finally:
            # Stop accepting, then give the connections accepted just before a few loop
            # turns to hand in their first request before uvicorn's shutdown closes every
            # connection with no request under way: closing one whose request bytes are
            # still unread would reset it (a client's new connection is not idle).
            for srv in servers:
                for listening in getattr(srv, "servers", ()):
                    listening.close()
            for s in tcp_servers:
                s.close()
            if servers:
                await asyncio.sleep(FIRST_REQUEST_GRACE)
            for srv in servers:
                srv.should_exit = True
            conns = [c for h in tcp_handlers for c in h.connections]
            for c in conns:
                c.cancel()
            if conns:  # their streams end (on_done...) before this thread's VMs go
                await asyncio.gather(*conns, return_exceptions=True)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            d.close()
            host.release_thread()

    def _listener_addresses(self) -> list[tuple[str, str, int]]:
        """(name, address, port) of each listener, port 0 resolved: the admin's /listeners."""
        return self.bootstrap.listener_addresses(self.ports)

    def _upstream(self) -> Upstream:
        """This worker's client to the clusters, on its own loop."""
        if self.client == "httptools":
            return Http1Client()
        net = HttpClient(IoLoop.attach(asyncio.get_running_loop()))
        if self.client == "net":
            return net
        return ByCluster(Http1Client(), net)

    def stop(self) -> None:
        """Stops accepting, lets requests in flight finish (2 s at most), stops the
        workers and then the main thread (its services last, as Envoy shuts down)."""
        self._ready = False
        for w in self._workers:
            w.request_stop()
        for w in self._workers:
            w.join()
        self._workers.clear()
        if self._main is not None:
            self._main.request_stop()
            self._main.join()
            self._main = None
        self._close_sockets()
        self._sockets.clear()

    def run(self, announce: Callable[["Server"], None] | None = None) -> None:
        """start(), then wait for SIGINT or SIGTERM, then stop()."""
        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if announce is not None:
                announce(self)
            while not done.wait(0.5):
                pass
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
