"""PluginHarness(workers=N): Envoy's threads under the test's control. Each worker has its
own VMs; the main thread runs the singleton services; all are on the harness's virtual
clock, and a thread runs only what the test hands it, so cross-thread behaviour (a producer
on a worker and its consumer on the main thread, shared data written from two workers, a
call answered on the worker that made it) is reproducible. Real plugins: the Go SDK's
httpfilter and callouts, and the WAT producer/consumer."""
from __future__ import annotations

import json
import struct
import threading
import time

import pytest
from conftest import PLUGINS

from pyproxywasm.abi import Status
from pyproxywasm.testing import PluginHarness, WorkerStream

GO_HTTP = PLUGINS / "go" / "httpfilter.wasm"
GO_CALLOUTS = PLUGINS / "go" / "callouts.wasm"
GO_TCP = PLUGINS / "go" / "tcpfilter.wasm"
QUEUE_PC = PLUGINS / "wat" / "queue_pc.wasm"
GET = [(":method", "GET"), (":path", "/"), (":authority", "a.example")]


def test_ticks_fire_on_every_worker_only_when_the_clock_advances():
    with PluginHarness(GO_HTTP, configuration="tick=100", workers=2) as h:
        assert h.logs("info") == ["vm_start: ", "configure : tick=100"] * 2  # one per worker
        h.clear_logs()
        assert h.metric("ticks") == 0
        time.sleep(0.3)  # three periods of real time: the workers stay idle
        assert h.dispatch() == 0 and h.metric("ticks") == 0 and h.logs("info") == []
        assert h.advance(250) == 4  # two roots (one per worker), two ticks each
        assert h.metric("ticks") == 4
        assert sorted(h.logs("info")) == ["tick 1", "tick 1", "tick 2", "tick 2"]
        h.advance(50)  # at 300 ms
        assert h.metric("ticks") == 6
        # each worker's root counts its own ticks
        assert sorted(h.logs("info"))[-2:] == ["tick 3", "tick 3"]


def test_a_producer_on_a_worker_feeds_the_consumer_on_the_main_thread():
    consumed: list[tuple[str, int, int]] = []

    def record(item: bytes) -> None:
        producer, seq = struct.unpack("<II", item)
        consumed.append((threading.current_thread().name, producer, seq))

    with PluginHarness(QUEUE_PC, workers=2, foreign_functions={"consumed": record}, plugins=[
            dict(name="consumer", configuration="c", singleton=True),
            dict(name="producer", configuration="p")]) as h:
        producer = h.plugins[1]
        with h.http(producer, worker=0) as s:
            assert isinstance(s, WorkerStream) and s.worker == 0
            s.send_request_headers(GET + [("x-n", "3"), ("x-p", "7")], end_stream=True)
            assert s.request_complete
        # posted to the consumer's thread, not delivered: the test decides when
        assert consumed == [] and h.queue_size("items") == 3
        h.dispatch()
        assert consumed == [("pyproxywasm-main", 7, 0), ("pyproxywasm-main", 7, 1),
                            ("pyproxywasm-main", 7, 2)]
        assert h.queue_size("items") == 0
        with h.http(producer, worker=1) as s:
            s.send_request_headers(GET + [("x-n", "2"), ("x-p", "8")], end_stream=True)
        with h.http(producer, worker=0) as s:
            s.send_request_headers(GET + [("x-n", "1"), ("x-p", "9")], end_stream=True)
        assert len(consumed) == 3
        h.dispatch()
        assert consumed[3:] == [("pyproxywasm-main", 8, 0), ("pyproxywasm-main", 8, 1),
                                ("pyproxywasm-main", 9, 0)]


def test_shared_data_cas_across_workers():
    with PluginHarness(GO_HTTP, configuration="shared", workers=2) as h:
        counts = []
        for worker in (0, 1, 0, 1):
            with h.http(worker=worker) as s:
                s.send_request_headers(GET, end_stream=True)
                counts.append(s.request_headers.get("x-count"))
        assert counts == ["1", "2", "3", "4"]
        seen = h.shared_data("counter")
        assert seen is not None and seen.value == b"4"
        with h.http(worker=1) as s:  # another worker writes after our read
            s.send_request_headers(GET, end_stream=True)
            assert s.request_headers.get("x-count") == "5"
        assert h.set_shared_data("counter", b"99", cas=seen.cas) == Status.CAS_MISMATCH
        now = h.shared_data("counter")
        assert now is not None and now.value == b"5"
        assert h.set_shared_data("counter", b"99", cas=now.cas) == Status.OK
        with h.http(worker=0) as s:
            s.send_request_headers(GET, end_stream=True)
            assert s.request_headers.get("x-count") == "100"


def test_a_call_answer_waits_on_its_worker_until_dispatch():
    config = json.dumps({"mode": "auth", "cluster": "auth", "path": "/check"})
    with PluginHarness(GO_CALLOUTS, configuration=config, workers=2) as h:
        s = h.http(worker=1)
        s.send_request_headers(GET + [("x-user", "alice")], end_stream=True)
        assert s.request_paused
        (call,) = h.http_calls
        assert h.calls_in_flight() == 1
        call.respond(200, {"x-auth-user": "bob"})
        assert "auth: allowed user=bob" not in h.logs("info")  # posted to worker 1, waiting
        s.refresh()
        assert s.request_paused
        assert h.dispatch() == 1
        assert "auth: allowed user=bob" in h.logs("info")
        s.refresh()
        assert not s.request_paused and s.request_headers.get("x-auth-user") == "bob"
        assert h.calls_in_flight() == 0
        s.finish()


def test_a_call_timeout_fires_on_the_virtual_clock_on_its_worker():
    config = json.dumps({"mode": "auth", "cluster": "auth", "timeout_ms": 500})
    with PluginHarness(GO_CALLOUTS, configuration=config, workers=1) as h:
        s = h.http(worker=0)
        s.send_request_headers(GET + [("x-user", "alice")], end_stream=True)
        h.advance(499)
        s.refresh()
        assert s.request_paused and len(h.http_calls) == 1
        h.advance(1)
        assert h.http_calls == [] and h.calls_in_flight() == 0
        assert h.logs("info")[-1] == "auth: callout failed"
        s.refresh()
        assert s.local_response.status == 503
        s.finish()


def test_a_paused_connection_on_a_worker_resumes_at_its_tick():
    with PluginHarness(GO_TCP, configuration="resume tick=100", workers=2) as h:
        with h.tcp(worker=1) as c:
            assert c.send_downstream(b"please pause") == 1  # Action.PAUSE
            h.advance(99)
            c.refresh()
            assert c.downstream_paused
            h.advance(1)  # worker 1's root ticks and continues its connection
            c.refresh()
            assert not c.downstream_paused and c.take_downstream_data() == b"please pause"
        assert h.logs("info")[-1] == "tcp done"
        assert h.metric("tcp_bytes_total") == len(b"please pause")


def test_the_trace_covers_every_worker():
    with PluginHarness(GO_HTTP, configuration="tick=100", workers=2, trace=True) as h:
        h.advance(100)
        ticks = [r for r in h.trace() if r.kind == "callback" and r.name == "proxy_on_tick"]
        assert len(ticks) == 2  # one root per worker, each traced on its own thread
        assert h.format_trace().count("-> proxy_on_tick(") == 2


def test_streams_are_refused_on_a_worker_that_does_not_exist():
    with PluginHarness(GO_HTTP, workers=1) as h:
        with pytest.raises(ValueError, match="no worker 1"):
            h.http(worker=1)
        assert h.run_on(0, threading.current_thread).name == "pyproxywasm-worker-0"
        assert h.run_on("main", threading.current_thread).name == "pyproxywasm-main"
    with PluginHarness(GO_HTTP) as h:
        with pytest.raises(ValueError, match="no worker 0"):
            h.http(worker=0)
