"""The Redis shared-state backend: guest CAS increments/s and queue items/s on Redis against
the in-process store in the same run, and the latency of one shared-state operation on
Redis (p50/p99, µs). A redis-server is started on a free 127.0.0.1 port for the run (no
persistence); without the binary or without Redis support in the build, these skip."""
from __future__ import annotations

import pathlib
import sys
import time
from typing import Iterator

import pytest

from cas_jobs import time_cas_workers

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import ffi, lib
from pyproxywasm.backends import InProcess, Redis
from pyproxywasm.pairs import encode_pairs

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAT = ROOT / "tests" / "plugins" / "wat"
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import MISSING, RedisServer  # noqa: E402

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    yield server.url
    server.stop()


def _backend(kind: str, url: str, prefix: str):  # type: ignore[no-untyped-def]
    return InProcess() if kind == "inprocess" else Redis(url, prefix=prefix, timeout=1.0)


@pytest.mark.parametrize("kind", ["inprocess", "redis"])
@pytest.mark.parametrize("threads", [1, 2])
def test_redis_cas_throughput(benchmark, record, redis_url, kind, threads):
    """Guest CAS increments (cas_loop: get + set with the cas, retried) per second, each
    thread on its own key."""
    n = 200_000 if kind == "inprocess" else 3_000
    cfg = PluginConfig(VmConfig(WAT / "cas_loop.wasm", vm_id="cas-bench"), deadline_ms=None)
    with Host([cfg], concurrency=threads, namespace=f"rb-{kind}-{threads}",
              shared_state=_backend(kind, redis_url, f"bench{threads}")) as host:
        t = time_cas_workers(benchmark, host, n)
    record(f"redis_cas_{kind}_{threads}", threads * n / t)


@pytest.mark.parametrize("kind", ["inprocess", "redis"])
def test_redis_queue_throughput(benchmark, record, redis_url, kind):
    """Items from a producer guest on a worker to a singleton consumer guest on the main
    thread (enqueue, notification, dequeue), until the queue is drained."""
    n = 100_000 if kind == "inprocess" else 3_000
    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="queue-bench")
    with Host([PluginConfig(vm, root_id="c", configuration="C", singleton=True),
               PluginConfig(vm, root_id="p", configuration="p", deadline_ms=None)],
              concurrency=1, namespace=f"rq-{kind}",
              shared_state=_backend(kind, redis_url, "benchq")) as host:
        producer = host.plugin("p")
        req = encode_pairs([(":path", "/"), ("x-n", str(n)), ("x-p", "0")])

        def produce() -> None:
            s = producer.http_stream()
            s.send_request_headers(req, True)
            s.finish()

        def produce_and_drain() -> float:
            start = time.perf_counter()
            host.workers[0].call(produce).result(600)
            while host.state.queue_size("items", "queue-bench"):
                time.sleep(0.0005)
            return time.perf_counter() - start

        t = min(produce_and_drain() for _ in range(3))
        benchmark.pedantic(produce_and_drain, rounds=1)
    record(f"redis_queue_{kind}", n / t)


def _percentiles(samples: list[int]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] / 1e3, s[min(len(s) - 1, int(len(s) * 0.99))] / 1e3


def test_redis_op_latency(benchmark, record, report, redis_url):
    """One shared-state operation through the C core on Redis, as a hostcall makes it (the
    same backend call; timed from Python around one cffi call, which adds ~0.3 µs)."""
    ns, vid = b"lat", b"lat"
    rounds = 3_000
    with Host([], namespace="lat", shared_state=Redis(redis_url, prefix="lat")):
        out, n, cas = ffi.new("uint8_t **"), ffi.new("size_t *"), ffi.new("uint32_t *")
        value = b"x" * 64
        assert lib.pw_shared_set(ns, 3, vid, 3, b"k", 1, value, len(value), 0) == 0
        get, cset = [], []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            lib.pw_shared_get(ns, 3, vid, 3, b"k", 1, out, n, cas)
            t1 = time.perf_counter_ns()
            lib.pw_bytes_free(out[0])
            lib.pw_shared_set(ns, 3, vid, 3, b"k", 1, value, len(value), cas[0])
            t2 = time.perf_counter_ns()
            get.append(t1 - t0)
            cset.append(t2 - t1)
        benchmark.pedantic(lambda: lib.pw_shared_get(ns, 3, vid, 3, b"k", 1, out, n, cas),
                           rounds=200)
    g50, g99 = _percentiles(get)
    s50, s99 = _percentiles(cset)
    record("redis_get_p50", g50)
    record("redis_set_p50", s50)
    report(f"Redis get (HMGET):            p50 {g50:7.1f} µs   p99 {g99:7.1f} µs")
    report(f"Redis set with cas (EVALSHA): p50 {s50:7.1f} µs   p99 {s99:7.1f} µs")
