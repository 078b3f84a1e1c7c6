"""The guest CAS benchmark the threads, backends and Redis benchmarks share: each worker of
a Host runs `cas_loop.wasm` (n get + set-with-cas increments of its own key, retried on a
mismatch) through one request, all workers at once."""
from __future__ import annotations

import time


def cas_job(plugin, key: str, n: int) -> None:  # type: ignore[no-untyped-def]
    """One request: n increments of `key` by the guest (on the calling worker)."""
    s = plugin.http_stream()
    s.send_request_headers([(":path", "/"), ("x-n", str(n)), ("x-key", key)], True)
    s.finish()


def time_cas_workers(benchmark, host, n: int, timeout: float = 600) -> float:  # type: ignore[no-untyped-def]
    """Seconds for every worker of `host` to make n increments of its own key at once: the
    best of three runs after a warm-up (one more run goes to pytest-benchmark's table)."""
    plugin = host.plugins[0]
    for i, w in enumerate(host.workers):
        w.call(cas_job, plugin, f"k{i}", 10).result()

    def run() -> float:
        start = time.perf_counter()
        for f in [w.call(cas_job, plugin, f"k{i}", n) for i, w in enumerate(host.workers)]:
            f.result(timeout)
        return time.perf_counter() - start

    t = min(run() for _ in range(3))
    benchmark.pedantic(run, rounds=1)
    return t
