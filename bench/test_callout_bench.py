"""Outbound calls: the host's overhead on one proxy_http_call round trip, against the same
request made directly with the same client in this run, and callouts/s with two workers."""
from __future__ import annotations

import pathlib
import sys
import threading
import time

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib
from pyproxywasm.net import Cluster
from pyproxywasm.net.http_client import HttpClient
from pyproxywasm.net.loop import IoLoop

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import start_http1  # noqa: E402

CALLOUT = ROOT / "tests" / "plugins" / "wat" / "callout.wasm"
CALL = [(":method", "GET"), (":path", "/"), (":authority", "bench"), ("x-call", "h")]
HEADERS = [(b":method", b"GET"), (b":path", b"/check"), (b":authority", b"svc"),
           (b"content-length", b"4")]


def test_http_call_round_trip(benchmark, record):
    """One request through the callout plugin: headers, pause, the call, the answer
    delivered on this thread's dispatcher, resume, teardown. The direct figure is the
    same request with the same client from the same thread, waiting on its future."""
    server = start_http1()
    cluster = Cluster("svc", (server.endpoint,))
    try:
        with Host([PluginConfig(VmConfig(CALLOUT))], clusters=[cluster]) as host:
            plugin = host.plugins[0]
            client = HttpClient(IoLoop.shared())

            def direct() -> None:
                IoLoop.shared().submit(client.request(cluster, HEADERS, b"ping", [], 5)).result()

            def through_host() -> None:
                s = plugin.http_stream()
                s.send_request_headers(CALL, end_stream=True)
                s.wait(5)
                s.finish()

            for _ in range(200):  # warm both paths, interleaved
                direct()
                through_host()
            rounds = 7
            t_direct, t_host = [], []
            for _ in range(rounds):  # interleaved, so both see the same machine
                start = time.perf_counter()
                for _ in range(200):
                    direct()
                t_direct.append((time.perf_counter() - start) / 200)
                start = time.perf_counter()
                for _ in range(200):
                    through_host()
                t_host.append((time.perf_counter() - start) / 200)
            benchmark.pedantic(through_host, rounds=50, iterations=1)
            record("callout_direct", sorted(t_direct)[rounds // 2])
            record("callout_host", sorted(t_host)[rounds // 2])
            IoLoop.shared().submit(client.close()).result()
    finally:
        server.stop()


def test_callouts_per_second_two_workers(benchmark, record):
    """Streams each paused on one call, 500 per worker, all in flight at once."""
    server = start_http1()
    cluster = Cluster("svc", (server.endpoint,), max_connections=64)
    try:
        with Host([PluginConfig(VmConfig(CALLOUT))], concurrency=2, clusters=[cluster]) as host:
            def start(n: int, done: threading.Event) -> list:
                """On a worker: n streams, each paused on its call; a watcher per stream
                counts the answers that resume them (no polling)."""
                left = [n]
                d = host.dispatcher  # this worker's
                out = []

                def resumed() -> None:
                    left[0] -= 1
                    if not left[0]:
                        done.set()

                for _ in range(n):
                    s = host.plugins[0].http_stream()
                    s.send_request_headers(CALL, end_stream=True)
                    d.watch(lib.pw_vm_key(s._vm), s.context_id, resumed)
                    out.append(s)
                return out

            def run() -> float:
                events = [threading.Event() for _ in host.workers]
                t0 = time.perf_counter()
                batches = [w.call(start, 500, e) for w, e in zip(host.workers, events)]
                streams = [b.result() for b in batches]
                for e in events:
                    assert e.wait(60)
                rate = 1000 / (time.perf_counter() - t0)
                for w, ss in zip(host.workers, streams):
                    w.call(lambda ss=ss: [s.finish() for s in ss]).result()
                return rate

            run()
            rates = [run() for _ in range(3)]
            benchmark.pedantic(run, rounds=1, iterations=1)
            record("callouts_per_s", sorted(rates)[1])
    finally:
        server.stop()
