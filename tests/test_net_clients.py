"""The outbound clients against real servers on 127.0.0.1 (tests/servers.py): HTTP/1.1,
HTTP/2, TLS, gRPC; pooling, round robin, and every failure ending in a clear error."""
from __future__ import annotations

import asyncio
import json
import os
import socket

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


def test_h1_round_robin(io, http, http1_server):
    s2 = start_http1()
    try:
        c = Cluster("rr", (http1_server.endpoint, s2.endpoint))
        for _ in range(4):
            echo(fetch(io, http, c))
        assert (http1_server.requests, s2.requests) == (2, 2)
    finally:
        s2.stop()


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


def test_h1_failures_leak_nothing(io, http1_server):
    c = Cluster("up", (http1_server.endpoint,))
    down = Cluster("down", (refused_endpoint(),))
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
