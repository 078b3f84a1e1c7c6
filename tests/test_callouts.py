"""Outbound calls through the harness's recorded upstreams and the host's workers (the WAT
plugin tests/plugins/wat/callout.wat; real servers are in test_callouts_net.py)."""
from __future__ import annotations

import threading
import time

import pytest

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib
from pyproxywasm.net.recorded import CallRecorder
from pyproxywasm.testing import PluginHarness

from conftest import REQUEST, wat

CALL = REQUEST + [("x-call", "h")]


@pytest.fixture
def h():
    with PluginHarness(wat("callout")) as harness:
        yield harness


def test_auth_pattern_pauses_then_resumes_from_the_answer(h):
    s = h.http()
    assert s.send_request_headers(CALL, end_stream=True) == 1  # paused on the call
    assert s.request_paused and h.logs() == ["call 0"]
    (call,) = h.http_calls
    assert (call.cluster, call.method, call.path, call.authority) == ("svc", "GET", "/check", "svc")
    assert call.body == b"ping" and call.timeout_ms == 1000 and call.trailers == []
    call.respond(200, {"x-a": "1"}, b"ok")
    # Delivered to the root context, which switched to the stream and continued it.
    assert h.logs()[1:] == ["response 2", "response 2", "response 0", "status=200", "body=ok",
                            "get_status 0"]
    s.refresh()
    assert s.request_complete and not s.request_paused
    assert h.http_calls == []


def test_answer_with_trailers_and_local_reply(h):
    s = h.http()
    s.send_request_headers(CALL, end_stream=True)
    h.http_calls[0].respond(403, [("x-b", "2")], b"no", trailers=[("t", "1")])
    assert "response 1" in h.logs()  # one trailer
    reply = s.local_response
    assert reply.status == 403 and reply.body == b"denied"


def test_failure_delivers_no_headers_and_status_11(h):
    s = h.http()
    s.send_request_headers(CALL, end_stream=True)
    h.http_calls[0].fail("connection refused")
    assert h.logs()[1:] == ["response 0", "response 0", "response 0", "get_status 11"]
    s.refresh()
    assert s.request_complete


def test_timeout_fires_on_the_virtual_clock(h):
    s = h.http()
    s.send_request_headers(CALL, end_stream=True)
    h.advance(999)
    assert len(h.http_calls) == 1 and not s.refresh() & 64
    h.advance(1)
    assert h.http_calls == []
    assert h.logs()[-1] == "get_status 11"
    s.refresh()
    assert s.request_complete


def test_envoy_argument_checks():
    with PluginHarness(wat("callout"), clusters=["svc"]) as h:
        for mode, status in (("n", 2), ("m", 2)):  # unknown cluster; no :authority
            s = h.http()
            assert s.send_request_headers(REQUEST + [("x-call", mode)], end_stream=True) == 0
            assert h.logs()[-1] == f"call {status}"
        assert h.http_calls == []
        s = h.http()
        s.send_request_headers(REQUEST + [("x-call", "g")], end_stream=True)
        assert h.logs()[-1] == "grpc 0"


def test_grpc_unknown_cluster_is_parse_failure():
    with PluginHarness(wat("callout"), clusters=["other"]) as h:
        h.http().send_request_headers(REQUEST + [("x-call", "g")], end_stream=True)
        assert h.logs()[-1] == "grpc 4"


def test_grpc_unary_answer_and_failure(h):
    s = h.http()
    s.send_request_headers(REQUEST + [("x-call", "g")], end_stream=True)
    (g,) = h.grpc_calls
    assert (g.stream, g.service, g.method, g.message, g.timeout_ms) == (False, "pkg.Svc", "Do", b"hi", 500)
    g.respond(b"answer")
    assert h.logs()[-2:] == ["grpc-message 6", "message=answer"]
    assert s.refresh() & 64 and h.grpc_calls == []
    s = h.http()
    s.send_request_headers(REQUEST + [("x-call", "g")], end_stream=True)
    h.grpc_calls[0].close(14, "unavailable")
    assert h.logs()[-2:] == ["grpc-close 14", "get_status 14"]
    # a unary call times out as DEADLINE_EXCEEDED on the virtual clock
    s = h.http()
    s.send_request_headers(REQUEST + [("x-call", "g")], end_stream=True)
    h.advance(500)
    assert h.logs()[-2:] == ["grpc-close 4", "get_status 4"]


def test_grpc_stream_both_ways(h):
    s = h.http()
    s.send_request_headers(REQUEST + [("x-call", "s")], end_stream=True)
    (g,) = h.grpc_calls
    assert g.stream and g.method == "Chat"
    assert g.messages == [b"a", b"b"] and g.half_closed
    assert h.logs() == ["stream 0", "send 0", "send 0"]
    g.send_initial_metadata({"k": "v", "k2": "w"})
    g.send(b"xyz")
    g.send_trailing_metadata([("t", "1")])
    g.close(0)
    assert h.logs()[3:] == ["grpc-initial 2", "grpc-message 3", "message=xyz", "grpc-trailing 1",
                            "grpc-close 0", "get_status 0"]
    assert s.refresh() & 64


def test_root_delete_cancels_calls_in_flight(h):
    s = h.http()
    s.send_request_headers(CALL, end_stream=True)
    (call,) = h.http_calls
    calls = call._calls
    assert h.calls_in_flight() == 1
    assert h.plugin.close()  # on_done, on_delete: its calls are cancelled
    assert call.cancelled and h.http_calls == [] and h.calls_in_flight() == 0
    before = list(h.logs())
    calls.respond_http(call.token, [(":status", "200")], b"late")  # nothing reaches the guest
    h.dispatch()
    assert h.logs() == before


def test_unknown_token_answers_are_dropped(h):
    s = h.http()
    s.send_request_headers(CALL, end_stream=True)
    calls = h.http_calls[0]._calls
    calls.respond_http(12345, [(":status", "200")], b"")
    calls.respond_http(h.http_calls[0].token + 4, [(":status", "200")], b"")
    h.dispatch()
    assert h.logs() == ["call 0"]
    assert len(h.http_calls) == 1


def test_bound_on_calls_in_flight():
    rec = CallRecorder(None, time.time_ns)
    vm = VmConfig(wat("callout"))
    with Host([PluginConfig(vm)], call_recorder=rec, max_calls_in_flight=3) as host:
        p = host.plugins[0]
        statuses = []
        for _ in range(5):
            s = p.http_stream()
            statuses.append(s.send_request_headers(CALL, end_stream=True))
        assert statuses == [1, 1, 1, 0, 0]  # the 4th and 5th were refused
        assert len(rec.pending()) == 3
        assert lib.pw_vm_calls_in_flight(p.vm.ptr) == 3


def test_no_clusters_means_unknown_cluster():
    with Host([PluginConfig(VmConfig(wat("callout")))]) as host:
        s = host.plugins[0].http_stream()
        assert s.send_request_headers(CALL, end_stream=True) == 0  # BAD_ARGUMENT: continues


def test_workers_answer_on_the_calling_thread():
    """1,000 concurrent calls across two workers: each answer is delivered exactly once, on
    the worker whose VM made the call, and resumes its stream."""
    rec = CallRecorder(None, time.time_ns)
    vm = VmConfig(wat("callout"))
    # No per-call deadline: this is about where answers are delivered, and a CI run on the
    # shared VM once failed worker 0's VM mid-way with "deadline exceeded" in a callback
    # of microseconds (not reproduced in 20 runs under load; the likeliest cause is the
    # VM's own preemption counted as the thread's CPU time).
    with Host([PluginConfig(vm, deadline_ms=None)], concurrency=2, call_recorder=rec) as host:
        def start(n: int) -> list:
            streams = []
            for _ in range(n):
                s = host.plugins[0].http_stream()
                assert s.send_request_headers(CALL, end_stream=True) == 1
                streams.append(s)
            return streams

        per_worker = [w.call(start, 500).result() for w in host.workers]
        calls = rec.pending()
        assert len(calls) == 1000
        threads = {c._calls.dispatcher.thread for c in calls}
        assert threads == {w.ident for w in host.workers}
        # Answer from this (the test's) thread; each worker delivers on its own thread.
        for c in calls:
            c.respond(200, body=b"ok")

        def resumed(streams: list) -> int:
            return sum(1 for s in streams if s.refresh() & 64)

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # each worker's own loop delivers its answers
            counts = [w.call(resumed, s).result() for w, s in zip(host.workers, per_worker)]
            if counts == [500, 500]:
                break
            time.sleep(0.01)
        assert counts == [500, 500]
        assert all(lib.pw_vm_calls_in_flight(w.call(lambda: host.plugins[0].vm.ptr).result()) == 0
                   for w in host.workers)


def test_stream_wait_runs_the_dispatcher_until_resumed():
    rec = CallRecorder(None, time.time_ns)
    with Host([PluginConfig(VmConfig(wat("callout")))], call_recorder=rec) as host:
        s = host.plugins[0].http_stream()
        s.send_request_headers(CALL, end_stream=True)
        assert not s.wait(timeout=0.05)  # nobody answered
        (call,) = rec.pending()
        threading.Timer(0.05, call.respond, args=(200,)).start()  # answered from elsewhere
        assert s.wait(timeout=5)
        assert s.request_complete


def test_watchers_hear_of_resumed_streams():
    rec = CallRecorder(None, time.time_ns)
    with Host([PluginConfig(VmConfig(wat("callout")))], call_recorder=rec,
              manual_dispatch=True) as host:
        s = host.plugins[0].http_stream()
        s.send_request_headers(CALL, end_stream=True)
        seen = []
        d = host.dispatcher
        d.watch(lib.pw_vm_key(s._vm), s.context_id, lambda: seen.append(s.context_id))
        rec.pending()[0].respond(200)  # posted; delivered by this thread's run
        assert seen == [s.context_id]


def test_refused_calls_use_no_token():
    with PluginHarness(wat("callout"), clusters=["svc"]) as h:
        h.http().send_request_headers(REQUEST + [("x-call", "n")], end_stream=True)  # refused
        h.http().send_request_headers(CALL, end_stream=True)
        assert [c.token for c in h.http_calls] == [4]  # Envoy's first HTTP call token



def test_grpc_upstream_may_be_a_grpc_service_message():
    from pyproxywasm.net.outbound import grpc_service
    inner = b"\x0a\x02c1"  # EnvoyGrpc{cluster_name: "c1"}
    msg = b"\x0a" + bytes([len(inner)]) + inner + b"\x2a\x06\x0a\x01K\x12\x01v"  # + metadata K=v
    assert grpc_service(msg, "ignored") == ("c1", [(b"k", b"v")])
    assert grpc_service(b"plain_cluster", "plain_cluster") == ("plain_cluster", [])
    assert grpc_service(b"\x0a\x05\x0a\x09", "garbage") == ("garbage", [])  # truncated


DISPATCH_HTTP_CALL = r"""
(module
  (import "env" "proxy_dispatch_http_call"
    (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "svc")
  (data (i32.const 200) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\03\00\00\00:method\00GET\00:path\00/\00:authority\00svc\00")
  (func (export "proxy_abi_version_0_1_0"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
    (i32.eqz (call $call (i32.const 100) (i32.const 3) (i32.const 200) (i32.const 63)
                         (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                         (i32.const 500) (i32.const 300)))))
"""


def test_the_0_1_0_name_proxy_dispatch_http_call():
    import wasmtime
    with PluginHarness(wasmtime.wat2wasm(DISPATCH_HTTP_CALL)) as h:
        s = h.http()
        assert s.send_request_headers(REQUEST, end_stream=True) == 1  # paused on its call
        (call,) = h.http_calls
        assert (call.cluster, call.path, call.timeout_ms) == ("svc", "/", 500)


def test_allow_any_host_keeps_a_bounded_set_of_addresses():
    from pyproxywasm.net import outbound
    out = outbound.Outbound()
    for i in range(outbound.MAX_DIRECT_HOSTS):
        assert out.resolve(f"127.0.0.1:{1000 + i}", allow_any_host=True) is not None
    assert out.resolve("127.0.0.1:1000", allow_any_host=True) is not None  # known: kept
    assert out.resolve("127.0.0.1:60000", allow_any_host=True) is None     # a new one: refused
