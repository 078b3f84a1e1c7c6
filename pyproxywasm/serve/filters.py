"""The http_filters of a listener as ASGI layers around the router.

Each envoy.filters.http.wasm entry becomes one layer; layers nest in config order, so the
request meets them first to last and the response last to first, as Envoy's decoder and
encoder chains run. A paused stream waits on its thread's dispatcher (attached to the
event loop): ticks, queue notifications and callout answers resume it while the loop
serves other requests.

This is serve's own compact filter layer; the general ASGI middleware lives in
pyproxywasm.adapters.asgi, and `wrap()` uses it when it is available.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import struct
from itertools import chain
from typing import Any, Awaitable, Callable, Mapping, cast

from .. import properties as props
from .._binding import lib
from ..dispatch import Dispatcher
from ..pairs import _lens
from ..host import Plugin
from ..http import HttpStream
from ..errors import VmFailedError

log = logging.getLogger("pyproxywasm.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LoopDispatch:
    """This thread's dispatcher served from its asyncio loop, plus a signal paused streams
    wait on: it fires after every dispatcher run (a tick or notification may have resumed
    a stream) and after any stream event that may have continued another stream."""

    def __init__(self, dispatcher: Dispatcher, loop: asyncio.AbstractEventLoop) -> None:
        self.dispatcher = dispatcher
        self.loop = loop
        self._waiters: list[asyncio.Future[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        loop.add_reader(dispatcher.fileno(), self._run)
        self._run()

    def _run(self) -> None:
        self.dispatcher.run()
        if self._timer is not None:
            self._timer.cancel()
        wait = self.dispatcher.next_timeout()
        self._timer = self.loop.call_later(wait, self._run) if wait is not None else None
        self.kick()

    def kick(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def changed(self) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        self._waiters.append(fut)
        return fut

    def close(self) -> None:
        self.loop.remove_reader(self.dispatcher.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self.kick()


def _request_headers(scope: Scope) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Envoy's request headers from an ASGI scope, and whether the request has no body."""
    path = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        path += b"?" + scope["query_string"]
    authority = b""
    rest = []
    has_body = False
    for k, v in scope["headers"]:
        if k == b"host":
            authority = v
        else:
            if k == b"content-length":
                has_body = has_body or v.strip() not in (b"0", b"")
            elif k == b"transfer-encoding":
                has_body = True
            rest.append((k, v))
    return [(b":method", scope["method"].encode()), (b":path", path), (b":authority", authority),
            (b":scheme", scope.get("scheme", "http").encode())] + rest, not has_body


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _wire(items: list[tuple[bytes, bytes]]) -> bytes:
    """Byte headers in the pairs wire format (the C core takes it as is)."""
    flat = list(chain.from_iterable(items))
    return _lens(len(flat)).pack(len(flat) >> 1, *map(len, flat)) + b"\0".join(flat) + b"\0"


_PROTOCOL, _SRC, _SRC_PORT, _DST, _DST_PORT = (props.encode_path(p) for p in (
    "request.protocol", "source.address", "source.port", "destination.address", "destination.port"))
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def _set_properties(s: HttpStream, scope: Scope, extra: dict[str, Any] | None) -> None:
    """Envoy's connection attributes for the stream, encoded here: this runs per request."""
    vm, cid, setp = s._vm, s.context_id, lib.pw_set_host_property
    v = b"HTTP/" + scope.get("http_version", "1.1").encode()
    setp(vm, cid, _PROTOCOL, len(_PROTOCOL), v, len(v))
    for (host, port), addr, port_path in ((scope.get("client") or (None, 0), _SRC, _SRC_PORT),
                                          (scope.get("server") or (None, 0), _DST, _DST_PORT)):
        if host is not None:
            v = f"{host}:{port}".encode()
            setp(vm, cid, addr, len(addr), v, len(v))
            v = _U64.pack(port)
            setp(vm, cid, port_path, len(port_path), v, len(v))
    if extra:
        for path, value in props.flatten(cast("Mapping[Any, Any]", extra)):
            setp(vm, cid, path, len(path), value, len(value))


class _ClientGone(Exception):
    """The client disconnected while the stream waited on a plugin."""


class _Inbox:
    """The request's receive(), which can also be watched while a plugin holds the stream
    (to see the client leave) without losing the messages that arrive meanwhile. After a
    body chunk with more to come it stops watching: reading on would buffer the body past
    what the plugin asked for (Envoy stops reading too)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Future[Any] | None = None
        self._stash: collections.deque[dict[str, Any]] = collections.deque()
        self._more = False

    async def get(self) -> dict[str, Any]:
        if self._stash:
            return self._stash.popleft()
        if self._task is not None:
            task, self._task = self._task, None
            msg: dict[str, Any] = await task
            return msg
        return await self._receive()

    def watch(self) -> asyncio.Future[Any] | None:
        """A pending receive to wait on (None when it is better not to read on)."""
        t = self._task
        if t is not None and t.done() and not self.disconnected():
            self._task = None
            if t.cancelled() or t.exception() is not None:
                return None
            msg = t.result()
            self._stash.append(msg)
            self._more = bool(msg.get("more_body"))
        if self._more:
            return None
        if self._task is None:
            self._task = asyncio.ensure_future(self._receive())
        return self._task

    def disconnected(self) -> bool:
        t = self._task
        return t is not None and t.done() and not t.cancelled() and t.exception() is None \
            and t.result().get("type") == "http.disconnect"

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _LocalReply(Exception):
    """The plugin answered (or failed) while the app was running: stop the app."""


class WasmFilter:
    """One Wasm HTTP filter in front of `app`."""

    def __init__(self, app: ASGIApp, plugin: Plugin, fail_open: bool,
                 dispatch: Callable[[], LoopDispatch],
                 route_properties: Callable[[Scope], dict[str, Any]] | None = None) -> None:
        self.app = app
        self.plugin = plugin
        self.fail_open = fail_open
        self._dispatch = dispatch
        self._route_properties = route_properties

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        d = self._dispatch()
        try:
            s = self.plugin.http_stream()
            _set_properties(s, scope, self._route_properties(scope) if self._route_properties else None)
        except VmFailedError:
            if self.fail_open:
                await self.app(scope, receive, send)
            else:
                await _plain(send, 503, b"")
            return
        inbox = _Inbox(receive)
        try:
            await self._serve(s, d, scope, inbox, send)
        except _ClientGone:
            pass  # the client left while a plugin held the stream: it ends now, as in Envoy
        finally:
            inbox.close()
            s.finish()  # on_log, on_done, on_delete
            d.kick()

    async def _wait(self, s: HttpStream, d: LoopDispatch, done: Callable[[], bool],
                    inbox: "_Inbox | None" = None) -> None:
        """Until done(): the dispatcher may resume the stream; the client may leave."""
        d.kick()  # an event on this stream may have continued another one
        while not done():
            changed = d.changed()
            watch = inbox.watch() if inbox is not None else None
            if watch is None:
                await changed
            else:
                await asyncio.wait((changed, watch), return_when=asyncio.FIRST_COMPLETED)
                if watch.done() and inbox is not None and inbox.disconnected():
                    raise _ClientGone()
            s.refresh()

    async def _serve(self, s: HttpStream, d: LoopDispatch, scope: Scope, inbox: "_Inbox", send: Send) -> None:
        receive = inbox.get
        headers, end = _request_headers(scope)
        sent = _wire(headers)
        s.send_request_headers(sent, end_stream=end)
        await self._wait(s, d, lambda: s.request_headers_forwarded or _ended(s), inbox)
        if _ended(s):
            await self._local(s, send)
            return
        sc = dict(scope)
        # Whether a body follows is the stream's, not the headers': a filter may drop
        # content-length from a request that still has a body.
        sc["extensions"] = {**scope.get("extensions", {}), "pyproxywasm": {"end_stream": end}}
        raw_headers = s._read(lib.PW_R_REQ_HEADERS)
        if raw_headers != sent:  # the filter changed them: the app gets its version
            method = path = authority = None
            rest = []
            for k, v in _pairs(raw_headers):
                if k[:1] != b":":
                    rest.append((k, v))
                elif k == b":method":
                    method = v
                elif k == b":path":
                    path = v
                elif k == b":authority":
                    authority = v
            sc["method"] = method.decode("latin-1") if method else scope["method"]
            p, _, q = (path or b"/").partition(b"?")
            sc["raw_path"], sc["path"], sc["query_string"] = p, p.decode("latin-1"), q
            if authority:
                rest.insert(0, (b"host", authority))
            sc["headers"] = rest
        req_done = end

        async def recv() -> dict[str, Any]:
            nonlocal req_done
            while True:
                if req_done:
                    if _ended(s):
                        raise _LocalReply()
                    return await receive()  # only http.disconnect is left
                msg = await receive()
                if msg["type"] != "http.request":
                    return msg
                more = msg.get("more_body", False)
                s.send_request_body(msg.get("body", b""), end_stream=not more)
                if not more:
                    req_done = True
                    await self._wait(s, d, lambda: s.request_complete or _ended(s), inbox)
                if _ended(s):
                    raise _LocalReply()
                out = s.take_request_body()
                if out or not more:
                    return {"type": "http.request", "body": out, "more_body": more}

        started = False
        pending: dict[str, Any] | None = None

        async def out_body(body: bytes, more: bool, changed: bool) -> None:
            nonlocal started
            if not started:  # headers held by the plugin until now
                await self._wait(s, d, lambda: s.response_headers_forwarded or _ended(s), inbox)
                if _ended(s):
                    raise _LocalReply()
                await send(_start(s, None if more and not changed else (-1 if more else len(body))))
                started = True
            await send({"type": "http.response.body", "body": body, "more_body": more})

        async def snd(msg: dict[str, Any]) -> None:
            nonlocal pending
            t = msg["type"]
            if t == "http.response.start":
                pending = msg
                return
            if t != "http.response.body":
                await send(msg)
                return
            body, more = msg.get("body", b""), msg.get("more_body", False)
            if pending is not None:
                start, pending = pending, None
                rh = [(b":status", str(start["status"]).encode())] + list(start.get("headers", []))
                empty = not body and not more
                s.send_response_headers(_wire(rh), end_stream=empty)
                if _ended(s):
                    raise _LocalReply()
                if empty:
                    await out_body(b"", False, False)
                    return
            s.send_response_body(body, end_stream=not more)
            if not more:
                await self._wait(s, d, lambda: s.response_complete or _ended(s), inbox)
            if _ended(s) and not s.response_complete:
                raise _LocalReply()
            out = s.take_response_body()
            if out or not more:
                await out_body(out, more, len(out) != len(body))

        try:
            await self.app(sc, recv, snd)
        except _LocalReply:
            if not started:
                await self._local(s, send)
            return
        if pending is not None:  # a start with no body message: end it
            await snd({"type": "http.response.body", "body": b"", "more_body": False})

    async def _local(self, s: HttpStream, send: Send) -> None:
        """The plugin's local reply (after its own response callbacks), a failed VM's 503,
        or a reset."""
        if s.local_response is None and s.reset and not s.failed:
            await _plain(send, 503, b"")  # closed by the plugin: nothing to send back
            return
        await send(_start(s))
        await send({"type": "http.response.body", "body": s.take_response_body(), "more_body": False})


def _ended(s: HttpStream) -> bool:
    return bool(s.local_response is not None or s.reset or s.failed) if s.flags & _END_BITS else False


_END_BITS = lib.PW_S_LOCAL_REPLY | lib.PW_S_RESET | lib.PW_S_FAILED


def _start(s: HttpStream, length: int | None = None) -> dict[str, Any]:
    """The response start from the headers as the plugin left them. length: None keeps
    content-length; -1 drops it (the plugin changed a body whose end is not known yet:
    the body goes chunked); n sets it (the whole body is known)."""
    status = 200
    headers = []
    for k, v in _pairs(s._read(lib.PW_R_RESP_HEADERS)):
        if k == b":status":
            status = int(v or 200)
        elif k[:1] != b":" and (length is None or k != b"content-length"):
            headers.append((k, v))
    if length is not None and length >= 0:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


def _pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """The pairs wire format as byte pairs (what ASGI wants: no str round trip)."""
    if len(data) < 4:
        return []
    (n,) = _U32.unpack_from(data, 0)
    # Names and values end with NUL: with no NUL inside any of them (HTTP allows none), one
    # split finds them all; otherwise the lengths say where each one ends.
    parts = data[4 + 8 * n:].split(b"\0")
    if len(parts) == 2 * n + 1:
        return list(zip(parts[0:2 * n:2], parts[1:2 * n:2]))
    lens = struct.unpack_from(f"<{2 * n}I", data, 4)
    off = 4 + 8 * n
    out = []
    for i in range(0, 2 * n, 2):
        kl, vl = lens[i], lens[i + 1]
        k = data[off:off + kl]
        off += kl + 1
        out.append((k, data[off:off + vl]))
        off += vl + 1
    return out


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def wrap(app: ASGIApp, filters: list[tuple[Plugin, bool]], dispatch: Callable[[], LoopDispatch],
         route_properties: Callable[[Scope], dict[str, Any]] | None = None) -> ASGIApp:
    """`app` behind the filters, the first one outermost (it sees the request first).
    route_properties(scope): the attributes of the route the request matches (Envoy's
    route_name, route_metadata, cluster_name, cluster_metadata)."""
    for plugin, fail_open in reversed(filters):
        app = WasmFilter(app, plugin, fail_open, dispatch, route_properties)
    return app
