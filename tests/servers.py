"""Real upstream servers for tests, on 127.0.0.1 free ports, each on its own thread.

Import the fixtures into a test module (`from servers import *` or by name: pytest puts
tests/ on sys.path, as it has no __init__.py) and use them as arguments.

Fixtures (all function-scoped unless said; each yields a `Server` with `.host`, `.port`,
`.endpoint` ("127.0.0.1:PORT"), `.connections` (TCP connections accepted so far),
`.requests` (requests seen), `.sent` (response body bytes written so far),
`.drop_connections()` (closes every open connection, as a server does to idle ones)):

- `http1_server`: HTTP/1.1 (h11 on asyncio), keep-alive.
- `http2_server`: HTTP/2 cleartext with prior knowledge (h2 on asyncio).
- `http1_tls_server`, `http2_tls_server` (ALPN h2): the same over TLS with a certificate for
  "localhost" and "127.0.0.1" from the test CA.
- `http1_mtls_server`: HTTP/1.1 over TLS that requires a client certificate from the test CA
  (asyncio's TLS drops its alert when the handshake fails: the client sees a close).
- `tls_alert_server`: a `BlockingTlsServer`, the same requirement on blocking sockets, which
  does send the alert (as production servers do); answers 200 `mtls ok`.
- `start_http1(ssl_context=None)`, `start_http2(ssl_context=None)`: functions, one more
  server (the caller calls `.stop()`).
- `refused_endpoint()`: a function, "127.0.0.1:PORT" where nothing listens.
- `tls_ca` (session-scoped): a `TestPki` with `.ca_file` (PEM to trust), `.other_ca_file`
  (an unrelated CA), `.client_cert_file` / `.client_key_file` (a client certificate the
  test CA signed) and `.server_context()` to make more TLS servers.
- `grpc_server`, `grpc_tls_server`, `grpc_mtls_server` (requires a client certificate from
  the test CA): `GrpcServer`s (grpcio, thread pool) serving `test.Echo`
  below, `.endpoint`, `.calls`, `.cancelled` (an Event set when a BidiEcho's client left).

HTTP endpoints (both protocols):

- `GET|POST /echo...` (any path not listed below): 200, `application/json` body
  `{"method", "path", "headers": [[name, value], ...] (names lowercased), "body" (latin-1),
  "trailers": [[name, value], ...], "peer": client port, "protocol": "1.1" | "2",
  "authority": Host or :authority}` (headers exclude pseudo-headers).
- `/status/<n>`: status n, body `status <n>`.
- `/slow/<ms>`: waits ms milliseconds, then 200 `slow`.
- `/big/<n>`: n bytes of `x` in 64 KiB chunks, with content-length; `/big/<n>?chunked`
  without it (HTTP/1.1: chunked; HTTP/2: no content-length). Writing waits on the client (TCP or HTTP/2 flow control),
  so `.sent` shows how much a client really pulled.
- `/reset`: reads the request, then resets (HTTP/1.1: TCP RST; HTTP/2: RST_STREAM).
- `/hang`: reads the request and never answers.
- `/trailers`: 200, body `with trailers`, then trailers `x-checksum: 42`, `x-more: yes`
  (HTTP/1.1 chunked trailer section; HTTP/2 trailing HEADERS).
- HTTP/2 only, once per server (then like `/echo`): `/refuse-once` resets the stream with
  REFUSED_STREAM; `/goaway-once` sends GOAWAY with a last stream id below the request's
  (the server did not process it) and ends the connection.

gRPC service `test.Echo` (generic handlers, raw bytes, no protobuf):

- `Unary`: answers the request bytes; initial metadata `x-initial: 1`; trailing metadata
  echoes the caller's `x-*` keys (text and `-bin`).
- `Fail`: request `b"<code>:<message>"` -> aborts with that status code and message.
- `Slow`: request `b"<seconds>"` -> sleeps, then answers `b"late"`.
- `ServerStream`: request `b"<n>"` -> n messages `b"msg-0"` ... then OK.
- `BidiEcho`: initial metadata echoes the caller's `x-*` keys; echoes every message as it
  comes; trailing metadata `x-count: <n>`.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import h11
import pytest

Header = tuple[bytes, bytes]

__all__ = ["Server", "TestPki", "tls_ca", "http1_server", "http1_tls_server",
           "http1_mtls_server", "http2_server", "http2_tls_server", "grpc_server", "grpc_tls_server", "grpc_mtls_server", "tls_alert_server",
           "GrpcServer", "GRPC_SERVICE", "free_port",
           "refused_endpoint", "start_http1", "start_http2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused_endpoint() -> str:
    """An endpoint where nothing listens (the port was free a moment ago)."""
    return f"127.0.0.1:{free_port()}"


# --- what the servers answer --------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    headers: list[Header]
    body: bytes
    trailers: list[Header]
    peer: int
    protocol: str
    authority: str = ""


@dataclass
class Reply:
    status: int = 200
    headers: list[Header] = field(default_factory=list)
    chunks: AsyncIterator[bytes] | None = None
    body: bytes = b""
    length: int | None = None  # content-length to announce for `chunks`
    trailers: list[Header] = field(default_factory=list)
    action: str | None = None  # "reset" | "hang"


CHUNK = 64 * 1024


async def _big(n: int) -> AsyncIterator[bytes]:
    block = b"x" * CHUNK
    while n > 0:
        yield block[:n]
        n -= CHUNK


async def route(req: Request) -> Reply:
    url = urlsplit(req.path)
    parts = url.path.strip("/").split("/")
    if parts[0] == "status" and len(parts) == 2:
        return Reply(int(parts[1]), body=f"status {parts[1]}".encode())
    if parts[0] == "slow" and len(parts) == 2:
        await asyncio.sleep(int(parts[1]) / 1000)
        return Reply(body=b"slow")
    if parts[0] == "big" and len(parts) == 2:
        n = int(parts[1])
        return Reply(chunks=_big(n), length=None if url.query == "chunked" else n)
    if parts[0] == "reset":
        return Reply(action="reset")
    if parts[0] == "hang":
        return Reply(action="hang")
    if parts[0] == "trailers":
        return Reply(body=b"with trailers", trailers=[(b"x-checksum", b"42"), (b"x-more", b"yes")])
    doc = {"method": req.method, "path": req.path,
           "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
           "body": req.body.decode("latin-1"),
           "trailers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.trailers],
           "peer": req.peer, "protocol": req.protocol, "authority": req.authority}
    return Reply(headers=[(b"content-type", b"application/json")], body=json.dumps(doc).encode())


# --- a server on its own thread and loop ----------------------------------------------

class Server:
    """An asyncio server on a thread of its own; `stop()` closes it and its connections."""

    host = "127.0.0.1"

    def __init__(self, handler: Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                 ssl_context=None) -> None:
        self.connections = 0
        self.requests = 0
        self.sent = 0
        self.refused = False  # HTTP/2 /refuse-once and /goaway-once: done once
        self._handler = handler
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task] = set()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name="test-server")
        self._thread.start()
        started.wait(10)
        if not hasattr(self, "port"):
            raise RuntimeError("test server did not start")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve(reader, writer):
            self.connections += 1
            task = asyncio.current_task()
            self._tasks.add(task)
            try:
                await self._handler(self, reader, writer)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - a test server's
                pass  # connection ends however the client leaves it
            finally:
                self._tasks.discard(task)
                writer.transport.abort()

        async def start():
            self._server = await asyncio.start_server(serve, self.host, 0, ssl=self._ssl,
                                                      backlog=128)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def drop_connections(self) -> None:
        """Close every open connection (as a server does to idle keep-alive ones)."""
        async def drop():
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(10)

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.01)  # let the transports' connection_lost run
        fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- HTTP/1.1 --------------------------------------------------------------------------

async def _h1_connection(server: Server, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    peer = writer.get_extra_info("peername")[1]

    async def next_event():
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(CHUNK)
                conn.receive_data(data)  # b"" tells h11 the peer closed
                continue
            return ev

    while True:
        ev = await next_event()
        if isinstance(ev, (h11.ConnectionClosed,)) or ev is h11.PAUSED:
            return
        if not isinstance(ev, h11.Request):
            return
        body = bytearray()
        trailers: list[Header] = []
        while True:
            e = await next_event()
            if isinstance(e, h11.Data):
                body += e.data
            elif isinstance(e, h11.EndOfMessage):
                trailers = [(bytes(n), bytes(v)) for n, v in e.headers]
                break
            else:
                return
        server.requests += 1
        req = Request(ev.method.decode(), ev.target.decode("latin-1"),
                      [(bytes(n), bytes(v)) for n, v in ev.headers], bytes(body), trailers,
                      peer, "1.1", dict(ev.headers).get(b"host", b"").decode("latin-1"))
        reply = await route(req)
        if reply.action == "reset":
            _rst(writer)
            return
        if reply.action == "hang":
            await reader.read()  # until the client goes away
            return
        headers = list(reply.headers)
        chunked = reply.chunks is not None and reply.length is None or bool(reply.trailers)
        if chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            n = reply.length if reply.chunks is not None else len(reply.body)
            headers.append((b"content-length", str(n).encode()))
        writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        if reply.chunks is not None:
            async for chunk in reply.chunks:
                writer.write(conn.send(h11.Data(data=chunk)))
                server.sent += len(chunk)
                await writer.drain()
        elif reply.body:
            writer.write(conn.send(h11.Data(data=reply.body)))
            server.sent += len(reply.body)
        writer.write(conn.send(h11.EndOfMessage(headers=reply.trailers)))
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()


# --- HTTP/2 ------------------------------------------------------------------------------

async def _h2_connection(server: Server, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                header_encoding=None))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    peer = writer.get_extra_info("peername")[1]
    pending: dict[int, list] = {}  # stream id -> [headers, body, trailers]
    window = asyncio.Event()
    tasks: dict[int, asyncio.Task] = {}

    def flush() -> None:
        data = conn.data_to_send()
        if data:
            writer.write(data)

    async def send_body(sid: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n <= 0:
                window.clear()
                await window.wait()
                continue
            conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            server.sent += n
            flush()
            await writer.drain()

    async def respond(sid: int) -> None:
        headers, body, trailers = pending.pop(sid)
        pseudo = {n: v.decode("latin-1") for n, v in headers if n.startswith(b":")}
        server.requests += 1
        req = Request(pseudo[b":method"], pseudo[b":path"],
                      [(n, v) for n, v in headers if not n.startswith(b":")], bytes(body),
                      trailers, peer, "2", pseudo.get(b":authority", ""))
        if req.path == "/refuse-once" and not server.refused:
            server.refused = True
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            flush()
            return
        if req.path == "/goaway-once" and not server.refused:
            server.refused = True
            conn.close_connection(last_stream_id=max(sid - 2, 0))  # "not processed"
            flush()
            return
        reply = await route(req)
        if reply.action == "reset":
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            flush()
            return
        if reply.action == "hang":
            await asyncio.Event().wait()
        out = [(b":status", str(reply.status).encode()), *reply.headers]
        n = reply.length if reply.chunks is not None else len(reply.body)
        if n is not None:
            out.append((b"content-length", str(n).encode()))
        conn.send_headers(sid, out)
        flush()
        if reply.chunks is not None:
            async for chunk in reply.chunks:
                await send_body(sid, chunk)
        elif reply.body:
            await send_body(sid, reply.body)
        if reply.trailers:
            conn.send_headers(sid, reply.trailers, end_stream=True)
        else:
            conn.end_stream(sid)
        flush()

    async def run(sid: int) -> None:
        try:
            await respond(sid)
        except (h2.exceptions.ProtocolError, ConnectionError):
            pass  # the client reset the stream or left
        finally:
            tasks.pop(sid, None)

    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    pending[ev.stream_id] = [ev.headers, bytearray(), []]
                elif isinstance(ev, h2.events.DataReceived):
                    if ev.stream_id in pending:
                        pending[ev.stream_id][1] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    pending[ev.stream_id][2] = list(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in pending:
                    tasks[ev.stream_id] = asyncio.get_running_loop().create_task(run(ev.stream_id))
                elif isinstance(ev, h2.events.StreamReset):
                    pending.pop(ev.stream_id, None)
                    t = tasks.pop(ev.stream_id, None)
                    if t is not None:
                        t.cancel()
                elif isinstance(ev, h2.events.WindowUpdated):
                    window.set()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    flush()
                    return
            flush()
    finally:
        for t in list(tasks.values()):
            t.cancel()


# --- gRPC --------------------------------------------------------------------------------

GRPC_SERVICE = "test.Echo"


class GrpcServer:
    """A grpcio server (thread pool) with the generic `test.Echo` handlers."""

    host = "127.0.0.1"

    def __init__(self, credentials=None) -> None:
        import concurrent.futures
        import grpc

        self.calls = 0
        self.cancelled = threading.Event()  # set when a BidiEcho saw its client go away
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            GRPC_SERVICE, {
                "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
                "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
                "Slow": grpc.unary_unary_rpc_method_handler(self._slow),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
                "BidiEcho": grpc.stream_stream_rpc_method_handler(self._bidi),
            })])
        addr = f"{self.host}:0"
        if credentials is None:
            self.port = self.server.add_insecure_port(addr)
        else:
            self.port = self.server.add_secure_port(addr, credentials)
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None).wait(10)

    def _unary(self, request: bytes, context) -> bytes:
        self.calls += 1
        context.send_initial_metadata([("x-initial", "1")])
        context.set_trailing_metadata([(k, v) for k, v in context.invocation_metadata()
                                       if k.startswith("x-")])
        return request

    def _fail(self, request: bytes, context) -> bytes:
        import grpc
        self.calls += 1
        code, _, message = request.decode().partition(":")
        status = next(c for c in grpc.StatusCode if c.value[0] == int(code))
        context.abort(status, message)

    def _slow(self, request: bytes, context) -> bytes:
        self.calls += 1
        time.sleep(float(request))
        return b"late"

    def _server_stream(self, request: bytes, context):
        self.calls += 1
        for i in range(int(request)):
            yield f"msg-{i}".encode()

    def _bidi(self, requests, context):
        self.calls += 1
        context.add_callback(self.cancelled.set)
        context.send_initial_metadata([(k, v) for k, v in context.invocation_metadata()
                                       if k.startswith("x-")])
        n = 0
        for msg in requests:
            n += 1
            yield msg
        context.set_trailing_metadata([("x-count", str(n))])


# --- TLS material ------------------------------------------------------------------------

class TestPki:
    """A CA made for the test run (trustme), its server certificate for localhost and
    127.0.0.1, a client certificate, and an unrelated CA."""

    __test__ = False

    def __init__(self, tmpdir) -> None:
        import trustme
        self.ca = trustme.CA()
        self.other = trustme.CA()
        self.server_cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.client_cert = self.ca.issue_cert("client.test")
        self.ca_file = str(tmpdir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.other_ca_file = str(tmpdir / "other-ca.pem")
        self.other.cert_pem.write_to_path(self.other_ca_file)
        self.client_cert_file = str(tmpdir / "client.pem")
        self.client_key_file = str(tmpdir / "client.key")
        for blob in self.client_cert.cert_chain_pems:
            blob.write_to_path(self.client_cert_file, append=True)
        self.client_cert.private_key_pem.write_to_path(self.client_key_file)
        self.server_cert_pem = b"".join(b.bytes() for b in self.server_cert.cert_chain_pems)
        self.server_key_pem = self.server_cert.private_key_pem.bytes()

    def server_context(self, alpn: list[str] | None = None, require_client_cert: bool = False):
        import ssl
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        if require_client_cert:
            self.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


# --- fixtures ----------------------------------------------------------------------------

def start_http1(ssl_context=None) -> Server:
    """One more HTTP/1.1 server (the caller stops it), for tests needing several."""
    return Server(_h1_connection, ssl_context)


@pytest.fixture
def http1_server():
    s = start_http1()
    yield s
    s.stop()


def start_http2(ssl_context=None) -> Server:
    """One more HTTP/2 server (the caller stops it)."""
    return Server(_h2_connection, ssl_context)


@pytest.fixture
def http2_server():
    s = start_http2()
    yield s
    s.stop()


@pytest.fixture
def http2_tls_server(tls_ca):
    s = start_http2(tls_ca.server_context(["h2"]))
    yield s
    s.stop()


@pytest.fixture
def http1_tls_server(tls_ca):
    s = Server(_h1_connection, tls_ca.server_context(["http/1.1"]))
    yield s
    s.stop()


@pytest.fixture
def http1_mtls_server(tls_ca):
    s = Server(_h1_connection, tls_ca.server_context(["http/1.1"], require_client_cert=True))
    yield s
    s.stop()


@pytest.fixture
def grpc_server():
    s = GrpcServer()
    yield s
    s.stop()


class BlockingTlsServer:
    """HTTP/1.1 over TLS with a client certificate required, on plain blocking sockets (a
    thread per connection): unlike asyncio's TLS, OpenSSL here writes its alert to the
    socket when the handshake fails, as production servers do. Answers every request
    with 200 `mtls ok` and closes."""

    host = "127.0.0.1"

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self._sock = socket.create_server((self.host, 0))
        self.port = self._sock.getsockname()[1]
        self.handshake_failures = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="test-tls-server")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        import ssl
        conn.settimeout(5)
        tls = self._ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with tls:
            try:
                tls.do_handshake()
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nmtls ok")
                tls.close()
            except ssl.SSLError:
                self.handshake_failures += 1
                # lingering close: closing with the client's request unread would send a
                # TCP RST, which can destroy the alert before the client reads it
                try:
                    tls.shutdown(socket.SHUT_WR)  # drops TLS: plain socket calls from here
                    tls.settimeout(1)
                    while tls.recv(4096):
                        pass
                except OSError:
                    pass
            except OSError:
                pass

    def stop(self) -> None:
        self._sock.close()


@pytest.fixture
def tls_alert_server(tls_ca):
    s = BlockingTlsServer(tls_ca.server_context(["http/1.1"], require_client_cert=True))
    yield s
    s.stop()


@pytest.fixture
def grpc_mtls_server(tls_ca):
    import grpc
    creds = grpc.ssl_server_credentials([(tls_ca.server_key_pem, tls_ca.server_cert_pem)],
                                        root_certificates=tls_ca.ca.cert_pem.bytes(),
                                        require_client_auth=True)
    s = GrpcServer(creds)
    yield s
    s.stop()


@pytest.fixture
def grpc_tls_server(tls_ca):
    import grpc
    creds = grpc.ssl_server_credentials([(tls_ca.server_key_pem, tls_ca.server_cert_pem)])
    s = GrpcServer(creds)
    yield s
    s.stop()
