"""HTTP/2 callouts: the `h2` protocol library (maintained, sans-I/O) on asyncio streams.

Why not a ready client: httpx/httpcore speak HTTP/2 but neither send request trailers nor
return response trailers, and a callout carries both (Envoy's async client does); aiohttp
has no HTTP/2. The framing, HPACK, flow-control accounting and state machine are h2's;
this module only owns sockets, pooling and waiting.

Per cluster an H2Pool keeps, per endpoint, connections multiplexing many streams; a new
connection is opened only when every open one is at the server's
SETTINGS_MAX_CONCURRENT_STREAMS (up to cluster.max_connections per endpoint). Without TLS
the connection is h2c with prior knowledge; with TLS the server must select ALPN "h2".

Memory: each stream's receive window is STREAM_WINDOW, and a streamed response only
returns window as the reader consumes chunks, so an unread answer holds at most one window.
A whole-answer request() returns window as data arrives but resets the stream (CANCEL) as
soon as the answer passes max_response_bytes.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Any, AsyncIterable, AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .cluster import Cluster
from .http_client import (CalloutError, Header, HttpResponse, RequestHead, StreamingResponse,
                          bounded, classify, ssl_context)

STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024
READ_SIZE = 64 * 1024
H2_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                           b"transfer-encoding", b"upgrade", b"host"})


class _Stream:
    """One request/response exchange on a connection, as the reader task sees it."""

    def __init__(self, conn: "H2Connection", stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers: asyncio.Future[list[Header]] = conn.loop.create_future()
        self.chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self.trailers: list[Header] = []
        self.ended = False  # the server's side is done (END_STREAM seen)
        self.local_done = False  # ours is (END_STREAM sent)
        self.error: CalloutError | None = None
        self.wake = asyncio.Event()
        self.window = asyncio.Event()  # set when the peer grants more send window
        self.auto_ack = True  # request(): hand window back as data arrives

    def fail(self, err: CalloutError) -> None:
        if self.ended or self.error is not None:
            return
        self.error = err
        if not self.headers.done():
            self.headers.set_exception(err)
            self.headers.exception()  # retrieved: nobody may be waiting any more
        self.wake.set()
        self.window.set()

    async def next_chunk(self) -> bytes | None:
        """The next DATA payload, None at the end; raises the stream's error."""
        while True:
            if self.chunks:
                data, flow = self.chunks.popleft()
                if not self.auto_ack:
                    self.conn.ack(self.id, flow)
                return data
            if self.error is not None:
                raise self.error
            if self.ended:
                return None
            self.wake.clear()
            await self.wake.wait()

    def cancel(self) -> None:
        """Stop the exchange (RST_STREAM CANCEL) unless it already ended, and hand back the
        connection window that data received but never read still holds."""
        if self.error is None and not (self.ended and self.local_done):
            if not self.ended:
                self.error = CalloutError("cancelled")
            self.conn.reset(self.id)
        if not self.auto_ack and self.chunks:
            unread = sum(flow for _, flow in self.chunks)
            self.chunks.clear()
            self.conn.ack(self.id, unread)  # the stream is closed: the connection's share
        self.conn.streams.pop(self.id, None)
        self.conn.pool_changed()


class H2Connection:
    """One HTTP/2 connection: a reader task feeding h2 and routing events to streams."""

    def __init__(self, pool: "H2Pool", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.reader = reader
        self.writer = writer
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0,
                                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self.going_away = False
        self.settled = False  # the server's first SETTINGS arrived
        self.flush()
        self.task = self.loop.create_task(self._read())

    # -- capacity ----------------------------------------------------------------------
    def has_room(self) -> bool:
        if self.closed or self.going_away:
            return False
        if self.h2.highest_outbound_stream_id and self.h2.highest_outbound_stream_id > 2**31 - 100:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        if not self.settled:
            # Until the server's SETTINGS arrive its limit is unknown (h2 says unlimited):
            # assume RFC 9113's recommended floor rather than open streams it would refuse
            # or close the connection over.
            limit = min(limit, 100)
        return self.h2.open_outbound_streams < limit

    def pool_changed(self) -> None:
        self.pool.room.set()

    # -- writing -----------------------------------------------------------------------
    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    def ack(self, stream_id: int, flow: int) -> None:
        if flow and not self.closed:
            try:
                self.h2.acknowledge_received_data(flow, stream_id)
            except h2.exceptions.ProtocolError:
                return
            self.flush()

    def reset(self, stream_id: int) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def start(self, headers: list[Header], end_stream: bool) -> _Stream:
        if self.closed:
            raise CalloutError("connection reset", "the connection closed before the request")
        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers, end_stream=end_stream)
        except (h2.exceptions.ProtocolError, ValueError) as e:
            raise CalloutError("protocol error", f"HTTP/2: {e}") from e
        stream = self.streams[sid] = _Stream(self, sid)
        stream.local_done = end_stream
        self.flush()
        return stream

    async def send_body(self, stream: _Stream, body: bytes | AsyncIterable[bytes],
                        trailers: list[Header]) -> None:
        """Send the body under flow control, then trailers (or END_STREAM)."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            await self._send_data(stream, memoryview(bytes(body)))
        else:
            async for part in body:
                await self._send_data(stream, memoryview(bytes(part)))
        if stream.error is not None:
            raise stream.error
        try:
            if trailers:
                self.h2.send_headers(stream.id, trailers, end_stream=True)
            else:
                self.h2.end_stream(stream.id)
        except h2.exceptions.ProtocolError as e:
            raise stream.error or CalloutError("protocol error", f"HTTP/2: {e}") from e
        stream.local_done = True
        self.flush()
        await self.writer.drain()

    async def _send_data(self, stream: _Stream, data: memoryview) -> None:
        while data:
            if stream.error is not None:
                raise stream.error
            try:
                window = min(self.h2.local_flow_control_window(stream.id),
                             self.h2.max_outbound_frame_size)
                if window > 0:
                    self.h2.send_data(stream.id, data[:window].tobytes())
            except h2.exceptions.ProtocolError as e:  # the stream closed under us
                raise stream.error or CalloutError("connection reset", f"HTTP/2: {e}") from e
            if window <= 0:
                stream.window.clear()
                await stream.window.wait()
                continue
            data = data[window:]
            self.flush()
            await self.writer.drain()

    # -- reading -----------------------------------------------------------------------
    async def _read(self) -> None:
        err: CalloutError | None = None
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    err = CalloutError("connection reset", "the server closed the connection")
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    err = CalloutError("protocol error", f"HTTP/2: {e}")
                    self.flush()
                    break
                for ev in events:
                    self._on_event(ev)
                self.flush()
                if self.going_away and not self.streams:
                    break
        except asyncio.CancelledError:
            err = CalloutError("client closed")
        except Exception as e:  # noqa: BLE001 - any socket failure ends the connection
            err = classify(e)
        self._shutdown(err or CalloutError("connection reset", "connection closed"))

    def _on_event(self, ev: h2.events.Event) -> None:
        stream = self.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, h2.events.ResponseReceived):
            if stream is not None and not stream.headers.done():
                stream.headers.set_result([(bytes(n), bytes(v)) for n, v in ev.headers])
        elif isinstance(ev, h2.events.DataReceived):
            if stream is None:
                self.ack(ev.stream_id, ev.flow_controlled_length)
                return
            stream.chunks.append((ev.data, ev.flow_controlled_length))
            if stream.auto_ack:
                self.ack(ev.stream_id, ev.flow_controlled_length)
            stream.wake.set()
        elif isinstance(ev, h2.events.TrailersReceived):
            if stream is not None:
                stream.trailers = [(bytes(n), bytes(v)) for n, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded):
            if stream is not None:
                if not stream.headers.done():
                    stream.fail(CalloutError("protocol error", "stream ended without headers"))
                stream.ended = True
                stream.wake.set()
                self.streams.pop(ev.stream_id, None)
                self.pool_changed()
        elif isinstance(ev, h2.events.StreamReset):
            if stream is not None:
                try:
                    code = h2.errors.ErrorCodes(ev.error_code).name
                except ValueError:
                    code = str(ev.error_code)
                refused = ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                stream.fail(CalloutError("connection reset", f"stream reset by the server ({code})",
                                         unprocessed=refused))
                self.streams.pop(ev.stream_id, None)
                self.pool_changed()
        elif isinstance(ev, h2.events.WindowUpdated):
            targets = self.streams.values() if not ev.stream_id else ([stream] if stream else [])
            for s in targets:
                s.window.set()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settled = True
            self.pool_changed()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.going_away = True
            last = ev.last_stream_id or 0
            for sid, s in list(self.streams.items()):
                if sid > last:
                    s.fail(CalloutError("connection reset", "GOAWAY before the stream was processed",
                                        unprocessed=True))
                    self.streams.pop(sid, None)
            self.pool_changed()

    def _shutdown(self, err: CalloutError, graceful: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for s in list(self.streams.values()):
            s.fail(err)
        self.streams.clear()
        if graceful:
            self.writer.transport.close()  # after writing what is buffered (our GOAWAY)
        else:
            self.writer.transport.abort()
        self.pool.forget(self)

    async def close(self) -> None:
        if not self.closed:
            try:
                self.h2.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
        self._shutdown(CalloutError("client closed"), graceful=True)
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class H2Pool:
    """One cluster's HTTP/2 connections, per endpoint, picked round robin."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._ctx = ssl_context(cluster.tls, ["h2"]) if cluster.tls else None
        self._next = itertools.cycle(cluster.addresses)
        self._conns: dict[tuple[str, int], list[H2Connection]] = {a: [] for a in cluster.addresses}
        self._connecting: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.room = asyncio.Event()
        self.closed = False

    def forget(self, conn: H2Connection) -> None:
        for conns in self._conns.values():
            if conn in conns:
                conns.remove(conn)
        self.room.set()

    async def _connect(self, addr: tuple[str, int]) -> H2Connection:
        host, port = addr
        kw: dict[str, Any] = {}
        if self._ctx is not None:
            tls = self.cluster.tls
            kw = {"ssl": self._ctx, "server_hostname": (tls.sni if tls and tls.sni else host)}
        try:
            reader, writer = await bounded(
                asyncio.open_connection(host, port, limit=READ_SIZE * 2, **kw),
                self.cluster.connect_timeout)
        except asyncio.TimeoutError:
            raise CalloutError("connect timeout",
                               f"{host}:{port} not connected within {self.cluster.connect_timeout} s") from None
        except OSError as e:
            raise classify(e, tls_connect=self._ctx is not None) from e
        if self._ctx is not None:
            proto = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if proto != "h2":
                writer.transport.abort()
                raise CalloutError("protocol error", f"server chose ALPN {proto!r}, not h2")
        return H2Connection(self, reader, writer)

    async def _connection(self) -> H2Connection:
        addr = next(self._next)
        while True:
            if self.closed:
                raise CalloutError("client closed")
            conns = self._conns[addr]
            for c in conns:
                if c.has_room():
                    return c
            pending = self._connecting.get(addr)
            if pending is not None:
                # one connection at a time per endpoint: HTTP/2 multiplexes, so a burst of
                # calls waits for the handshake in flight rather than opening one each
                await asyncio.shield(pending)
                continue
            if len(conns) < self.cluster.max_connections:
                fut = self._connecting[addr] = asyncio.get_running_loop().create_future()
                try:
                    conn = await self._connect(addr)
                finally:
                    del self._connecting[addr]
                    fut.set_result(None)
                if self.closed:
                    await conn.close()
                    raise CalloutError("client closed")
                conns.append(conn)
                return conn
            self.room.clear()
            await self.room.wait()

    @staticmethod
    def _headers(head: RequestHead, scheme: str, body_len: int | None) -> list[Header]:
        out = [(b":method", head.method.encode("latin-1")), (b":scheme", scheme.encode()),
               (b":authority", head.authority.encode("latin-1")),
               (b":path", head.path.encode("latin-1"))]
        for n, v in head.headers:
            if n in H2_HOP_BY_HOP or (n == b"te" and v.lower() != b"trailers"):
                continue
            out.append((n, v))
        if body_len:
            out.append((b"content-length", str(body_len).encode()))
        return out

    async def _begin(self, head: RequestHead, body: bytes | AsyncIterable[bytes],
                     trailers: list[Header]) -> tuple[_Stream, asyncio.Task[None] | None]:
        conn = await self._connection()
        whole = isinstance(body, (bytes, bytearray))
        empty = whole and not body and not trailers
        stream = conn.start(self._headers(head, self.cluster.scheme, len(body) if isinstance(body, (bytes, bytearray)) else None),
                            end_stream=empty)
        sender = None
        if not empty:
            sender = conn.loop.create_task(conn.send_body(stream, body, trailers))
            sender.add_done_callback(_retrieve)  # its failure shows on the response side
        return stream, sender

    async def _exchange(self, head: RequestHead, body: bytes | AsyncIterable[bytes],
                        trailers: list[Header], auto_ack: bool
                        ) -> tuple[_Stream, asyncio.Task[None] | None, list[Header]]:
        """Send the request and wait for the response headers. A request the server says it
        did not process (REFUSED_STREAM, or cut off by a GOAWAY, as when it closes an idle
        connection just as the request goes out) is sent once more, on another connection,
        when its body can be sent again."""
        for attempt in (1, 2):
            stream, sender = await self._begin(head, body, trailers)
            stream.auto_ack = auto_ack
            try:
                return stream, sender, await stream.headers
            except BaseException as e:
                stream.cancel()
                if sender is not None and not sender.done():
                    sender.cancel()
                if (attempt == 1 and isinstance(e, CalloutError) and e.unprocessed
                        and isinstance(body, (bytes, bytearray))):
                    continue
                raise
        raise AssertionError("unreachable")

    async def request(self, head: RequestHead, body: bytes, trailers: list[Header],
                      limit: int) -> HttpResponse:
        stream, sender, headers = await self._exchange(head, body, trailers, auto_ack=True)
        try:
            cl = next((v for n, v in headers if n == b"content-length"), None)
            if cl is not None and cl.isdigit() and int(cl) > limit:
                raise CalloutError("response too large", f"content-length {int(cl)} > limit {limit}")
            parts, size = [], 0
            while (chunk := await stream.next_chunk()) is not None:
                size += len(chunk)
                if size > limit:
                    raise CalloutError("response too large", f"more than {limit} bytes")
                parts.append(chunk)
            if sender is not None and not sender.done():
                sender.cancel()  # the server answered before taking the whole body
            return HttpResponse(headers, b"".join(parts), stream.trailers)
        finally:
            stream.cancel()
            if sender is not None and not sender.done():
                sender.cancel()

    async def open(self, head: RequestHead, body: bytes | AsyncIterable[bytes],
                   deadline: float | None) -> StreamingResponse:
        stream, sender, headers = await self._exchange(head, body, [], auto_ack=False)
        return _H2Streaming(stream, sender, headers, deadline)

    async def close(self) -> None:
        self.closed = True
        self.room.set()  # callers waiting for room see the pool closed
        conns = [c for cs in self._conns.values() for c in cs]
        for c in conns:
            await c.close()


class _H2Streaming(StreamingResponse):
    def __init__(self, stream: _Stream, sender: asyncio.Task[None] | None, headers: list[Header],
                 deadline: float | None) -> None:
        super().__init__(int(headers[0][1]), headers)
        self._stream = stream
        self._sender = sender
        self._deadline = deadline

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            left = None if self._deadline is None else self._deadline - loop.time()
            try:
                if left is None:
                    chunk = await self._stream.next_chunk()
                elif left <= 0:
                    raise asyncio.TimeoutError
                else:
                    chunk = await bounded(self._stream.next_chunk(), left)
            except asyncio.TimeoutError:
                await self.release()
                raise CalloutError("timeout", "response body not complete in time") from None
            if chunk is None:
                return
            yield chunk

    async def trailers(self) -> list[Header]:
        while await self._stream.next_chunk() is not None:
            pass
        return self._stream.trailers

    async def release(self) -> None:
        self._stream.cancel()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
