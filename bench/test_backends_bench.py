"""Shared-state backends: guest CAS increments/s and queue items/s on each backend
(pyproxywasm.backends), measured in this one run. The in-process store is the baseline;
the Redis backend adds itself to BACKENDS when a server is available."""
from __future__ import annotations

import os
import pathlib
import time
import uuid
from typing import Callable

import pytest

from cas_jobs import time_cas_workers

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib
from pyproxywasm.backends import Backend, InProcess, Redis, SharedMemory
from pyproxywasm.pairs import encode_pairs

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAT = ROOT / "tests" / "plugins" / "wat"

#: name → a fresh backend, and what to do after (remove a segment, flush a server).
BACKENDS: dict[str, tuple[Callable[[], Backend], Callable[[Backend], None]]] = {
    "inprocess": (InProcess, lambda b: None),
}
if hasattr(lib, "pw_shm_open"):
    def _unlink(b: Backend) -> None:
        assert isinstance(b, SharedMemory)
        try:
            os.unlink(f"/dev/shm/{b.name}")
        except FileNotFoundError:
            pass

    BACKENDS["shm"] = (lambda: SharedMemory(f"pwbench-{uuid.uuid4().hex[:10]}", size=64 << 20),
                       _unlink)

# Redis: a redis-server of this run on a free port (tests/redis_server.py), started when
# first used and stopped at the end of the module; a prefix per store.
import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from redis_server import MISSING, RedisServer  # noqa: E402

_redis: list[RedisServer] = []


def _redis_backend() -> Backend:
    if not _redis:
        _redis.append(RedisServer())
        _redis[0].start()
    return Redis(_redis[0].url, prefix=f"pwbench-{uuid.uuid4().hex[:10]}", timeout=1.0)


if MISSING is None:
    BACKENDS["redis"] = (_redis_backend, lambda b: None)


@pytest.fixture(scope="module", autouse=True)
def _stop_redis():
    yield
    for server in _redis:
        server.stop()
    _redis.clear()


#: Every increment or item is a round trip on Redis: fewer of them.
SCALE = {"redis": 40}


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_backend_cas(benchmark, record, kind):
    """Two workers, each `cas_loop.wasm` doing n get + set-with-cas increments of its key."""
    make, cleanup = BACKENDS[kind]
    backend = make()
    n = 100_000 // SCALE.get(kind, 1)
    cfg = PluginConfig(VmConfig(WAT / "cas_loop.wasm", vm_id="cas-bench"), deadline_ms=None)
    try:
        with Host([cfg], concurrency=2, namespace=f"bench-{kind}", shared_state=backend) as host:
            t = time_cas_workers(benchmark, host, n)
    finally:
        cleanup(backend)
    record(f"backend_cas_{kind}", 2 * n / t)


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_backend_queue(benchmark, record, kind):
    """A producer on a worker enqueues n items; a singleton consumer on the main thread
    drains them (one on_queue_ready per item)."""
    make, cleanup = BACKENDS[kind]
    backend = make()
    n = 50_000 // SCALE.get(kind, 1)
    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="queue-bench")
    try:
        with Host([PluginConfig(vm, root_id="c", configuration="C", singleton=True),
                   PluginConfig(vm, root_id="p", configuration="p", deadline_ms=None)],
                  concurrency=1, namespace=f"bench-q-{kind}", shared_state=backend) as host:
            qid = host.state.queue_id("items", "queue-bench")
            assert qid is not None
            producer = host.plugin("p")
            req = encode_pairs([(":path", "/"), ("x-n", str(n)), ("x-p", "0")])

            def run(plugin) -> None:
                s = plugin.http_stream()
                s.send_request_headers(req, True)
                s.finish()

            def produce_and_drain() -> float:
                start = time.perf_counter()
                host.workers[0].call(run, producer).result(600)
                while lib.pw_queue_size(qid) > 0:
                    time.sleep(0.0005)
                return time.perf_counter() - start

            t = min(produce_and_drain() for _ in range(3))
            benchmark.pedantic(produce_and_drain, rounds=1)
    finally:
        cleanup(backend)
    record(f"backend_queue_{kind}", n / t)


@pytest.mark.skipif("shm" not in BACKENDS, reason="no shm backend")
@pytest.mark.parametrize("procs", [1, 2])
def test_shm_processes_one_key(benchmark, record, procs):
    """Guest CAS increments of ONE key in shared memory: one process with two workers vs
    two processes with one worker each (the same total; every increment contends)."""
    import subprocess
    import sys
    import tempfile

    make, cleanup = BACKENDS["shm"]
    seg = make()
    assert isinstance(seg, SharedMemory)
    n = 200_000
    worker = ROOT / "tests" / "shm_worker.py"

    def run() -> float:
        at = time.time() + 4.0  # every process starts its increments then
        ps = [subprocess.Popen([sys.executable, str(worker), "cas", seg.name, str(seg.size),
                                "bench-procs", str(WAT), str(2 // procs), str(n), str(at)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tempfile.gettempdir()) for _ in range(procs)]
        took = []
        for p in ps:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            took.append(float(err.split("took ")[-1]))
        return max(took)

    try:
        t = min(run() for _ in range(2))
        benchmark.pedantic(run, rounds=1)
    finally:
        cleanup(seg)
    record(f"shm_one_key_{procs}p", 2 * n / t)
