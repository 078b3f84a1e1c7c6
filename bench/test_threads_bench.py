"""Threads: scaling across workers, shared data and queue throughput, VM start, and the
on-disk compiled-module cache. Each figure is measured against its baseline in this run."""
from __future__ import annotations

import pathlib
import tempfile
import time

import pytest

from cas_jobs import time_cas_workers

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib
from pyproxywasm.dispatch import Dispatcher
from pyproxywasm.host import Vm
from pyproxywasm.module import compile_module, forget_compiled
from pyproxywasm.pairs import encode_pairs

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAT = ROOT / "tests" / "plugins" / "wat"
GO_HTTP = ROOT / "tests" / "plugins" / "go" / "httpfilter.wasm"


def _run_requests(plugin, headers: bytes, count: int) -> None:
    for _ in range(count):
        s = plugin.http_stream()
        s.send_request_headers(headers, True)
        s.finish()


def _parallel(host: Host, workers: int, fn, *args) -> float:
    start = time.perf_counter()
    for f in [w.call(fn, *args) for w in host.workers[:workers]]:
        f.result(300)
    return time.perf_counter() - start


def test_thread_scaling(benchmark, record):
    """Requests through a Wasm-bound filter (5000 hostcalls each): the same total work on
    one worker, then split across two."""
    cfg = PluginConfig(VmConfig(WAT / "hostcall_loop.wasm", vm_id="scale"), configuration="5000")
    req = encode_pairs([(":path", "/")])
    total = 400
    with Host([cfg], concurrency=2) as host:
        plugin = host.plugins[0]
        _parallel(host, 2, _run_requests, plugin, req, 10)  # warm both workers
        one = min(_parallel(host, 1, _run_requests, plugin, req, total) for _ in range(3))
        two = min(_parallel(host, 2, _run_requests, plugin, req, total // 2) for _ in range(3))
        benchmark.pedantic(_parallel, args=(host, 2, _run_requests, plugin, req, total // 2), rounds=1)
    record("scale_1", one)
    record("scale_2", two)


@pytest.mark.parametrize("single_lock", [False, True], ids=["sharded", "one-mutex"])
def test_cas_throughput(benchmark, record, single_lock):
    """Guest CAS increments (get + set with cas, retried) on two threads, each on its own
    key; the baseline puts one mutex around the whole table."""
    n = 200_000
    cfg = PluginConfig(VmConfig(WAT / "cas_loop.wasm", vm_id="cas-bench"))
    lib.pw_shared_single_lock(single_lock)
    try:
        with Host([cfg], concurrency=2) as host:
            t = time_cas_workers(benchmark, host, n, timeout=300)
    finally:
        lib.pw_shared_single_lock(0)
    record("cas_one_mutex" if single_lock else "cas_sharded", 2 * n / t)


def test_queue_throughput(benchmark, record):
    """Items from a producer on a worker to a singleton consumer on the main thread."""
    n = 100_000
    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="queue-bench")
    with Host([PluginConfig(vm, root_id="c", configuration="C", singleton=True),
               PluginConfig(vm, root_id="p", configuration="p")], concurrency=1) as host:
        qid = lib.pw_queue_resolve
        from pyproxywasm._binding import ffi

        out = ffi.new("uint32_t *")
        assert qid(b"", 0, b"queue-bench", 11, b"items", 5, out) == 0
        producer = host.plugin("p")
        req = encode_pairs([(":path", "/"), ("x-n", str(n)), ("x-p", "0")])

        def produce_and_drain():
            start = time.perf_counter()
            host.workers[0].call(_run_requests, producer, req, 1).result(300)
            while lib.pw_queue_size(out[0]) > 0:
                time.sleep(0.0005)
            return time.perf_counter() - start

        t = min(produce_and_drain() for _ in range(3))
        benchmark.pedantic(produce_and_drain, rounds=1)
    record("queue_items_per_s", n / t)


@pytest.mark.parametrize("plugin", ["bench_filter", "go_httpfilter"])
def test_vm_clone(benchmark, record, plugin):
    """A new VM (store + instance) from the pre-instantiated module, with WASI start-up."""
    code = (WAT / "bench_filter.wasm") if plugin == "bench_filter" else GO_HTTP
    compiled = compile_module(code.read_bytes())
    d = Dispatcher()
    cfg = VmConfig(code)
    vms = []

    def clone():
        vms.append(Vm(compiled, cfg, d, []))

    benchmark.pedantic(clone, rounds=30 if plugin == "go_httpfilter" else 300)
    for vm in vms:
        vm.close()
    d.close()
    record(f"clone_{plugin}", benchmark.stats.stats.median)


def test_module_cache(benchmark, record):
    """First start compiles the Go plugin (and stores it); a later process loads it."""
    wasm = GO_HTTP.read_bytes()
    with tempfile.TemporaryDirectory() as cache:
        forget_compiled()
        start = time.perf_counter()
        compile_module(wasm, cache)
        first = time.perf_counter() - start

        def cached():
            forget_compiled()
            compile_module(wasm, cache)

        benchmark.pedantic(cached, rounds=5)
    record("compile_first", first)
    record("compile_cached", benchmark.stats.stats.median)
