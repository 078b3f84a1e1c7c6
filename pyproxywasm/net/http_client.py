"""HTTP callouts to a cluster: pooled keep-alive connections, one pool per cluster.

HTTP/1.1 goes through aiohttp: on 127.0.0.1 a round trip cost its loop thread 6-10x less
CPU than httpx's and took 3-4x less time (bench/README.md, "Outbound clients"),
and it bounds what it buffers from a socket (it pauses reading once its buffer holds
2 x 64 KiB), so a 100 MB answer is refused without being held. HTTP/2 clusters go
through h2_client.py (the maintained `h2` protocol library under a small asyncio
connection of ours): aiohttp has no HTTP/2, and httpx's HTTP/2 neither sends request
trailers nor returns response trailers (and cost about 4x more CPU per round trip).

A call is sent once (no retry policy, as with Envoy's async client), except that an
HTTP/2 request the server reports it did not process (REFUSED_STREAM, or above a GOAWAY's
last stream id) is sent again once, on another connection, when its body is bytes.

Everything here runs on the IoLoop's thread: call `request()` / `open()` from a coroutine
on that loop (or `IoLoop.submit()` them from another thread).

What the guest's headers become: the pseudo-headers `:method`, `:path`, `:authority` make
the request line and Host (`:scheme` is the cluster's: TLS or not), other headers are sent
as given, minus hop-by-hop ones (content-length, transfer-encoding, connection, ...) that
the client sets itself (`te: trailers` is kept); a non-empty body gets a content-length.
Trailers travel on HTTP/2 only: aiohttp cannot write a chunked trailer section, so on
HTTP/1.1 request trailers are dropped, and response trailers too (aiohttp parses and
discards them).
"""
from __future__ import annotations

import asyncio
import errno
import io
import itertools
import re
import ssl
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Sequence, TypeVar

import aiohttp
from yarl import URL

from .cluster import Cluster, TlsSettings
from .loop import IoLoop

Header = tuple[bytes, bytes]
T = TypeVar("T")
LARGE_BODY = 1 << 20  # aiohttp writes a bytes body in one go; larger ones go as BytesIO

# Headers a client owns on the connection; a guest's copy would contradict the framing.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"te", b"content-length", b"host"})


@dataclass(frozen=True)
class HttpResponse:
    """A whole answer: `headers` start with (b":status", b"200"); names are lowercase."""

    headers: list[Header]
    body: bytes
    trailers: list[Header]

    @property
    def status(self) -> int:
        return int(self.headers[0][1])


class CalloutError(Exception):
    """A call that got no usable answer. `reason` is short and stable, for logs and for the
    guest-facing failure:
      "connection refused", "connect timeout" (cluster.connect_timeout passed),
      "timeout" (the call's budget passed), "connection reset" (TCP reset, the server
      closing early, an HTTP/2 RST_STREAM or GOAWAY), "tls: certificate verify failed"
      (wrong CA, wrong name/SNI), "tls: handshake failed", "tls: <OpenSSL reason>",
      "response too large" (over cluster.max_response_bytes), "bad request headers"
      (refused before sending), "protocol error", "connect failed", "client closed".
    `detail` says more, for people."""

    def __init__(self, reason: str, detail: str = "", unprocessed: bool = False) -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail
        # the server said it did not process the request (HTTP/2 REFUSED_STREAM, or a
        # stream above a GOAWAY's last id): sending it again is safe (RFC 9113, 8.7)
        self.unprocessed = unprocessed


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # RFC 9110 token, lowercase
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")  # no controls or spaces in :path / :authority


def check_field(name: bytes, value: bytes) -> None:
    """Refuse what would corrupt the framing (CR/LF/NUL injection, names that are not
    tokens) before anything is written: "bad request headers"."""
    if not _TOKEN.fullmatch(name):
        raise CalloutError("bad request headers", f"header name {name!r} is not a token")
    if _BAD_VALUE.search(value):
        raise CalloutError("bad request headers", f"header {name.decode()!r}: CR, LF or NUL in value")


def check_trailers(trailers: Sequence[Header]) -> list[Header]:
    out = []
    for name, value in trailers:
        name, value = bytes(name).lower(), bytes(value)
        check_field(name, value)
        out.append((name, value))
    return out


@dataclass(frozen=True)
class RequestHead:
    """The guest's headers, split: what makes the request line, and the rest."""

    method: str
    path: str
    authority: str
    headers: list[Header]

    @classmethod
    def parse(cls, headers: Sequence[Header]) -> "RequestHead":
        method = path = authority = None
        rest: list[Header] = []
        for name, value in headers:
            name = bytes(name).lower()
            if name == b":method":
                method = bytes(value).decode("latin-1")
            elif name == b":path":
                path = bytes(value).decode("latin-1")
            elif name == b":authority":
                authority = bytes(value).decode("latin-1")
            elif name == b"te" and bytes(value).strip().lower() == b"trailers":
                rest.append((name, b"trailers"))  # the one TE value HTTP/2 allows (gRPC needs it)
            elif name.startswith(b":") or name in HOP_BY_HOP:
                continue  # :scheme is the cluster's; framing headers are the client's
            else:
                value = bytes(value)
                check_field(name, value)
                rest.append((name, value))
        if not method or not path or authority is None:
            raise CalloutError("bad request headers", ":method, :path and :authority are required")
        if not _TOKEN.fullmatch(method.lower().encode("latin-1")):
            raise CalloutError("bad request headers", f":method {method!r} is not a token")
        if not path.startswith("/") and path != "*":
            raise CalloutError("bad request headers", f":path {path!r} must start with '/'")
        for field, v in ((":path", path), (":authority", authority)):
            if _BAD_TARGET.search(v.encode("latin-1")):
                raise CalloutError("bad request headers", f"{field} {v!r} has a space or control character")
        return cls(method, path, authority, rest)


def ssl_context(tls: TlsSettings, alpn: Sequence[str], drop: Sequence[str] = ()) -> ssl.SSLContext:
    """A client context from the cluster's TLS settings (verification on unless disabled).
    ALPN: the cluster's list without `drop`, else `alpn`."""
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    protos = [p for p in tls.alpn if p not in drop] or list(alpn)
    if protos:
        ctx.set_alpn_protocols(protos)
    return ctx


if sys.version_info >= (3, 11):
    async def bounded(aw: Awaitable[T], seconds: float) -> T:
        """`await aw`, or asyncio.TimeoutError after `seconds` (no extra task, unlike
        asyncio.wait_for on 3.11: it is on every call's path)."""
        async with asyncio.timeout(seconds):
            return await aw
else:  # pragma: no cover - Python 3.10
    async def bounded(aw: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(aw, seconds)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def classify(exc: BaseException, tls_connect: bool = False) -> CalloutError:
    """One CalloutError for whatever a client raised, looking through the cause chain.
    tls_connect: the error ended a TLS connection attempt, so a reset or an early close
    means the handshake failed (a server that does not speak TLS on that port does that)."""
    if isinstance(exc, CalloutError):
        return exc
    err = _classify(exc)
    if tls_connect and err.reason == "connection reset":
        return CalloutError("tls: handshake failed", f"the connection ended during the handshake ({err.detail})")
    return err


def _classify(exc: BaseException) -> CalloutError:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            inner = getattr(e, "certificate_error", e)  # aiohttp wraps the ssl error
            return CalloutError("tls: certificate verify failed",
                                getattr(inner, "verify_message", None) or str(inner))
        inner = getattr(e, "os_error", None)  # aiohttp's connector errors wrap the real one
        if isinstance(inner, BaseException) and inner is not e and id(inner) not in seen:
            e = inner
            continue
        if isinstance(e, ssl.SSLError):
            why = getattr(e, "reason", None) or "handshake failed"
            return CalloutError(f"tls: {why.lower().replace('_', ' ')}", str(e))
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return CalloutError("connect timeout", str(e))
        if isinstance(e, TimeoutError) and not isinstance(e, aiohttp.ServerTimeoutError):
            return CalloutError("timeout", str(e) or "the socket timed out")
        if isinstance(e, ConnectionRefusedError):
            return CalloutError("connection refused", str(e))
        if isinstance(e, (ConnectionResetError, BrokenPipeError, aiohttp.ServerDisconnectedError,
                          aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
            return CalloutError("connection reset", str(e) or type(e).__name__)
        if isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.EPIPE):
            return CalloutError("connection reset", str(e))
        if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
            return CalloutError("connection refused", str(e))
        e = e.__cause__ or e.__context__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CalloutError("connect failed", str(exc))
    if isinstance(exc, aiohttp.ClientResponseError):
        return CalloutError("protocol error", str(exc))
    return CalloutError("connect failed" if isinstance(exc, OSError) else "protocol error",
                        f"{type(exc).__name__}: {exc}")


class _H1Pool:
    """One cluster's aiohttp session: its keep-alive connections and round robin."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        tls = cluster.tls
        # An HTTP/1.1 pool must not let the server pick h2 through ALPN: offer no "h2".
        ctx = ssl_context(tls, ["http/1.1"], drop=("h2",)) if tls else False
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=cluster.max_connections,
                                         ssl=ctx, use_dns_cache=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # the guest sees the bytes the server sent
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cluster.connect_timeout),
            trust_env=False,
        )
        # aiohttp sends an idempotent request a second time when its connection fails;
        # a callout is sent once, as Envoy's async client does (no retry policy): the guest
        # decides, a reset server does not see the request twice, and the first failure's
        # reason (e.g. a TLS alert) is the one reported. Private attribute, no public switch.
        if hasattr(self.session, "_retry_connection"):
            self.session._retry_connection = False
        self._next = itertools.cycle(cluster.addresses)
        self._sni = tls.sni if tls else None

    def target(self, path: str) -> tuple[URL, str | None]:
        host, port = next(self._next)
        url = URL(f"{self.cluster.scheme}://{host_port(host, port)}{path}", encoded=True)
        return url, (self._sni or host) if self.cluster.tls else None

    async def send(self, head: RequestHead, body: bytes | AsyncIterable[bytes] | None
                   ) -> aiohttp.ClientResponse:
        url, sni = self.target(head.path)
        data: bytes | AsyncIterable[bytes] | io.BytesIO | None = body
        if isinstance(body, (bytes, bytearray)) and len(body) > LARGE_BODY:
            data = io.BytesIO(body)  # aiohttp writes it in chunks, yielding between them
        hdrs = [("Host", head.authority)]
        hdrs += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]
        kwargs = {"server_hostname": sni} if sni else {}
        return await self.session.request(head.method, url, headers=hdrs, data=data,
                                          allow_redirects=False, **kwargs)

    async def close(self) -> None:
        await self.session.close()


def _tls_connect(cluster: Cluster, e: BaseException) -> bool:
    return cluster.tls is not None and isinstance(e, aiohttp.ClientConnectorError)


def _response_headers(resp: aiohttp.ClientResponse) -> list[Header]:
    out = [(b":status", str(resp.status).encode())]
    out += [(n.lower(), v) for n, v in resp.raw_headers]
    return out


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or CalloutError("response too large") as soon as it passes `limit`
    (announced by content-length or counted as it arrives): the rest is never read, and the
    connection is closed rather than reused."""
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        raise CalloutError("response too large",
                           f"content-length {resp.content_length} > limit {limit}")
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            resp.close()
            raise CalloutError("response too large", f"more than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class StreamingResponse:
    """An answer read as it arrives (for the reverse proxy): `status`, `headers`,
    `async for chunk in resp.chunks()`, `await resp.trailers()`, `await resp.release()`.
    The call's deadline covers reading the body too; `release()` before the end closes the
    connection instead of returning it to the pool."""

    def __init__(self, status: int, headers: list[Header]) -> None:
        self.status = status
        self.headers = headers

    def chunks(self) -> AsyncIterator[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def trailers(self) -> list[Header]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def release(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _H1Streaming(StreamingResponse):
    def __init__(self, resp: aiohttp.ClientResponse, deadline: float | None) -> None:
        super().__init__(resp.status, _response_headers(resp))
        self._resp = resp
        self._deadline = deadline

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        it = self._resp.content.iter_any().__aiter__()
        while True:
            left = None if self._deadline is None else self._deadline - loop.time()
            try:
                if left is None:
                    chunk = await it.__anext__()
                elif left <= 0:
                    raise asyncio.TimeoutError
                else:
                    chunk = await bounded(it.__anext__(), left)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                self._resp.close()
                raise CalloutError("timeout", "response body not complete in time") from None
            except (aiohttp.ClientError, OSError) as e:
                self._resp.close()
                raise classify(e) from e
            yield chunk

    async def trailers(self) -> list[Header]:
        return []  # aiohttp parses HTTP/1.1 trailers and drops them

    async def release(self) -> None:
        if not self._resp.content.is_eof():
            self._resp.close()
        self._resp.release()


class HttpClient:
    """Pooled HTTP/1.1 and HTTP/2 calls to clusters, on one IoLoop."""

    def __init__(self, io: IoLoop) -> None:
        self.io = io
        self._h1: dict[Cluster, _H1Pool] = {}
        self._h2: dict[Cluster, Any] = {}  # h2_client.H2Pool, imported on first use
        self._closed = False

    def _pool(self, cluster: Cluster) -> Any:
        if self._closed:
            raise CalloutError("client closed")
        if cluster.http2:
            pool = self._h2.get(cluster)
            if pool is None:
                from .h2_client import H2Pool
                pool = self._h2[cluster] = H2Pool(cluster)
            return pool
        pool = self._h1.get(cluster)
        if pool is None:
            pool = self._h1[cluster] = _H1Pool(cluster)
        return pool

    @staticmethod
    def _budget(cluster: Cluster, timeout: float | None) -> float | None:
        t = cluster.request_timeout if timeout is None else timeout
        return None if t is None or t <= 0 else t

    async def request(self, cluster: Cluster, headers: Sequence[Header], body: bytes,
                      trailers: Sequence[Header], timeout: float | None) -> HttpResponse:
        """One whole call: send, read the whole answer (up to cluster.max_response_bytes).
        `timeout` bounds everything (None: cluster.request_timeout; None there: no limit);
        connecting is bounded by cluster.connect_timeout. Raises CalloutError."""
        head = RequestHead.parse(headers)
        trailers = check_trailers(trailers)
        pool = self._pool(cluster)
        budget = self._budget(cluster, timeout)
        call = self._call(pool, cluster, head, bytes(body), trailers)
        try:
            if budget is None:
                return await call
            return await bounded(call, budget)
        except asyncio.TimeoutError:
            raise CalloutError("timeout", f"no whole answer within {budget} s") from None
        except CalloutError as e:
            if self._closed and e.reason != "client closed":
                raise CalloutError("client closed", e.reason) from e
            raise

    async def _call(self, pool: Any, cluster: Cluster, head: RequestHead, body: bytes,
                    trailers: list[Header]) -> HttpResponse:
        if cluster.http2:
            response: HttpResponse = await pool.request(head, body, trailers, cluster.max_response_bytes)
            return response
        try:
            resp = await pool.send(head, body or None)
            try:
                data = await _read_limited(resp, cluster.max_response_bytes)
            finally:
                resp.release()
        except CalloutError:
            raise
        except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
            raise classify(e, _tls_connect(cluster, e)) from e
        except asyncio.TimeoutError as e:  # aiohttp's own connect timeout
            raise CalloutError("connect timeout", str(e)) from e
        return HttpResponse(_response_headers(resp), data, [])

    async def open(self, cluster: Cluster, headers: Sequence[Header],
                   body: bytes | AsyncIterable[bytes], timeout: float | None) -> StreamingResponse:
        """Send a request (the body may be an async iterable of chunks, sent as it comes)
        and return once the response headers arrived. No size limit applies: the caller
        reads chunks as they come. `timeout` bounds the whole exchange, body included."""
        head = RequestHead.parse(headers)
        pool = self._pool(cluster)
        budget = self._budget(cluster, timeout)
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        start: Any
        if cluster.http2:
            start = pool.open(head, body, deadline)
        else:
            start = self._open_h1(pool, head, body, deadline)
        try:
            response: StreamingResponse = await (start if budget is None else bounded(start, budget))
            return response
        except asyncio.TimeoutError:
            raise CalloutError("timeout", f"no response headers within {budget} s") from None

    async def _open_h1(self, pool: _H1Pool, head: RequestHead,
                       body: bytes | AsyncIterable[bytes], deadline: float | None) -> StreamingResponse:
        try:
            resp = await pool.send(head, body if not isinstance(body, (bytes, bytearray)) else (bytes(body) or None))
        except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
            raise classify(e, _tls_connect(pool.cluster, e)) from e
        except asyncio.TimeoutError as e:
            raise CalloutError("connect timeout", str(e)) from e
        return _H1Streaming(resp, deadline)

    async def close(self) -> None:
        """Close every pooled connection; later calls fail with "client closed"."""
        self._closed = True
        pools = list(self._h1.values()) + list(self._h2.values())
        self._h1.clear()
        self._h2.clear()
        for p in pools:
            await p.close()
