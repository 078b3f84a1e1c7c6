"""The proxy's one seam to the outbound client: `open(cluster, headers, body, timeout)`.

`serve` needs a streaming HTTP client on its own event loop: request headers and a body
(bytes or an async iterator of chunks) go up; status, headers, body chunks and trailers come
back as they arrive. pyproxywasm.net.http_client.HttpClient provides exactly this shape;
until it is available in this tree, `Http1Client` below (HTTP/1.1 with keep-alive pools,
httptools for parsing) serves it, so the router does not care which one it talks to.

Errors the router turns into Envoy's answers: UpstreamConnectError -> 503
(upstream_reset_before_response_started{connection_failure}), asyncio.TimeoutError -> 504
(upstream_response_timeout).
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import ssl
from typing import Any, AsyncIterable, AsyncIterator, Protocol, Sequence, cast

import httptools

from ..net.cluster import Cluster

Header = tuple[bytes, bytes]


class UpstreamConnectError(ConnectionError):
    """No connection to any endpoint of the cluster (refused, unreachable, connect timeout)."""


class UpstreamResetError(ConnectionError):
    """The upstream closed the connection before the response ended."""


class StreamingResponse(Protocol):
    status: int
    headers: list[Header]

    def chunks(self) -> AsyncIterator[bytes]: ...
    def trailers(self) -> Any: ...  # a list, or (net's) a coroutine of one
    def release(self) -> Any: ...  # None, or (net's) a coroutine


class Upstream(Protocol):
    async def open(self, cluster: Cluster, headers: Sequence[Header],
                   body: bytes | AsyncIterable[bytes], timeout: float | None) -> StreamingResponse: ...
    async def close(self) -> None: ...


_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}


class _Response:
    """One response being read off a pooled connection."""

    def __init__(self, conn: "_Conn") -> None:
        self.conn = conn
        self.status = 0
        self.headers: list[Header] = []
        self._trailers: list[Header] = []
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._headers_done = asyncio.get_running_loop().create_future()
        self.complete = False
        self._released = False
        self.deadline: float | None = None  # loop time by which the body must have ended

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        (self._trailers if self._headers_done.done() else self.headers).append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.conn.parser.get_status_code()
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, data: bytes) -> None:
        self._chunks.put_nowait(bytes(data))

    def on_message_complete(self) -> None:
        self.complete = True
        self._chunks.put_nowait(None)

    def fail(self, exc: BaseException) -> None:
        if not self._headers_done.done():
            self._headers_done.set_exception(exc)
        self._chunks.put_nowait(exc)

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            if self.deadline is None:
                item = await self._chunks.get()
            else:  # the route timeout bounds the whole exchange, as Envoy's does
                try:
                    item = await asyncio.wait_for(self._chunks.get(), max(0.0, self.deadline - loop.time()))
                except asyncio.TimeoutError:
                    if self.conn.transport:
                        self.conn.transport.abort()
                    self.release()
                    raise
            if item is None:
                self.release()
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def trailers(self) -> list[Header]:
        return self._trailers

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.conn.done(reusable=self.complete)


class _Conn(asyncio.Protocol):
    def __init__(self, pool: "_Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: _Response | None = None
        self.closed = False
        self.keep_alive = True
        self._can_write = asyncio.Event()
        self._can_write.set()

    # protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes on an idle connection: it cannot be reused
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._abort(UpstreamResetError(f"bad response from upstream: {e}"))

    def eof_received(self) -> bool:
        try:
            self.parser.feed_data(b"")  # a response delimited by close ends here
        except httptools.HttpParserError:
            pass
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        r = self.response
        if r is not None and not r.complete:
            r.fail(UpstreamResetError("upstream connection closed"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _abort(self, exc: BaseException) -> None:
        if self.response is not None:
            self.response.fail(exc)
        if self.transport:
            self.transport.abort()

    # parser callbacks go to the current response
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.on_header(name, value)

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.response is not None:
            self.response.on_headers_complete()

    def on_body(self, data: bytes) -> None:
        if self.response is not None:
            self.response.on_body(data)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response.on_message_complete()

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamResetError("upstream connection closed")
        self.transport.write(data)
        if not self._can_write.is_set():
            await self._can_write.wait()

    def done(self, reusable: bool) -> None:
        self.response = None
        if reusable and self.keep_alive and not self.closed:
            self.parser = httptools.HttpResponseParser(self)
            self.pool.idle.append(self)
        elif self.transport and not self.closed:
            self.transport.close()


class _Pool:
    def __init__(self, host: str, port: int, cluster: Cluster) -> None:
        self.host, self.port, self.cluster = host, port, cluster
        self.idle: collections.deque[_Conn] = collections.deque()

    async def get(self) -> _Conn:
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                return c
        loop = asyncio.get_running_loop()
        ctx = None
        if self.cluster.tls is not None:
            t = self.cluster.tls
            ctx = ssl.create_default_context(cafile=t.ca_file)
            if not t.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if t.cert_file:
                ctx.load_cert_chain(t.cert_file, t.key_file)
            ctx.set_alpn_protocols(list(t.alpn) or ["http/1.1"])
        sni = (self.cluster.tls.sni or self.host) if ctx is not None and self.cluster.tls else None
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Conn(self), self.host, self.port, ssl=ctx, server_hostname=sni),
                self.cluster.connect_timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            raise UpstreamConnectError(f"{self.cluster.name}: cannot connect to {self.host}:{self.port}: {e or 'timeout'}") from None
        return conn


class Http1Client:
    """HTTP/1.1 to clusters, keep-alive pooled per endpoint, endpoints round robin."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._rr: dict[str, itertools.cycle[tuple[str, int]]] = {}

    def _pool(self, cluster: Cluster) -> _Pool:
        rr = self._rr.get(cluster.name)
        if rr is None:
            rr = self._rr[cluster.name] = itertools.cycle(cluster.addresses)
        host, port = next(rr)
        key = (cluster.name, host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(host, port, cluster)
        return pool

    async def open(self, cluster: Cluster, headers: Sequence[Header],
                   body: bytes | AsyncIterable[bytes], timeout: float | None) -> _Response:
        """Sends the request and returns once the response headers arrived (or raises)."""
        method = path = authority = b""
        length: bytes | None = None
        lines = []
        for k, v in headers:
            if k[:1] == b":":
                if k == b":method":
                    method = v
                elif k == b":path":
                    path = v
                elif k == b":authority":
                    authority = v
                continue
            if k in _HOP or k == b"host":
                continue
            if k == b"content-length":
                length = v
            lines.append(k + b": " + v)
        data = bytes(body) if isinstance(body, (bytes, bytearray)) else None
        chunks = body if not isinstance(body, (bytes, bytearray)) else None
        streaming = chunks is not None
        # A streamed body keeps the content-length it came with (as Envoy's HTTP/1 codec
        # does: a filter that changes the size removes it), else it goes chunked.
        chunked = streaming and length is None
        if chunked:
            lines.append(b"transfer-encoding: chunked")
        elif not streaming and (data or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS")):
            lines = [ln for ln in lines if not ln.startswith(b"content-length:")]
            lines.append(b"content-length: " + str(len(data or b"")).encode())
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (
            method or b"GET", path or b"/", authority, b"".join(ln + b"\r\n" for ln in lines))

        async def exchange() -> _Response:
            pool = self._pool(cluster)
            conn = await pool.get()
            resp = conn.response = _Response(conn)
            try:
                if chunks is not None:
                    await conn.write(head)
                    async for chunk in chunks:
                        if chunk:
                            await conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if chunked:
                        await conn.write(b"0\r\n\r\n")
                else:
                    await conn.write(head + (data or b""))
                await resp._headers_done
            except BaseException:
                resp.release()
                if conn.transport:
                    conn.transport.abort()
                raise
            return resp

        if timeout is None:
            return await exchange()
        deadline = asyncio.get_running_loop().time() + timeout
        resp = await asyncio.wait_for(exchange(), timeout)
        resp.deadline = deadline
        return resp

    async def close(self) -> None:
        for pool in self._pools.values():
            while pool.idle:
                c = pool.idle.pop()
                if c.transport:
                    c.transport.close()
        self._pools.clear()


class ByCluster:
    """Plain HTTP/1.1 clusters through `plain`, TLS and HTTP/2 ones through `rich`."""

    def __init__(self, plain: Upstream, rich: Upstream) -> None:
        self.plain, self.rich = plain, rich

    async def open(self, cluster: Cluster, headers: Sequence[Header], body: bytes | AsyncIterable[bytes],
                   timeout: float | None) -> StreamingResponse:
        client = self.rich if cluster.http2 or cluster.tls is not None else self.plain
        return await client.open(cluster, headers, body, timeout)

    async def close(self) -> None:
        await self.plain.close()
        await self.rich.close()
