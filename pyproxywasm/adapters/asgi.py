"""ASGI middleware: Envoy HTTP filters (Proxy-Wasm plugins) in front of any ASGI 3 app.

    app = ProxyWasmMiddleware(app, plugins=[PluginConfig(VmConfig("filter.wasm"), ...)])

Every `http` request becomes one stream through the plugins in order (Envoy's
http_filters), and its response goes back through them in reverse. The event loop's thread
owns its VMs (the per-thread model of host.py) and their dispatcher is attached to the
loop, so ticks, queue notifications and callout answers run there, between requests; a
stream a plugin holds waits without blocking the loop, and goes on when the plugin
continues it. Wasm runs with the GIL released.

- The request body streams to the app as the plugins let it through; held bodies are
  limited as in Envoy (413 past the buffer limit). A local reply answers without calling
  the app.
- The response streams back chunk by chunk when no plugin holds it; `content-length` is
  made exact when a plugin changed a body that is complete, and dropped (chunked) when a
  streamed body's length changed. Trailers pass when the server supports
  `http.response.trailers`.
- `lifespan` starts the Host at startup (on the loop's thread) and closes it at shutdown.
- `websocket` (and any other scope) passes through untouched: Envoy's HTTP filters see only
  a websocket's upgrade request, and this middleware does not filter it.
- A trap or a failed VM follows the plugin's failure policy (chain.failure_policy): fail
  closed is a 503, with grpc-status only for gRPC requests.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from threading import get_ident
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Sequence
from urllib.parse import quote

from .. import properties as props_mod
from .._binding import lib
from ..config import PluginConfig
from ..errors import ProxyWasmError
from ..host import Host, Plugin
from ..http import HttpStream
from ._common import FAST, HostHolder, StreamProperties, asgi_path, request_headers
from .chain import (FilterChain, LazyChain, decode_raw, headers_of, take_body, trailers_of, _raw, _END, _HDR,
                    _R_REQ_HDR)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("pyproxywasm.adapters.asgi")

_REQ_HDR_OUT, _REQ_ENDED = lib.PW_S_REQ_HEADERS_OUT, lib.PW_S_REQ_ENDED
_RESP_HDR_OUT, _RESP_ENDED, _RESP_TR_OUT = (lib.PW_S_RESP_HEADERS_OUT, lib.PW_S_RESP_ENDED,
                                            lib.PW_S_RESP_TRAILERS_OUT)
_RESET, _LOCAL, _FAILED = lib.PW_S_RESET, lib.PW_S_LOCAL_REPLY, lib.PW_S_FAILED
_OVER = _RESET | _LOCAL | _FAILED
_REQ_CHANGED = lib.PW_S_REQ_HEADERS_CHANGED
_NOT_OUT = (0, None, None, None, False)  # asgi_respond's answer when nothing is ready to send
_DRAIN_SECONDS, _DRAIN_BYTES = 2.0, 16 << 20
_POLL = 0.25  # a held stream is also re-checked this often (a resume made from another
# stream's callback is not an event of the dispatcher's)


class StreamReset(Exception):
    """A plugin reset the stream (proxy_close_stream, or a local reply after the response
    started): the server closes the connection, as Envoy resets the downstream stream."""


class _ClientGone(Exception):
    pass


_UNSET = object()


class _LoopState:
    """One event loop's share: its thread's dispatcher attached to it. An exchange a plugin
    holds asks the dispatcher to tell it (Dispatcher.watch) when an event it delivers (a
    tick, a queue notification, a call's answer) continues, answers or resets one of its
    streams."""

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop, attach: bool,
                 vm_wide: bool) -> None:
        self.loop = loop
        self.host = host
        self.props = StreamProperties(vm_wide)
        # The last request's (client, server, http_version) objects and their encoded
        # properties: a connection's requests reuse them without a lookup.
        self.last: tuple[Any, Any, Any, list[tuple[bytes, bytes]]] = (_UNSET, _UNSET, _UNSET, [])
        self.dispatcher = host.dispatcher
        # Not attached here when the embedding serves the dispatcher from this loop itself
        # (one fd has one reader): its runs tell the watchers all the same.
        self.detach: Callable[[], None] = self.dispatcher.attach(loop) if attach else _nothing

    @staticmethod
    def vm_key(s: HttpStream) -> int:
        key: int = lib.pw_vm_key(s._vm)  # the slow path only: a held stream
        return key


def _nothing() -> None:
    pass


_new_exchange = object.__new__


RouteProperties = Callable[[Scope], Mapping[Any, Any]]  # property path -> value


class ProxyWasmMiddleware:
    """Runs Proxy-Wasm HTTP filters in front of an ASGI 3 app.

    plugins: the filter chain, in Envoy's http_filters order. host: run on an existing Host
    instead (its plugins, in order); it is then not closed here. host_options: keyword
    arguments for the Host made from `plugins` (buffer_limit, properties, ...).
    properties: extra per-stream properties (Envoy's attributes) for every request.

    For an embedding that runs one Host behind several of these (serve: one per listener):
    filters: the host's plugins this one runs, in order (default: all of them); their
    streams then get the listener's attributes per stream, as the VMs are shared.
    route_properties(scope): per-request attributes (Envoy's route_name, route_metadata,
    cluster_name, cluster_metadata), set on every filter's stream. attached=True: the
    embedding already serves the host's dispatcher from each loop (the middleware then
    only watches it)."""

    def __init__(self, app: ASGIApp, plugins: Sequence[PluginConfig] = (), *,
                 host: Host | None = None, host_options: Mapping[str, Any] | None = None,
                 filters: Sequence[Plugin] | None = None,
                 route_properties: RouteProperties | None = None,
                 attached: bool = False) -> None:
        self.app = app
        self._holder = HostHolder(plugins, host, host_options, filters)
        self._vm_wide = filters is None
        self._route_properties = route_properties
        self._attach = not attached
        self._loops: dict[int, _LoopState] = {}
        self._lock = threading.Lock()

    @property
    def host(self) -> Host:
        return self._holder.get()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t != "http":
            if t == "lifespan":
                await self._lifespan(scope, receive, send)
            else:  # websocket and anything else: untouched
                await self.app(scope, receive, send)
            return
        ls = self._loops.get(get_ident()) or self._loop_state()
        one = self._holder.one
        if one is None or not FAST:
            await self._http(scope, receive, send, ls)
            return
        # The common case, one filter, in this one coroutine (each coroutine or call less
        # is a few hundred instructions per request): the request headers and properties
        # go in with one C call (StreamBase.asgi_start), None when the scope is not what
        # it takes; the properties only for a plugin that can read them (and once per
        # loop for the VM-wide ones).
        reads = one[1]
        sp = ls.props
        props = extra = None
        if reads or sp._server is None:
            client, server = scope.get("client"), scope.get("server")
            version = scope.get("http_version", "1.1")
            last = ls.last
            if client is last[0] and server is last[1] and version is last[2]:
                props = last[3]  # the connection's: the server gives each request its tuples
            else:
                props = sp.for_stream(ls.host.vms if sp._server is None else (), client, server,
                                      "HTTP/" + version)
                ls.last = (client, server, version, props)
            rp = self._route_properties
            if reads and rp is not None:
                extra = list(props_mod.flatten(rp(scope)))
        try:
            s: HttpStream | None = one[0].http_stream()
        except ProxyWasmError:
            s = None  # the general path fails the stream closed
        r = s.asgi_start(scope, props if reads else None, extra) if s is not None else None
        if r is None:
            await self._http(scope, receive, send, ls)
            return
        assert s is not None
        f, eos, grpc = r
        # _Exchange(self.app, ls, chain, scope, receive, send, eos, b"", True), without
        # the class call's own cost (type call, then __init__: over 2,000 instructions),
        # and without its FilterChain (about 4,000 more) until something asks for it: a
        # request that goes straight through never does.
        ex = _new_exchange(_Exchange)
        ex.app, ex.ls, ex.one, ex.scope, ex.receive, ex.send = self.app, ls, s, scope, receive, send
        ex.made_with = (grpc, f, eos)
        ex.down_ended = eos
        ex.fast = True
        try:
            if f >= 0 and f & (_OVER | _REQ_HDR_OUT) == _REQ_HDR_OUT:
                # The filter let the request headers through: the app now, with the
                # client's own scope when the filter left them alone (in C).
                app_scope, ex.pending = s.asgi_app_scope(scope, b"")
                try:
                    await self.app(app_scope, ex._app_receive, ex._app_send)
                except Exception:
                    if ex.resp_started or not ex.chain.answered:
                        raise
                if not ex.resp_done or s.flags & _OVER:
                    await ex.after_app()
            else:
                await ex.run()  # held, answered or failed: the general exchange
        except _ClientGone:
            pass
        finally:
            if ex.recv_task is not None:
                ex.recv_task.cancel()
            ex.finish()

    # ---- lifespan -----------------------------------------------------------------------
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped_receive() -> Message:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self._loop_state()  # the Host starts here, on the loop's thread
            return msg

        async def wrapped_send(msg: Message) -> None:
            if msg["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self.close()
            await send(msg)

        await self.app(scope, wrapped_receive, wrapped_send)

    def close(self) -> None:
        """Detaches from the loops and closes the Host if this middleware made it (on the
        thread that runs the loop: the VMs are that thread's)."""
        with self._lock:
            states, self._loops = list(self._loops.values()), {}
        for ls in states:
            ls.detach()
        self._holder.close()

    def _loop_state(self) -> _LoopState:
        tid = get_ident()
        ls = self._loops.get(tid)
        if ls is None:
            host = self._holder.get()
            ls = _LoopState(host, asyncio.get_running_loop(), self._attach, self._vm_wide)
            with self._lock:
                self._loops[tid] = ls
        return ls

    # ---- http ---------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send, ls: _LoopState) -> None:
        """The general path: any chain, or a scope the C exchange does not take."""
        server = scope.get("server")
        version = scope.get("http_version", "1.1")
        props = ls.props.for_stream(ls.host.vms if ls.props._server is None else (),
                                    scope.get("client"), server, "HTTP/" + version)
        rp = self._route_properties
        extra = list(props_mod.flatten(rp(scope))) if rp is not None else ()
        plugins = self._holder.plugins
        qs = scope.get("query_string") or b""
        raw = scope.get("raw_path") or quote(scope["path"]).encode()
        path = raw + b"?" + qs if qs else raw
        authority = None
        if server and server[1] is not None:
            authority = f"{server[0]}:{server[1]}".encode()
        data, nflat, eos, grpc = request_headers(
            scope["method"].encode(), path, authority, scope.get("scheme", "http").encode(),
            scope["headers"], version not in ("1.0", "1.1"))
        chain = FilterChain(plugins, props, grpc, self._holder.reads_properties, extra)
        if chain.empty:
            await self.app(scope, receive, send)
            return
        ex = _Exchange(self.app, ls, chain, scope, receive, send, eos, path)
        try:
            chain.push_request_headers(data, nflat, eos)
        except BaseException:
            chain.finish()
            raise
        await self._exchange(ex)

    @staticmethod
    async def _exchange(ex: "_Exchange") -> None:
        try:
            await ex.run()
        except _ClientGone:
            pass
        finally:
            if ex.recv_task is not None:
                ex.recv_task.cancel()
            ex.finish()


class _Exchange(LazyChain):
    """One request through the chain and the app, and its response back. (The common
    path makes one with _new_exchange and sets its fields itself: keep the two in step.)"""

    # What an exchange starts with, as class attributes: __init__ sets only what differs
    # per request (the common path changes few of these at all).
    event: asyncio.Event | None = None
    recv_task: asyncio.Future[Message] | None = None
    gone = False             # the client disconnected
    req_end_given = False    # the app got the request's last message
    resp_started = resp_done = False
    start_msg: Message | None = None
    trailers_declared = False
    path = b""
    resp_in = resp_out = 0
    pending = b""            # request body taken for the app's scope, not yet read
    hdr_pushed = False       # the app's response headers went into the chain
    end_pushed = False       # ... and its end
    fast = False             # one filter, started by asgi_start: the exchange in C (and
    # then `one` and `made_with` instead of a chain: LazyChain makes it if asked)

    def __init__(self, app: ASGIApp, ls: _LoopState, chain: FilterChain, scope: Scope,
                 receive: Receive, send: Send, eos: bool, path: bytes,
                 fast: bool = False) -> None:
        self.app, self.ls, self._chain, self.scope = app, ls, chain, scope
        self.receive, self.send = receive, send
        self.down_ended = eos      # the client's request is all read
        if path:
            self.path = path
        if fast:
            self.fast = True

    app: ASGIApp
    ls: _LoopState
    scope: Scope
    receive: Receive
    send: Send
    down_ended: bool

    @property
    def head(self) -> bool:
        return bool(self.scope["method"] == "HEAD")

    # ---- waiting ------------------------------------------------------------------------
    def wake(self) -> None:
        if self.event is not None:
            self.event.set()

    async def _wait(self) -> None:
        """Until a plugin continues the stream, or the client's next message (which goes
        into the chain), or a short poll."""
        ev = self.event
        if ev is None:
            ev = self.event = asyncio.Event()
        ev.clear()
        d, ls = self.ls.dispatcher, self.ls
        watched = [(ls.vm_key(s), s._id) for s in self.chain.streams if s._id]
        for key in watched:
            d.watch(key[0], key[1], self.wake)
        try:
            if not self.gone:
                # Keep reading the client meanwhile: more body goes into the chain (held,
                # as Envoy buffers), and a disconnect is noticed.
                if self.recv_task is None:
                    self.recv_task = asyncio.ensure_future(self.receive())
                waiter = asyncio.ensure_future(ev.wait())
                try:
                    await asyncio.wait((self.recv_task, waiter), timeout=_POLL,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if self.recv_task.done():
                    t, self.recv_task = self.recv_task, None
                    self._on_message(t.result())
            else:
                try:
                    await asyncio.wait_for(ev.wait(), _POLL)
                except asyncio.TimeoutError:
                    pass
        finally:
            for key in watched:
                d.unwatch(key[0], key[1])
        self.chain.refresh()
        self.chain.pump()

    async def _read(self) -> None:
        """One message from the client into the chain."""
        if self.recv_task is not None:
            t, self.recv_task = self.recv_task, None
            msg = await t
        else:
            msg = await self.receive()
        self._on_message(msg)

    def _on_message(self, msg: Message) -> None:
        t = msg["type"]
        if t == "http.request":
            more = msg.get("more_body", False)
            body = msg.get("body", b"")
            if not self.down_ended and (body or not more):
                self.chain.push_request_body(body, not more)
            if not more:
                self.down_ended = True
        elif t == "http.disconnect":
            self.gone = self.down_ended = True

    # ---- the exchange -------------------------------------------------------------------
    async def run(self) -> None:
        chain = self.chain
        last = chain.request_out()
        # The request headers through every filter (or an answer from one of them).
        # (No last filter means one could not serve the stream: the chain has answered.)
        while last is not None and not chain.answered and not (last.flags & _REQ_HDR_OUT):
            if self.gone:
                raise _ClientGone
            await self._wait()
        if last is not None and not chain.answered:
            try:
                await self.app(self._app_scope(last), self._app_receive, self._app_send)
            except Exception:
                if self.resp_started or not chain.answered:
                    raise
            if self.resp_done and self.fast and not last.flags & _OVER:
                return  # all sent, nothing answered: nothing left to do
        await self.after_app()

    async def after_app(self) -> None:
        """Whatever the filters still hold goes out when they let it."""
        chain = self.chain
        await self._flush()
        while not self.resp_done:
            if self.gone:
                raise _ClientGone
            if not chain.answered and not self.end_pushed:
                return  # the app left its response unfinished: the server deals with that
            await self._wait()
            await self._flush()
        if chain.answered and not self.down_ended:
            await self._drain()

    async def _drain(self) -> None:
        """After a local reply sent while the client was still sending its body: read (and
        drop) the rest for a while, so the client gets to read the reply instead of a
        reset, as Envoy does; bounded in time and bytes."""
        loop = asyncio.get_running_loop()
        deadline, left = loop.time() + _DRAIN_SECONDS, _DRAIN_BYTES
        while not self.down_ended and left > 0:
            wait = deadline - loop.time()
            if wait <= 0:
                return
            if self.recv_task is None:
                self.recv_task = asyncio.ensure_future(self.receive())
            done, _ = await asyncio.wait((self.recv_task,), timeout=wait)
            if not done:
                return
            t, self.recv_task = self.recv_task, None
            msg = t.result()
            if msg["type"] != "http.request":
                return
            left -= len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return

    def _app_scope(self, last: HttpStream) -> Scope:
        if self.fast:
            # In C: the client's own scope when the filter left the headers alone.
            scope: Scope
            scope, self.pending = last.asgi_app_scope(self.scope, self.pending)
            return scope
        scope = dict(self.scope)
        ended = bool(last.flags & _REQ_ENDED)
        if not any(f.flags & _REQ_CHANGED for f in self.chain.streams):
            # No filter changed the request headers (the core's flags): the app gets the
            # client's own header list, with no per-header work in Python.
            body = self.pending = take_body(last, False) if ended else b""
            if not body:
                ext = scope.get("extensions")
                scope["extensions"] = {**ext, "pyproxywasm": {"end_stream": ended}} if ext \
                    else {"pyproxywasm": {"end_stream": ended}}
                return scope
        hdrs = decode_raw(_raw(last, _R_REQ_HDR))
        regular: list[tuple[bytes, bytes]] = []
        method = path = authority = scheme = None
        for k, v in hdrs:
            if k[:1] == b":":
                if k == b":method":
                    method = v
                elif k == b":path":
                    path = v
                elif k == b":authority":
                    authority = v
                elif k == b":scheme":
                    scheme = v
            else:
                regular.append((k, v))
        if authority:
            regular.insert(0, (b"host", authority))
        if method is not None and method.decode() != scope["method"]:
            scope["method"] = method.decode()
        if path is not None and path != self.path:
            asgi_path(scope, path)
        if scheme is not None and scheme.decode() != scope.get("scheme"):
            scope["scheme"] = scheme.decode()
        body = b""
        if ended:
            # The whole body the app will read is known: say its true length.
            body = self.pending = self.pending or take_body(last, False)
            if body or any(k == b"content-length" for k, _ in regular):
                regular = [(k, v) for k, v in regular if k != b"content-length"]
                regular.append((b"content-length", str(len(body)).encode()))
        scope["headers"] = regular
        # Whether a body follows is the stream's, not the headers' (a filter may drop
        # content-length from a request that still has one): said for apps that forward
        # the request (serve's proxy).
        scope["extensions"] = {**(scope.get("extensions") or {}),
                               "pyproxywasm": {"end_stream": ended and not body}}
        return scope

    async def _app_receive(self) -> Message:
        chain = self.chain
        while True:
            if self.gone or chain.answered:
                return {"type": "http.disconnect"}
            if self.req_end_given:
                # Nothing more to read: what is left is the client going away.
                await self._read()
                continue
            last = chain.streams[-1]
            body = take_body(last, False)
            if self.pending:
                body, self.pending = self.pending + body, b""
            ended = bool(last.flags & _REQ_ENDED)
            if body or ended:
                self.req_end_given = ended
                return {"type": "http.request", "body": body, "more_body": not ended}
            if not self.down_ended:
                await self._read()
            else:
                await self._wait()

    async def _app_send(self, msg: Message) -> None:
        """The app's send (a coroutine function, as servers' own are: libraries check for
        that). The common case, the first body after the start, goes through the one
        filter with one C call (StreamBase.asgi_respond), which hands back what the filter
        lets out ready for the client."""
        t = msg["type"]
        if t == "http.response.start":
            if self.start_msg is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start_msg = msg
            self.trailers_declared = bool(msg.get("trailers"))
            return
        msg0 = self.start_msg
        made = self._chain
        if self.fast and t == "http.response.body" and not self.hdr_pushed and msg0 is not None \
                and not self.trailers_declared and (made is None or made.dead < 0) \
                and not self.one.flags & _OVER:
            body = msg.get("body", b"")
            end = not msg.get("more_body", False)
            resp_in = self.resp_in + len(body)
            r: Any
            try:
                # None when the message is not what it takes (the general path below then
                # does all); headers None when the filter did not let it all through
                # (paused, answered, ...: _flush goes on).
                r = self.one.asgi_respond(msg0["status"], msg0.get("headers", ()), body,
                                          end, self.scope["method"] == "HEAD", resp_in)
            except ProxyWasmError as e:
                self.chain._die(0, e)
                r = _NOT_OUT
            if r is not None:
                self.hdr_pushed = True
                self.end_pushed = end
                self.resp_in = resp_in
                if made is not None:  # (else the chain learns it when made)
                    made._fed_resp[0] = _HDR | _END if end else _HDR  # fed to filter 0 by the C exchange
                if r[2] is None:
                    await self._flush()
                    return
                self.resp_started = True
                out = r[3]
                await self.send({"type": "http.response.start", "status": r[1], "headers": r[2],
                                 "trailers": False})
                self.resp_out += len(out)
                await self.send({"type": "http.response.body", "body": out, "more_body": not r[4]})
                if r[4]:
                    self.resp_done = True
                return
        chain = self.chain
        if (chain.dead >= 0 or chain.streams[0].flags & _OVER) if self.fast else chain.answered:
            return  # a plugin answered: the app's response goes nowhere
        if t == "http.response.body":
            body = msg.get("body", b"")
            more = msg.get("more_body", False)
            end = not more and not self.trailers_declared
            if self.start_msg is None:
                raise RuntimeError("http.response.body before http.response.start")
            if not self.hdr_pushed:
                self._push_start(end and not body)
                if end and not body:
                    await self._flush()
                    return
            self.resp_in += len(body)
            if body or end:
                self.end_pushed = end
                chain.push_response_body(body, end)
            await self._flush()
        elif t == "http.response.trailers":
            if not self.hdr_pushed:
                self._push_start(False)
            if not msg.get("more_trailers", False):
                self.end_pushed = True
                chain.push_response_trailers(list(msg.get("headers", [])))
            await self._flush()
        else:
            raise RuntimeError(f"unexpected ASGI message {t!r}")

    def _push_start(self, end: bool) -> None:
        msg = self.start_msg
        if msg is None:
            raise RuntimeError("response body before http.response.start")
        self.hdr_pushed = True
        self.end_pushed = end
        hdrs = [(b":status", str(msg["status"]).encode())]
        hdrs.extend(msg.get("headers", ()))
        self.chain.push_response_headers(hdrs, end)

    async def _flush(self) -> None:
        """Sends the client what the first filter let through."""
        if self.resp_done:
            return
        chain = self.chain
        if chain.synthetic is not None:  # filter 0 could not serve the stream: its 503
            await self._start(chain.synthetic, b"", True, None)
            return
        s0 = chain.streams[0]
        f = s0.flags
        if chain.reset:
            self.resp_done = True
            raise StreamReset("a plugin reset the stream")
        if not self.resp_started:
            if not f & _RESP_HDR_OUT:
                return
            body = take_body(s0, True)
            ended = bool(f & _RESP_ENDED)
            if not body and not ended:
                return  # headers wait for the body, so content-length can be made true
            trailers = trailers_of(s0, True) if f & _RESP_TR_OUT else None
            await self._start(headers_of(s0, True), body, ended, trailers)
            return
        body = take_body(s0, True)
        ended = bool(f & _RESP_ENDED)
        if body or ended:
            trailers = trailers_of(s0, True) if ended and f & _RESP_TR_OUT else None
            await self._body(body, ended, trailers)

    async def _start(self, hdrs: list[tuple[bytes, bytes]], body: bytes, ended: bool,
                     trailers: list[tuple[bytes, bytes]] | None) -> None:
        chain = self.chain
        answered = chain.answered
        drop_grpc = answered and chain.failed and not chain.is_grpc
        status = int(hdrs[0][1]) if hdrs and hdrs[0][0] == b":status" else 200
        # content-length made true: exact when the whole body is known, none when a
        # streamed body may have changed; HEAD, 1xx, 204 and 304 keep theirs.
        fix = (ended or self.resp_in != len(body) or answered) and not (
            self.head or status < 200 or status in (204, 304))
        out: list[tuple[bytes, bytes]] = []
        for kv in hdrs:
            k = kv[0]
            if k[:1] == b":" or (fix and k == b"content-length") or (drop_grpc and k == b"grpc-status"):
                continue
            out.append(kv)
        if fix and ended:
            out.append((b"content-length", str(len(body)).encode()))
        if answered and not self.down_ended and self.scope.get("http_version") in ("1.0", "1.1"):
            # Answered before the request was all read: the connection cannot be reused
            # (Envoy closes it too), and saying so keeps the client from trying.
            out.append((b"connection", b"close"))
        ext = self.scope.get("extensions")
        self.trailers_declared = bool(ext and "http.response.trailers" in ext) and (
            self.trailers_declared or bool(trailers))
        self.resp_started = True
        await self.send({"type": "http.response.start", "status": status, "headers": out,
                         "trailers": self.trailers_declared})
        await self._body(body, ended, trailers)

    async def _body(self, body: bytes, ended: bool, trailers: list[tuple[bytes, bytes]] | None) -> None:
        trail = ended and self.trailers_declared
        self.resp_out += len(body)
        await self.send({"type": "http.response.body", "body": body, "more_body": not ended})
        if trail:
            await self.send({"type": "http.response.trailers", "headers": trailers or [],
                             "more_trailers": False})
        if ended:
            self.resp_done = True
