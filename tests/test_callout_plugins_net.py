"""The SDK callout plugins (Go `callouts`, Rust `rustcallouts`, AssemblyScript `as_http_call`)
calling real servers on 127.0.0.1 (tests/servers.py) with real time: in the harness, on the
caller's thread of a Host, and in a Host's workers. Failures (refused, reset, timeout, TLS,
100 MB answers) and cancellation on root delete. Recorded-call behaviour of the same plugins:
test_callout_plugins.py."""
from __future__ import annotations

import json
import logging
import resource
import socket
import time

import pytest

from conftest import REQUEST
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib
from pyproxywasm.limits import Limits
from pyproxywasm.net import Cluster, TlsSettings
from pyproxywasm.testing import PluginHarness
from servers import *  # noqa: F401,F403 - the server fixtures
from servers import refused_endpoint
from test_callout_plugins import AS_GRPC_CALL, AS_HTTP_CALL, GO_CALLOUTS, RUST_CALLOUTS, local, resumed

PAUSE = 1
BIG = 100 * 1024 * 1024


@pytest.fixture
def silent_endpoint():
    """A listener whose connections the kernel accepts and nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def go_harness(cluster: Cluster, mode: str = "auth", **cfg) -> PluginHarness:
    config = json.dumps({"mode": mode, "cluster": cluster.name, **cfg})
    return PluginHarness(GO_CALLOUTS, configuration=config, clusters=[cluster])


def echoed(s) -> dict:
    """The echo server's JSON, which the auth plugins put in x-auth-user (the whole body)."""
    return json.loads(s.request_headers.get("x-auth-user"))


# ---- Go auth: pause, real answer, resume ---------------------------------------------------

def test_go_auth_against_a_real_server_in_the_harness(http1_server):
    with go_harness(Cluster("idp", (http1_server.endpoint,)), path="/check?u=1",
                    authority="idp.local") as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-user", "alice")], end_stream=True) == PAUSE
        assert h.settle(15)
        assert resumed(s)
        doc = echoed(s)
        assert (doc["method"], doc["path"], doc["authority"]) == ("GET", "/check?u=1", "idp.local")
        assert ["x-user", "alice"] in doc["headers"]
        assert h.logs("info")[-2].startswith("auth: response status=200 body=")
        s2 = h.http()
        s2.send_request_headers(REQUEST + [("x-user", "bob")], end_stream=True)
        assert h.settle(15) and resumed(s2)
        assert ["x-user", "bob"] in echoed(s2)["headers"]
        assert http1_server.connections == 1  # the pooled connection was reused


def test_go_auth_denied_by_a_real_status(http1_server):
    with go_harness(Cluster("idp", (http1_server.endpoint,)), path="/status/403") as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        assert local(s) == (403, [("x-auth-status", "403")], b"status 403")


def test_go_auth_slow_server_real_timing(http1_server):
    """The request stays paused while the server takes its time, and goes on after."""
    with go_harness(Cluster("idp", (http1_server.endpoint,)), path="/slow/200") as h:
        s = h.http()
        start = time.monotonic()
        s.send_request_headers(REQUEST, end_stream=True)
        h.dispatch()
        assert s.request_paused
        assert s.wait(timeout=15)
        assert time.monotonic() - start > 0.19  # paused while the server took its time
        assert resumed(s) and s.request_headers.get("x-auth-user") == "slow"


def test_go_auth_in_two_workers(http1_server):
    """Each worker's VM calls out and its streams are resumed by answers delivered on that
    worker's thread: every stream gets the answer to its own call."""
    cluster = Cluster("idp", (http1_server.endpoint,))
    config = json.dumps({"mode": "auth", "cluster": "idp", "path": "/who"})
    with Host([PluginConfig(VmConfig(GO_CALLOUTS), configuration=config)], concurrency=2,
              clusters=[cluster]) as host:
        def start(w: int, n: int) -> list:
            out = []
            for i in range(n):
                s = host.plugins[0].http_stream()
                user = f"w{w}-{i}"
                assert s.send_request_headers(REQUEST + [("x-user", user)], end_stream=True) == PAUSE
                out.append((user, s))
            return out

        def users(streams: list) -> list | None:
            if not all(resumed(s) for _, s in streams):
                return None
            return [(user, dict(map(tuple, echoed(s)["headers"]))["x-user"]) for user, s in streams]

        per_worker = [w.call(start, k, 50).result() for k, w in enumerate(host.workers)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = [w.call(users, ss).result() for w, ss in zip(host.workers, per_worker)]
            if all(g is not None for g in got):
                break
            time.sleep(0.02)
        assert all(g is not None for g in got), "not every stream was resumed"
        for pairs in got:
            assert all(mine == seen for mine, seen in pairs)
        assert http1_server.requests == 100


# ---- Go tick and multi with real time ------------------------------------------------------

def test_go_tick_dispatches_in_real_time(http1_server, caplog):
    """Ticks on the real clock, each calling out from the root context; the caller's thread
    runs its dispatcher (ticks and answers) with Dispatcher.wait."""
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    cluster = Cluster("svc", (http1_server.endpoint,))
    config = json.dumps({"mode": "tick", "cluster": "svc", "tick_ms": 30})
    with Host([PluginConfig(VmConfig(GO_CALLOUTS), configuration=config)], clusters=[cluster]) as host:
        def ticks() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith("tick ")]

        def answered() -> list[int]:
            return [int(m.split()[1].rstrip(":")) for m in ticks() if " status=200 body=" in m]

        start = time.monotonic()
        assert host.dispatcher.wait(lambda: len(answered()) >= 3, timeout=20)
        assert time.monotonic() - start >= 0.08  # at least three 30 ms periods
        assert ticks()[0] == "tick 1: dispatched"
        assert sorted(answered())[:3] == [1, 2, 3]
        assert not any("failed" in m for m in ticks())
    assert http1_server.requests >= 3


def test_go_multi_several_calls_per_request(http1_server):
    with go_harness(Cluster("svc", (http1_server.endpoint,)), mode="multi", count=4) as h:
        s = h.http()
        assert s.send_request_headers(REQUEST, end_stream=True) == PAUSE
        assert h.settle(15)
        assert "multi: all 4 answered" in h.logs("info")
        assert resumed(s)
        assert sorted((k, v) for k, v in s.request_headers if k.startswith("x-multi-")) == [
            (f"x-multi-{i}", "200") for i in range(1, 5)]
        assert http1_server.requests == 4


def test_go_post_relays_a_real_answer_with_trailers(http2_server):
    """Over HTTP/2 (the HTTP/1.1 client drops trailers, as Envoy's HTTP/1 codec does unless
    enable_trailers is set)."""
    with go_harness(Cluster("svc", (http2_server.endpoint,), http2=True), mode="post",
                    path="/trailers", body="abc", headers=[["x-h", "1"]]) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        status, headers, body = local(s)
        assert (status, body) == (200, b"with trailers")
        assert ("x-callout-status", "200") in headers
        assert ("x-callout-trailer-x-checksum", "42") in headers
        assert ("x-callout-trailer-x-more", "yes") in headers


# ---- failures: refused, reset, timeout, TLS, too large ------------------------------------

@pytest.mark.parametrize("what", ["refused", "reset", "timeout"])
def test_go_auth_failures_give_503(what, http1_server, silent_endpoint):
    if what == "refused":
        cluster, path = Cluster("idp", (refused_endpoint(),), connect_timeout=1), "/"
    elif what == "reset":
        cluster, path = Cluster("idp", (http1_server.endpoint,)), "/reset"
    else:
        cluster, path = Cluster("idp", (http1_server.endpoint,)), "/hang"
    with go_harness(cluster, path=path, timeout_ms=300) as h:
        s = h.http()
        start = time.monotonic()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        elapsed = time.monotonic() - start
        assert h.logs("info")[-1] == "auth: callout failed"
        assert local(s) == (503, [], b"auth unavailable")
        if what == "timeout":
            assert elapsed > 0.28  # not before the 300 ms timeout


@pytest.mark.parametrize("what, reason", [
    ("refused", "connection refused"), ("reset", "connection reset"), ("timeout", "timeout")])
def test_rust_auth_failure_reasons_from_real_failures(what, reason, http1_server):
    endpoint = refused_endpoint() if what == "refused" else http1_server.endpoint
    path = {"refused": "/", "reset": "/reset", "timeout": "/hang"}[what]
    cluster = Cluster("idp", (endpoint,), connect_timeout=1)
    with PluginHarness(RUST_CALLOUTS, configuration=f"mode=auth cluster=idp path={path} timeout_ms=300",
                       clusters=[cluster]) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1] == f"auth: callout failed status=11 message={reason}"
        assert local(s)[0] == 503


def test_tls_verification_failure_and_success(http1_tls_server, tls_ca):
    wrong = Cluster("idp", (http1_tls_server.endpoint,), tls=TlsSettings(ca_file=tls_ca.other_ca_file))
    with PluginHarness(RUST_CALLOUTS, configuration="mode=auth cluster=idp", clusters=[wrong]) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1] == ("auth: callout failed status=11 "
                                      "message=tls: certificate verify failed")
        assert local(s)[0] == 503
    right = Cluster("idp", (http1_tls_server.endpoint,),
                    tls=TlsSettings(ca_file=tls_ca.ca_file, sni="localhost"))
    with go_harness(right, path="/tls") as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        assert resumed(s) and echoed(s)["path"] == "/tls"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_100mb_answer_fails_the_call_with_bounded_memory(http1_server, chunked):
    """A server sending 100 MB: the call fails (the answer is over the cluster's limit, 1 MiB
    by default), the client stops reading, memory does not follow the 100 MB."""
    path = f"/big/{BIG}" + ("?chunked" if chunked else "")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with PluginHarness(RUST_CALLOUTS, configuration=f"mode=auth cluster=big path={path} timeout_ms=5000",
                       clusters=[Cluster("big", (http1_server.endpoint,))]) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(20)
        assert h.logs("info")[-1] == "auth: callout failed status=11 message=response too large"
        assert local(s) == (503, [], b"auth unavailable")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert http1_server.sent < 16 * 1024 * 1024  # flow control held the rest back
    assert grown_mib < 40


# ---- cancellation on root delete ----------------------------------------------------------

def test_root_delete_cancels_real_calls(silent_endpoint):
    with go_harness(Cluster("idp", (silent_endpoint,)), timeout_ms=400) as h:
        for _ in range(3):
            h.http().send_request_headers(REQUEST, end_stream=True)
        assert h.calls_in_flight() == 3
        n = len(h.logs())
        assert h.plugin.close()
        assert h.calls_in_flight() == 0
        time.sleep(0.6)  # past the calls' timeout: a failure would have been posted by now
        h.dispatch()
        assert [l for l in h.logs()[n:] if l.startswith("auth:")] == []


def test_root_delete_in_a_worker_cancels_its_calls(http1_server):
    cluster = Cluster("idp", (http1_server.endpoint,))
    config = json.dumps({"mode": "auth", "cluster": "idp", "path": "/hang", "timeout_ms": 0})
    with Host([PluginConfig(VmConfig(GO_CALLOUTS), configuration=config)], concurrency=1,
              clusters=[cluster]) as host:
        (w,) = host.workers

        def start() -> int:
            for _ in range(5):
                host.plugins[0].http_stream().send_request_headers(REQUEST, end_stream=True)
            return lib.pw_vm_calls_in_flight(host.plugins[0].vm.ptr)

        assert w.call(start).result() == 5
        deadline = time.monotonic() + 15
        while http1_server.requests < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert http1_server.requests == 5  # all five are hanging on the server

        def delete() -> tuple[bool, int]:
            vm = host.plugins[0].vm
            return host.plugins[0].close(), lib.pw_vm_calls_in_flight(vm.ptr)

        assert w.call(delete).result() == (True, 0)


# ---- AssemblyScript http_call against a real server ---------------------------------------

def test_assemblyscript_http_call_against_a_real_server(http2_server):
    cluster = Cluster("authz", (http2_server.endpoint,), http2=True)
    with PluginHarness(AS_HTTP_CALL, configuration="cluster=authz path=/trailers",
                       clusters=[cluster]) as h:
        s = h.http()
        assert s.send_request_headers(REQUEST, end_stream=True) == PAUSE
        assert h.settle(15)
        lines = h.logs("info")
        assert "as auth: trailer x-checksum=42" in lines and "as auth: trailer x-more=yes" in lines
        assert lines[-1] == "as auth: allowed user=with trailers"
        assert resumed(s) and s.request_headers.get("x-auth-user") == "with trailers"
    with PluginHarness(AS_HTTP_CALL, configuration="cluster=authz",
                       clusters=[Cluster("authz", (refused_endpoint(),), connect_timeout=1)]) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1] == "as auth: callout failed status=11 message=connection refused"
        assert local(s) == (503, [], b"auth unavailable")


# ---- gRPC from the Rust plugin against the grpcio server ----------------------------------

def rust_grpc(server, config: str) -> PluginHarness:
    return PluginHarness(RUST_CALLOUTS, configuration=f"cluster=g {config}",
                         clusters=[Cluster("g", (server.endpoint,))])


def test_rust_grpc_unary_against_grpcio(grpc_server):
    with rust_grpc(grpc_server, "mode=grpc service=test.Echo method=Unary") as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-grpc-message", "ping")], end_stream=True) == PAUSE
        assert h.settle(15)
        assert h.logs("info")[-1] == "grpc: reply size=4 message=ping"
        assert resumed(s) and s.request_headers.get("x-grpc-reply") == "ping"
        assert grpc_server.calls == 1


def test_rust_grpc_unary_failure_and_deadline(grpc_server):
    with rust_grpc(grpc_server, "mode=grpc method=Fail") as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-grpc-message", "7:go away")], end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1] == "grpc: failed status=7 get_status=7 message=go away"
        assert local(s) == (503, [("x-grpc-status", "7"), ("x-grpc-message", "go away")],
                            b"grpc failed: 7 go away")
    with rust_grpc(grpc_server, "mode=grpc method=Slow timeout_ms=200") as h:
        s = h.http()
        start = time.monotonic()
        s.send_request_headers(REQUEST + [("x-grpc-message", "2")], end_stream=True)
        assert h.settle(15)
        assert time.monotonic() - start > 0.18
        assert h.logs("info")[-1].startswith("grpc: failed status=4 get_status=4 message=")
        assert local(s)[0] == 503


def test_rust_grpc_cancel_against_grpcio(grpc_server):
    with rust_grpc(grpc_server, "mode=grpc method=Slow") as h:
        s = h.http()
        n = len(h.logs("info"))
        s.send_request_headers(REQUEST + [("x-grpc-message", "0.3"), ("x-grpc-cancel", "1")],
                               end_stream=True)
        assert h.logs("info")[n:][-1] == "grpc: cancel Ok(())"
        assert h.calls_in_flight() == 0
        time.sleep(0.5)
        h.dispatch()
        assert not any(l.startswith("grpc: reply") or l.startswith("grpc: failed")
                       for l in h.logs("info"))


def test_rust_grpc_stream_against_grpcio(grpc_server):
    with rust_grpc(grpc_server, "mode=stream method=BidiEcho") as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-stream-send", "a,b,c"), ("x-grpc-md", "q")],
                               end_stream=True)
        assert h.settle(15)
        lines = h.logs("info")
        assert "stream: initial x-plugin=rustcallouts" in lines and "stream: initial x-grpc-md=q" in lines
        assert [l for l in lines if l.startswith("stream: message")] == [
            "stream: message 1 a", "stream: message 2 b", "stream: message 3 c"]
        assert "stream: trailing x-count=3" in lines
        assert lines[-1].startswith("stream: closed status=0 get_status=0")
        assert resumed(s)
        assert (s.request_headers.get("x-stream-received"), s.request_headers.get("x-stream-messages")) == ("3", "a,b,c")


def test_rust_grpc_stream_half_close_and_cancel_against_grpcio(grpc_server):
    with rust_grpc(grpc_server, "mode=stream method=BidiEcho") as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-stream-send", "x,y"), ("x-stream-close", "1")],
                               end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1].startswith("stream: closed status=0")
        assert s.request_headers.get("x-stream-messages") == "x,y"
    with rust_grpc(grpc_server, "mode=stream method=BidiEcho") as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-stream-send", "x,y"), ("x-stream-cancel", "1")],
                               end_stream=True)
        assert h.logs("info")[-1] == "stream: cancel Ok(())"
        assert h.calls_in_flight() == 0
        assert grpc_server.cancelled.wait(5)  # the server saw the reset
        h.dispatch()
        assert not any(l.startswith("stream: message") or l.startswith("stream: closed")
                       for l in h.logs("info"))


@pytest.mark.parametrize("limit, size", [(None, 700_000), (100_000, 60_000)])
def test_rust_grpc_stream_sends_past_the_buffer_limit_answer_bad_argument(limit, size):
    """An upstream that takes the connection and never answers (a listening socket nobody
    accepts from): the stream's messages wait unwritten, and past the buffer limit (Envoy's
    1 MiB by default, Host(buffer_limit=)) proxy_grpc_send answers BAD_ARGUMENT and sends
    nothing; the stream goes on taking what fits."""
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(8)
    big = "A" * size
    caps = {} if limit is None else {"buffer_limit": limit}
    try:
        with PluginHarness(RUST_CALLOUTS, configuration="cluster=g mode=stream method=BidiEcho",
                           clusters=[Cluster("g", ("127.0.0.1:%d" % tarpit.getsockname()[1],))],
                           limits=Limits(log_bytes=0), **caps) as h:
            s = h.http()
            s.send_request_headers(REQUEST + [("x-stream-send", f"{big},{big},end")],
                                   end_stream=True)
            sent = [line[len("stream: sent "):].replace(big, "<big>")
                    for line in h.logs("info") if line.startswith("stream: sent")]
            assert sent == ["<big> end_stream=false Ok(())",
                            "<big> end_stream=false Err(BadArgument)",
                            "end end_stream=true Ok(())"]
            assert s.request_paused
    finally:
        tarpit.close()


def test_assemblyscript_grpc_through_the_adapted_imports_against_grpcio(grpc_server):
    cluster = Cluster("g", (grpc_server.endpoint,))
    with PluginHarness(AS_GRPC_CALL, configuration="cluster=g method=Unary",
                       clusters=[cluster]) as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-grpc-message", "hi")], end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1] == "as grpc: message 1 size=2 hi"
        assert resumed(s) and s.request_headers.get("x-grpc-reply") == "hi"
    with PluginHarness(AS_GRPC_CALL, configuration="mode=stream cluster=g method=BidiEcho",
                       clusters=[cluster]) as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-stream-send", "u,v")], end_stream=True)
        assert h.settle(15)
        lines = h.logs("info")
        assert [l for l in lines if l.startswith("as grpc: message")] == [
            "as grpc: message 1 size=1 u", "as grpc: message 2 size=1 v"]
        assert "as grpc: trailing x-count=2" in lines  # the pre-spec trailing-metadata export
        assert lines[-1] == "as grpc: close status=0 get_status=0 message="
        assert resumed(s) and s.request_headers.get("x-stream-received") == "2"


def test_rust_grpc_over_tls_verifies_the_server(grpc_tls_server, tls_ca):
    def harness(tls: TlsSettings) -> PluginHarness:
        return PluginHarness(RUST_CALLOUTS, configuration="mode=grpc cluster=g",
                             clusters=[Cluster("g", (grpc_tls_server.endpoint,), tls=tls)])

    with harness(TlsSettings(ca_file=tls_ca.ca_file, sni="localhost")) as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-grpc-message", "sealed")], end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1] == "grpc: reply size=6 message=sealed"
    with harness(TlsSettings(ca_file=tls_ca.other_ca_file, sni="localhost")) as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-grpc-message", "sealed")], end_stream=True)
        assert h.settle(15)
        assert h.logs("info")[-1].startswith("grpc: failed status=14 get_status=14 message=")
        assert local(s)[0] == 503
    assert grpc_tls_server.calls == 1
