"""The outbound clients against real servers on 127.0.0.1 (tests/servers.py): HTTP/1.1,
HTTP/2, TLS, gRPC; pooling, round robin, and every failure ending in a clear error."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest

from pyproxywasm.net import Cluster, TlsSettings
from pyproxywasm.net.http_client import CalloutError, HttpClient, HttpResponse
from pyproxywasm.net.loop import IoLoop
from servers import *  # noqa: F401,F403 - the server fixtures
from servers import refused_endpoint, start_http1

WAIT = 10  # seconds a test waits for the loop at most


@pytest.fixture
def io():
    return IoLoop.shared()


@pytest.fixture
def http(io):
    c = HttpClient(io)
    yield c
    io.submit(c.close()).result(WAIT)


def call(io, coro):
    return io.submit(coro).result(WAIT)


def get(path: str, *extra, method: str = "GET", authority: str = "upstream.test"):
    return [(b":method", method.encode()), (b":path", path.encode()),
            (b":authority", authority.encode()), *extra]


def fetch(io, http, cluster, path="/echo", *, body=b"", headers=(), trailers=(), timeout=None,
          method="GET") -> HttpResponse:
    return call(io, http.request(cluster, get(path, *headers, method=method), body,
                                 list(trailers), timeout))


def failure(io, http, cluster, path="/echo", timeout=None) -> CalloutError:
    with pytest.raises(CalloutError) as ei:
        fetch(io, http, cluster, path, timeout=timeout)
    return ei.value


def echo(resp: HttpResponse) -> dict:
    assert resp.headers[0] == (b":status", b"200")
    return json.loads(resp.body)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


# --- the loop --------------------------------------------------------------------------

def test_shared_loop_is_one_daemon_thread(io):
    assert IoLoop.shared() is io
    assert not io.in_loop_thread()
    names = call(io, _thread_name())
    assert names == ("pyproxywasm-io", True)
    seen = []
    done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), io.loop)
    io.call_soon(lambda: seen.append(io.in_loop_thread()))
    done.result(WAIT)
    call(io, asyncio.sleep(0))
    assert seen == [True]


async def _thread_name():
    import threading
    t = threading.current_thread()
    return t.name, t.daemon


def test_attach_wraps_a_running_loop():
    async def main():
        io = IoLoop.attach(asyncio.get_running_loop())
        assert io.in_loop_thread()
        return await asyncio.wrap_future(io.submit(asyncio.sleep(0, "ran")))
    assert asyncio.run(main()) == "ran"


def test_clients_on_an_attached_loop(http1_server, grpc_server):
    """`serve` runs its own loop: the clients work on it the same way."""
    from pyproxywasm.net.grpc_client import GrpcClient

    async def main():
        io = IoLoop.attach(asyncio.get_running_loop())
        http, grpc_ = HttpClient(io), GrpcClient(io)
        try:
            r = await http.request(Cluster("a", (http1_server.endpoint,)), get("/echo"), b"", [], 5)
            g = await grpc_.unary(Cluster("g", (grpc_server.endpoint,)), "test.Echo", "Unary", [],
                                  b"attached", 5)
            return json.loads(r.body)["method"], g
        finally:
            await http.close()
            await grpc_.close()
    assert asyncio.run(main()) == ("GET", b"attached")


# --- HTTP/1.1 ----------------------------------------------------------------------------

def test_h1_request_line_headers_and_body(io, http, http1_server):
    c = Cluster("up", (http1_server.endpoint,))
    r = fetch(io, http, c, "/echo/a?b=c%20d", method="POST", body=b"hello",
              headers=[(b"X-Custom", b"1"), (b"x-custom", b"2"), (b"content-length", b"999"),
                       (b":scheme", b"https")])
    doc = echo(r)
    assert doc["method"] == "POST" and doc["path"] == "/echo/a?b=c%20d"
    hdrs = doc["headers"]
    assert ["host", "upstream.test"] in hdrs
    assert ["x-custom", "1"] in hdrs and ["x-custom", "2"] in hdrs
    assert ["content-length", "5"] in hdrs and ["content-length", "999"] not in hdrs
    assert not any(n in ("user-agent", "accept-encoding") for n, _ in hdrs)
    assert doc["body"] == "hello" and doc["protocol"] == "1.1"
    assert all(n == n.lower() for n, _ in r.headers)
    assert (b"content-type", b"application/json") in r.headers


def test_h1_error_status_is_an_answer(io, http, http1_server):
    r = fetch(io, http, Cluster("up", (http1_server.endpoint,)), "/status/503")
    assert r.headers[0] == (b":status", b"503") and r.body == b"status 503"
    assert r.status == 503


def test_h1_missing_pseudo_headers(io, http, http1_server):
    c = Cluster("up", (http1_server.endpoint,))
    with pytest.raises(CalloutError) as ei:
        call(io, http.request(c, [(b":method", b"GET"), (b":authority", b"x")], b"", [], None))
    assert ei.value.reason == "bad request headers"


def test_h1_pool_reuses_the_connection(io, http, http1_server):
    c = Cluster("up", (http1_server.endpoint,))
    first = echo(fetch(io, http, c))
    second = echo(fetch(io, http, c))
    assert first["peer"] == second["peer"]
    assert http1_server.connections == 1 and http1_server.requests == 2


def test_h1_max_connections_queues_calls(io, http, http1_server):
    c = Cluster("one", (http1_server.endpoint,), max_connections=1)

    async def three():
        return await asyncio.gather(*(http.request(c, get("/slow/30"), b"", [], 5) for _ in range(3)))
    assert [r.body for r in call(io, three())] == [b"slow"] * 3
    assert http1_server.connections == 1
    wide = Cluster("three", (http1_server.endpoint,), max_connections=3)

    async def three_wide():
        return await asyncio.gather(*(http.request(wide, get("/slow/100"), b"", [], 5)
                                      for _ in range(3)))
    call(io, three_wide())
    assert http1_server.connections == 4


def test_h1_round_robin(io, http, http1_server):
    s2 = start_http1()
    try:
        c = Cluster("rr", (http1_server.endpoint, s2.endpoint))
        for _ in range(4):
            echo(fetch(io, http, c))
        assert (http1_server.requests, s2.requests) == (2, 2)
    finally:
        s2.stop()


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_server_closing_idle_connections(io, http, http1_server, http2_server, http2):
    server = http2_server if http2 else http1_server
    c = Cluster("up", (server.endpoint,), http2=http2)
    first = echo(fetch(io, http, c))
    server.drop_connections()
    call(io, asyncio.sleep(0.05))  # the client's loop sees the close
    second = echo(fetch(io, http, c))
    assert first["peer"] != second["peer"] and server.connections == 2


def test_h1_refused(io, http):
    e = failure(io, http, Cluster("down", (refused_endpoint(),)))
    assert e.reason == "connection refused"


def test_h1_connect_timeout(io, http):
    # A listener whose accept queue is full: the kernel drops further SYNs, so connect hangs.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lst.getsockname())
            fillers.append(s)
        ep = "127.0.0.1:%d" % lst.getsockname()[1]
        e = failure(io, http, Cluster("full", (ep,), connect_timeout=0.2), timeout=2)
        assert e.reason == "connect timeout"
    finally:
        for s in fillers:
            s.close()
        lst.close()


def test_h1_reset(io, http, http1_server):
    e = failure(io, http, Cluster("up", (http1_server.endpoint,)), "/reset")
    assert e.reason == "connection reset"
    assert http1_server.requests == 1  # sent once: no retry behind the guest's back


def test_h1_never_answers_times_out(io, http, http1_server):
    c = Cluster("up", (http1_server.endpoint,))
    e = failure(io, http, c, "/hang", timeout=0.2)
    assert e.reason == "timeout"
    # the cluster's request_timeout applies when the call gives none
    e = failure(io, http, Cluster("up2", (http1_server.endpoint,), request_timeout=0.2), "/hang")
    assert e.reason == "timeout"
    # and the client still works afterwards
    assert echo(fetch(io, http, c))["method"] == "GET"


def test_h1_slow_within_timeout(io, http, http1_server):
    r = fetch(io, http, Cluster("up", (http1_server.endpoint,)), "/slow/50", timeout=5)
    assert r.body == b"slow"


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_h1_response_too_large_is_not_read(io, http, http1_server, query):
    c = Cluster("up", (http1_server.endpoint,), max_response_bytes=1 << 20)
    e = failure(io, http, c, f"/big/{100 << 20}{query}", timeout=10)
    assert e.reason == "response too large"
    # of the 100 MB offered, the server could write only what the client pulled before
    # refusing (1 MiB) plus socket buffers: far from all of it.
    assert http1_server.sent < 16 << 20
    # an answer at the limit is fine
    assert len(fetch(io, http, c, f"/big/{1 << 20}{query}").body) == 1 << 20


def test_h1_trailers_dropped(io, http, http1_server):
    c = Cluster("up", (http1_server.endpoint,))
    r = fetch(io, http, c, "/trailers")
    assert r.body == b"with trailers" and r.trailers == []
    doc = echo(fetch(io, http, c, "/echo", method="POST", body=b"x", trailers=[(b"x-t", b"1")]))
    assert doc["trailers"] == []


def test_h1_streaming(io, http, http1_server):
    c = Cluster("up", (http1_server.endpoint,))

    async def body():
        for part in (b"one ", b"two"):
            yield part

    async def go():
        resp = await http.open(c, get("/echo", method="POST"), body(), 5)
        got = b"".join([chunk async for chunk in resp.chunks()])
        await resp.release()
        big = await http.open(c, get(f"/big/{10 << 20}?chunked"), b"", 5)
        first = await big.chunks().__anext__()
        await big.release()  # mid-body: the connection is dropped, not pooled
        return resp.status, json.loads(got), await resp.trailers(), len(first)

    status, doc, trailers, first = call(io, go())
    assert status == 200 and doc["body"] == "one two" and trailers == []
    assert 0 < first <= 10 << 20
    assert echo(fetch(io, http, c))["method"] == "GET"


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_failures_leak_nothing(io, http1_server, http2_server, http2):
    server = http2_server if http2 else http1_server
    c = Cluster("up", (server.endpoint,), http2=http2)
    down = Cluster("down", (refused_endpoint(),), http2=http2)
    client = HttpClient(io)
    fetch(io, client, c)  # warm the loop (its self-pipe etc.)
    before = open_fds()
    for _ in range(5):
        for cl, path, t in ((c, "/reset", None), (c, "/hang", 0.05), (down, "/", None),
                            (c, f"/big/{8 << 20}?chunked", None)):
            with pytest.raises(CalloutError):
                fetch(io, client, cl, path, timeout=t)
        fetch(io, client, c)
    call(io, client.close())
    call(io, asyncio.sleep(0.05))
    assert open_fds() <= before
    with pytest.raises(CalloutError) as ei:
        fetch(io, client, c)
    assert ei.value.reason == "client closed"


# --- TLS ---------------------------------------------------------------------------------

def tls_cluster(server, tls_ca, **kw) -> Cluster:
    http2 = kw.pop("http2", False)
    return Cluster("tls", (server.endpoint,), tls=TlsSettings(**{"ca_file": tls_ca.ca_file, **kw}),
                   http2=http2)


def test_tls_ok(io, http, http1_tls_server, tls_ca):
    assert echo(fetch(io, http, tls_cluster(http1_tls_server, tls_ca)))["protocol"] == "1.1"
    assert echo(fetch(io, http, tls_cluster(http1_tls_server, tls_ca, sni="localhost")))


def test_tls_wrong_ca(io, http, http1_tls_server, tls_ca):
    e = failure(io, http, tls_cluster(http1_tls_server, tls_ca, ca_file=tls_ca.other_ca_file))
    assert e.reason == "tls: certificate verify failed"
    # verification off: the same server is reachable
    c = tls_cluster(http1_tls_server, tls_ca, ca_file=tls_ca.other_ca_file, verify=False)
    assert echo(fetch(io, http, c))


def test_tls_wrong_sni(io, http, http1_tls_server, tls_ca):
    e = failure(io, http, tls_cluster(http1_tls_server, tls_ca, sni="elsewhere.test"))
    assert e.reason == "tls: certificate verify failed"
    assert "elsewhere.test" in e.detail


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_tls_to_a_plaintext_server(io, http, http1_server, http2_server, tls_ca, http2):
    server = http2_server if http2 else http1_server
    e = failure(io, http, tls_cluster(server, tls_ca, http2=http2), timeout=3)
    assert e.reason.startswith("tls: "), e


def test_tls_client_certificate_alert(io, http, tls_alert_server, tls_ca):
    e = failure(io, http, tls_cluster(tls_alert_server, tls_ca))
    assert e.reason == "tls: tlsv13 alert certificate required"
    assert tls_alert_server.handshake_failures == 1
    c = tls_cluster(tls_alert_server, tls_ca, cert_file=tls_ca.client_cert_file,
                    key_file=tls_ca.client_key_file)
    assert fetch(io, http, c).body == b"mtls ok"


def test_tls_client_certificate(io, http, http1_mtls_server, tls_ca):
    e = failure(io, http, tls_cluster(http1_mtls_server, tls_ca))
    # TLS 1.3 checks the client certificate after the client's handshake completed: the test
    # server (asyncio) closes without flushing its alert, so the client sees the connection
    # end; a server that sends the alert gives "tls: tlsv13 alert certificate required".
    assert e.reason.startswith("tls: ") or e.reason == "connection reset", e
    c = tls_cluster(http1_mtls_server, tls_ca, cert_file=tls_ca.client_cert_file,
                    key_file=tls_ca.client_key_file)
    assert echo(fetch(io, http, c))


# --- HTTP/2 ------------------------------------------------------------------------------

def h2c(server, **kw) -> Cluster:
    return Cluster("h2", (server.endpoint,), http2=True, **kw)


def test_h2_request_and_trailers_both_ways(io, http, http2_server):
    c = h2c(http2_server)
    doc = echo(fetch(io, http, c, "/echo/x?y=1", method="POST", body=b"payload",
                     headers=[(b"X-Custom", b"1"), (b"connection", b"close"), (b"te", b"trailers")],
                     trailers=[(b"x-sum", b"7")]))
    assert doc["protocol"] == "2" and doc["authority"] == "upstream.test"
    assert doc["method"] == "POST" and doc["path"] == "/echo/x?y=1" and doc["body"] == "payload"
    assert ["x-custom", "1"] in doc["headers"] and ["content-length", "7"] in doc["headers"]
    assert ["te", "trailers"] in doc["headers"]
    assert not any(n == "connection" for n, _ in doc["headers"])
    assert doc["trailers"] == [["x-sum", "7"]]
    r = fetch(io, http, c, "/trailers")
    assert r.body == b"with trailers"
    assert r.trailers == [(b"x-checksum", b"42"), (b"x-more", b"yes")]
    # trailers without a body
    assert echo(fetch(io, http, c, trailers=[(b"x-only", b"1")]))["trailers"] == [["x-only", "1"]]
    r = fetch(io, http, c, "/status/404")
    assert r.headers[0] == (b":status", b"404") and r.body == b"status 404"


def test_h2_multiplexes_one_connection(io, http, http2_server):
    c = h2c(http2_server)

    async def many():
        return await asyncio.gather(*(http.request(c, get(f"/slow/{20 + i}"), b"", [], 5)
                                      for i in range(20)))
    rs = call(io, many())
    assert [r.body for r in rs] == [b"slow"] * 20
    assert http2_server.connections == 1 and http2_server.requests == 20
    echo(fetch(io, http, c))
    assert http2_server.connections == 1


def test_h2_round_robin(io, http, http2_server):
    from servers import start_http2
    s2 = start_http2()
    try:
        c = Cluster("rr2", (http2_server.endpoint, s2.endpoint), http2=True)
        for _ in range(4):
            echo(fetch(io, http, c))
        assert (http2_server.requests, s2.requests) == (2, 2)
        assert (http2_server.connections, s2.connections) == (1, 1)
    finally:
        s2.stop()


def test_h2_failures(io, http, http2_server):
    c = h2c(http2_server)
    assert failure(io, http, c, "/reset").reason == "connection reset"
    assert failure(io, http, c, "/hang", timeout=0.2).reason == "timeout"
    assert failure(io, http, h2c(http2_server, request_timeout=0.2), "/hang").reason == "timeout"
    assert echo(fetch(io, http, c))["protocol"] == "2"  # the connection survived all that
    assert http2_server.connections == 2  # one per cluster (the two differ in request_timeout)
    assert failure(io, http, Cluster("down", (refused_endpoint(),), http2=True)).reason == \
        "connection refused"


def test_h2_against_an_http1_server(io, http, http1_server):
    e = failure(io, http, h2c(http1_server), timeout=2)
    assert e.reason in ("protocol error", "connection reset"), e


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_h2_response_too_large_is_not_read(io, http, http2_server, query):
    c = h2c(http2_server, max_response_bytes=1 << 20)
    e = failure(io, http, c, f"/big/{100 << 20}{query}", timeout=10)
    assert e.reason == "response too large"
    # flow control: the server could send the limit plus one connection window at most
    assert http2_server.sent < 8 << 20
    assert len(fetch(io, http, c, f"/big/{1 << 20}").body) == 1 << 20


def test_h2_streaming(io, http, http2_server):
    c = h2c(http2_server)

    async def body():
        for part in (b"one ", b"two"):
            await asyncio.sleep(0)
            yield part

    async def go():
        resp = await http.open(c, get("/echo", method="POST"), body(), 5)
        got = b"".join([chunk async for chunk in resp.chunks()])
        await resp.release()
        tr = await http.open(c, get("/trailers"), b"", 5)
        trailers = await tr.trailers()
        await tr.release()
        big = await http.open(c, get(f"/big/{50 << 20}"), b"", 5)
        first = await big.chunks().__anext__()
        await asyncio.sleep(0.1)  # an unread stream holds at most its window
        held = http2_server.sent
        await big.release()
        return resp.status, json.loads(got), trailers, len(first), held

    status, doc, trailers, first, held = call(io, go())
    assert status == 200 and doc["body"] == "one two"
    assert trailers == [(b"x-checksum", b"42"), (b"x-more", b"yes")]
    assert first > 0 and held < 2 << 20
    assert echo(fetch(io, http, c))["protocol"] == "2"


def test_h2_tls_alpn(io, http, http2_tls_server, http1_tls_server, tls_ca):
    doc = echo(fetch(io, http, tls_cluster(http2_tls_server, tls_ca, http2=True)))
    assert doc["protocol"] == "2"
    e = failure(io, http, tls_cluster(http1_tls_server, tls_ca, http2=True))
    assert e.reason == "protocol error" and "ALPN" in e.detail
    e = failure(io, http, tls_cluster(http2_tls_server, tls_ca, http2=True, sni="nope.test"))
    assert e.reason == "tls: certificate verify failed"


# --- gRPC --------------------------------------------------------------------------------

from pyproxywasm.net.grpc_client import GrpcCallError, GrpcClient  # noqa: E402

SVC = "test.Echo"


@pytest.fixture
def grpc_client(io):
    c = GrpcClient(io)
    yield c
    io.submit(c.close()).result(WAIT)


def unary(io, client, cluster, method, message, metadata=(), timeout=5):
    return call(io, client.unary(cluster, SVC, method, list(metadata), message, timeout))


class Recorder:
    """Collects a stream's events; `closed` is set with the close event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.closed = None

    def __call__(self, kind, value):
        self.events.append((kind, value))
        if kind == "close":
            assert self.closed is None or not self.closed.is_set(), "close delivered twice"
            self.closed.set()

    def kinds(self):
        return [k for k, _ in self.events]

    def messages(self):
        return [v for k, v in self.events if k == "message"]


def open_stream(io, client, cluster, method, timeout=5, metadata=()):
    rec = Recorder()

    async def start():
        rec.closed = asyncio.Event()
        return client.stream(cluster, SVC, method, list(metadata), timeout, rec)
    return call(io, start()), rec


def wait_closed(io, rec, timeout=5):
    call(io, asyncio.wait_for(rec.closed.wait(), timeout))
    return rec.events[-1][1]


def test_grpc_unary(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,), http2=True)
    assert unary(io, grpc_client, c, "Unary", b"\x00\x01raw") == b"\x00\x01raw"
    assert unary(io, grpc_client, c, "Unary", b"") == b""
    assert grpc_server.calls == 2


def test_grpc_unary_error_status(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,), http2=True)
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, c, "Fail", b"7:not you")
    assert (ei.value.code, ei.value.message) == (7, "not you")
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, c, "NoSuchMethod", b"")
    assert ei.value.code == 12  # UNIMPLEMENTED


def test_grpc_unary_deadline_and_refused(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,), http2=True)
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, c, "Slow", b"1", timeout=0.2)
    assert ei.value.code == 4
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, Cluster("g", (grpc_server.endpoint,), request_timeout=0.2), "Slow", b"1",
              timeout=None)
    assert ei.value.code == 4
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, Cluster("down", (refused_endpoint(),)), "Unary", b"x")
    assert ei.value.code == 14


def test_grpc_message_too_large(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,), max_response_bytes=1000)
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, c, "Unary", b"x" * 5000)
    assert ei.value.code == 8  # RESOURCE_EXHAUSTED
    assert unary(io, grpc_client, c, "Unary", b"x" * 900) == b"x" * 900


def test_grpc_bad_metadata(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,))
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, c, "Unary", b"", metadata=[(b"x-a", b"line\nbreak")])
    assert ei.value.code == 13
    with pytest.raises(GrpcCallError):
        unary(io, grpc_client, c, "Unary", b"", metadata=[(b"bad key", b"v")])
    with pytest.raises(GrpcCallError) as ei:
        call(io, grpc_client.unary(c, "test.Echo", "Un ary\n", [], b"", 5))
    assert ei.value.code == 13
    s, rec = open_stream(io, grpc_client, c, "Bidi\x00Echo")
    assert wait_closed(io, rec)[0] == 13 and rec.kinds() == ["close"]
    assert grpc_server.calls == 0


def test_grpc_channel_reused_and_round_robin(io, grpc_client, grpc_server):
    from servers import GrpcServer
    other = GrpcServer()
    try:
        c = Cluster("g", (grpc_server.endpoint, other.endpoint))
        for _ in range(4):
            unary(io, grpc_client, c, "Unary", b"x")
        assert (grpc_server.calls, other.calls) == (2, 2)
        assert len(grpc_client._clusters) == 1
    finally:
        other.stop()


def test_grpc_server_stream_and_metadata(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,))
    s, rec = open_stream(io, grpc_client, c, "ServerStream")
    io.call_soon(s.send, b"3", True)
    assert wait_closed(io, rec) == (0, "")
    assert rec.kinds() == ["initial_metadata", "message", "message", "message",
                           "trailing_metadata", "close"]
    assert rec.messages() == [b"msg-0", b"msg-1", b"msg-2"]
    # metadata both ways, -bin keys as bytes
    s, rec = open_stream(io, grpc_client, c, "BidiEcho",
                         metadata=[(b"X-Text", b"hello"), (b"x-blob-bin", b"\x00\xff")])
    io.call_soon(s.send, b"a")
    io.call_soon(s.send, b"b")
    io.call_soon(s.close)
    assert wait_closed(io, rec) == (0, "")
    assert rec.messages() == [b"a", b"b"]
    events = dict(rec.events)
    assert events["initial_metadata"] == [(b"x-text", b"hello"), (b"x-blob-bin", b"\x00\xff")]
    assert events["trailing_metadata"] == [(b"x-count", b"2")]


def test_grpc_bidi_interleaved(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,))
    s, rec = open_stream(io, grpc_client, c, "BidiEcho")

    async def ping_pong():
        for i in range(5):
            s.send(f"m{i}".encode())
            while len(rec.messages()) <= i:  # the answer comes before the next send
                await asyncio.sleep(0.001)
        s.close()
        await rec.closed.wait()
    call(io, asyncio.wait_for(ping_pong(), 5))
    assert rec.messages() == [f"m{i}".encode() for i in range(5)]
    assert rec.events[-1] == ("close", (0, ""))


def test_grpc_stream_failures(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,))
    s, rec = open_stream(io, grpc_client, c, "Fail")
    io.call_soon(s.send, b"5:gone", True)
    assert wait_closed(io, rec) == (5, "gone")
    assert rec.kinds().count("close") == 1
    s, rec = open_stream(io, grpc_client, c, "BidiEcho", timeout=0.2)
    assert wait_closed(io, rec)[0] == 4
    s, rec = open_stream(io, grpc_client, Cluster("down", (refused_endpoint(),)), "BidiEcho")
    assert wait_closed(io, rec)[0] == 14
    assert "message" not in rec.kinds()


def test_grpc_stream_cancel(io, grpc_client, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,))
    s, rec = open_stream(io, grpc_client, c, "BidiEcho")
    io.call_soon(s.send, b"one")
    call(io, asyncio.wait_for(_until(lambda: rec.messages()), 5))
    io.call_soon(s.cancel)
    assert grpc_server.cancelled.wait(5)  # the server saw the reset
    call(io, asyncio.sleep(0.1))
    assert rec.kinds() == ["initial_metadata", "message"]  # nothing after cancel
    io.call_soon(s.send, b"late")  # harmless
    call(io, asyncio.sleep(0.05))
    assert rec.messages() == [b"one"]


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.005)


def test_grpc_client_close_ends_streams(io, grpc_server):
    client = GrpcClient(io)
    c = Cluster("g", (grpc_server.endpoint,))
    s, rec = open_stream(io, client, c, "BidiEcho")
    io.call_soon(s.send, b"one")
    call(io, asyncio.wait_for(_until(lambda: rec.messages()), 5))
    call(io, client.close())
    assert wait_closed(io, rec)[0] == 1  # CANCELLED
    with pytest.raises(GrpcCallError) as ei:
        unary(io, client, c, "Unary", b"x")
    assert ei.value.code == 14


def test_grpc_tls(io, grpc_client, grpc_tls_server, tls_ca):
    ok = Cluster("gt", (grpc_tls_server.endpoint,), tls=TlsSettings(ca_file=tls_ca.ca_file))
    assert unary(io, grpc_client, ok, "Unary", b"sec") == b"sec"
    sni = Cluster("gt2", (grpc_tls_server.endpoint,),
                  tls=TlsSettings(ca_file=tls_ca.ca_file, sni="localhost"))
    assert unary(io, grpc_client, sni, "Unary", b"sec") == b"sec"
    for bad in (TlsSettings(ca_file=tls_ca.other_ca_file),
                TlsSettings(ca_file=tls_ca.ca_file, sni="wrong.test")):
        with pytest.raises(GrpcCallError) as ei:
            unary(io, grpc_client, Cluster("bad", (grpc_tls_server.endpoint,), tls=bad), "Unary", b"")
        assert ei.value.code == 14
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, Cluster("nv", (grpc_tls_server.endpoint,),
                                       tls=TlsSettings(verify=False)), "Unary", b"")
    assert ei.value.code == 9


def test_grpc_failures_leak_nothing(io, grpc_server):
    c = Cluster("g", (grpc_server.endpoint,))
    down = Cluster("down", (refused_endpoint(),))
    warm = GrpcClient(io)
    unary(io, warm, c, "Unary", b"x")  # grpcio's process-wide pollers and threads
    call(io, warm.close())
    before = open_fds()
    b = fd_targets()
    client = GrpcClient(io)
    for _ in range(3):
        for cl, method, msg, t in ((c, "Fail", b"13:x", 5), (c, "Slow", b"0.3", 0.05),
                                   (down, "Unary", b"", 5)):
            with pytest.raises(GrpcCallError):
                unary(io, client, cl, method, msg, timeout=t)
        s, rec = open_stream(io, client, c, "BidiEcho")
        io.call_soon(s.send, b"x")
        call(io, asyncio.wait_for(_until(lambda: rec.messages()), 5))
        io.call_soon(s.cancel)
        assert unary(io, client, c, "Unary", b"ok") == b"ok"
    call(io, client.close())
    # the server runs in this process too: its side of each connection closes once its
    # handler threads notice the client left
    deadline = time.monotonic() + 5
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before, {k: v for k, v in fd_targets().items() if b.get(k) != v}
    assert not client._streams


def test_grpc_client_certificate(io, grpc_client, grpc_mtls_server, tls_ca):
    without = Cluster("m1", (grpc_mtls_server.endpoint,), tls=TlsSettings(ca_file=tls_ca.ca_file))
    with pytest.raises(GrpcCallError) as ei:
        unary(io, grpc_client, without, "Unary", b"")
    assert ei.value.code == 14
    with_cert = Cluster("m2", (grpc_mtls_server.endpoint,),
                        tls=TlsSettings(ca_file=tls_ca.ca_file, cert_file=tls_ca.client_cert_file,
                                        key_file=tls_ca.client_key_file))
    assert unary(io, grpc_client, with_cert, "Unary", b"mutual") == b"mutual"


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("bad", [(b"x-a", b"v\r\nx-injected: 1"), (b"bad name", b"v"),
                                 (b"x-nul", b"a\x00b"), (b"", b"v")],
                         ids=["crlf-value", "space-name", "nul-value", "empty-name"])
def test_hostile_headers_are_refused(io, http, http1_server, http2_server, http2, bad):
    server = http2_server if http2 else http1_server
    c = Cluster("up", (server.endpoint,), http2=http2)
    with pytest.raises(CalloutError) as ei:
        fetch(io, http, c, headers=[bad])
    assert ei.value.reason == "bad request headers"
    assert server.requests == 0
    assert echo(fetch(io, http, c))["method"] == "GET"  # the client is fine


@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":path", b"/a b"), (b":authority", b"x")],
    [(b":method", b"GET"), (b":path", b"/a\r\nx: 1"), (b":authority", b"x")],
    [(b":method", b"GET /x"), (b":path", b"/"), (b":authority", b"x")],
    [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x\r\n")],
], ids=["space-path", "crlf-path", "space-method", "crlf-authority"])
def test_hostile_request_line_is_refused(io, http, http1_server, headers):
    c = Cluster("up", (http1_server.endpoint,))
    with pytest.raises(CalloutError) as ei:
        call(io, http.request(c, headers, b"", [], None))
    assert ei.value.reason == "bad request headers"
    with pytest.raises(CalloutError) as ei:
        call(io, http.request(c, get("/"), b"", [(b"x-t", b"a\nb")], None))
    assert ei.value.reason == "bad request headers"
    assert http1_server.requests == 0


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_close_with_calls_in_flight(io, http1_server, http2_server, http2):
    server = http2_server if http2 else http1_server
    c = Cluster("up", (server.endpoint,), http2=http2)
    client = HttpClient(io)

    async def go():
        pending = asyncio.ensure_future(client.request(c, get("/hang"), b"", [], 5))
        while server.requests == 0:
            await asyncio.sleep(0.01)
        await client.close()
        try:
            await pending
        except CalloutError as e:
            return e.reason
    assert call(io, go()) == "client closed"


def test_h1_cluster_never_negotiates_h2(io, http, http2_tls_server, tls_ca):
    # the server speaks only h2: an HTTP/1.1 cluster offering ["h2", "http/1.1"] must not
    # end up speaking HTTP/1.1 over an h2 connection
    c = Cluster("t", (http2_tls_server.endpoint,),
                tls=TlsSettings(ca_file=tls_ca.ca_file, alpn=("h2", "http/1.1")))
    e = failure(io, http, c, timeout=2)
    assert e.reason.startswith("tls") or e.reason in ("connection reset", "protocol error"), e


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_large_request_body(io, http, http1_server, http2_server, http2):
    # HTTP/2: several times the 64 KiB initial window, so sending waits on WINDOW_UPDATEs
    server = http2_server if http2 else http1_server
    body = b"0123456789abcdef" * (3 << 16)  # 3 MiB
    c = Cluster("up", (server.endpoint,), http2=http2, max_response_bytes=8 << 20)
    doc = echo(fetch(io, http, c, method="POST", body=body, timeout=10))
    assert doc["body"].encode("latin-1") == body
    assert ["content-length", str(len(body))] in doc["headers"]
    assert not any(n == "content-type" for n, _ in doc["headers"])


def test_h2_beyond_max_concurrent_streams(io, http, http2_server):
    # the test server allows 100 concurrent streams per connection (h2's default)
    c = h2c(http2_server)

    async def many():
        return await asyncio.gather(*(http.request(c, get("/slow/200"), b"", [], 10)
                                      for _ in range(150)))
    assert [r.body for r in call(io, many())] == [b"slow"] * 150
    assert http2_server.connections == 2


def test_h2_released_streams_return_their_window(io, http, http2_server):
    # each released stream may hold up to a stream window of unread data; the connection's
    # window must get it back, or the shared connection stalls after a few releases
    c = h2c(http2_server, max_response_bytes=4 << 20)

    async def go():
        for _ in range(30):
            resp = await http.open(c, get(f"/big/{1 << 20}"), b"", 5)
            await resp.chunks().__anext__()
            await asyncio.sleep(0.01)  # let the window's worth arrive unread
            await resp.release()
        return await http.request(c, get(f"/big/{2 << 20}"), b"", [], 5)
    assert len(call(io, go()).body) == 2 << 20
    assert http2_server.connections == 1


@pytest.mark.parametrize("path", ["/refuse-once", "/goaway-once"])
def test_h2_unprocessed_request_is_sent_again(io, http, http2_server, path):
    doc = echo(fetch(io, http, h2c(http2_server), path, method="POST", body=b"again"))
    assert doc["path"] == path and doc["body"] == "again"
    assert http2_server.requests == 2 and http2_server.refused
    if path == "/goaway-once":
        assert http2_server.connections == 2


def test_h2_unprocessed_streamed_body_is_not_sent_again(io, http, http2_server):
    async def body():
        yield b"once"

    async def go():
        await http.open(h2c(http2_server), get("/refuse-once", method="POST"), body(), 5)
    with pytest.raises(CalloutError) as ei:
        call(io, go())
    assert ei.value.reason == "connection reset" and ei.value.unprocessed
