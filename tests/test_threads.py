"""Threads: per-thread VMs, workers, singleton services, dispatchers, shared state across
threads. Real threads and real plugins; every wait is bounded."""
from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time

import pytest

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib
from pyproxywasm.testing import PluginHarness

from conftest import GO_HTTP, REQUEST, WAT, wait_for

CAS = VmConfig(WAT / "cas_loop.wasm", vm_id="cas-stress")


def one_request(plugin, headers):
    s = plugin.http_stream()
    s.send_request_headers(headers, end_stream=True)
    out = s.request_headers
    s.finish()
    return threading.get_ident(), id(plugin.vm), out


def test_workers_own_their_vms_and_roots(caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    cfg = PluginConfig(VmConfig(GO_HTTP, vm_id="workers"), root_id="w", configuration="headers")
    with Host([cfg], concurrency=2) as host:
        plugin = host.plugins[0]
        results = [w.call(one_request, plugin, REQUEST).result(10) for w in host.workers]
        threads = {r[0] for r in results}
        assert threads == {w.ident for w in host.workers}
        assert len({r[1] for r in results}) == 2  # a VM per worker
        assert all(r[2].get("x-wasm-req") == "w" for r in results)
    configured = [r for r in caplog.records if r.getMessage() == "configure w: headers"]
    assert {r.threadName for r in configured} == {"pyproxywasm-worker-0", "pyproxywasm-worker-1"}


def test_ticks_run_on_each_workers_thread(caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    cfg = PluginConfig(VmConfig(GO_HTTP, vm_id="ticks"), root_id="t", configuration="tick=10")
    with Host([cfg], concurrency=2):
        wait_for(lambda: {r.threadName for r in caplog.records if r.getMessage() == "tick 3"}
                 == {"pyproxywasm-worker-0", "pyproxywasm-worker-1"})


def test_cas_increments_across_threads_are_exact():
    workers, requests, per_request = 4, 5, 2000
    cfg = PluginConfig(CAS, root_id="cas")
    with Host([cfg], concurrency=workers) as host:
        zero = b"\0" * 8
        for key in [b"shared"] + [f"own-{i}".encode() for i in range(workers)]:
            lib.pw_shared_set(b"", 0, b"cas-stress", 10, key, len(key), zero, 8, 0)

        def job(i: int) -> None:
            for _ in range(requests):
                for key in ("shared", f"own-{i}"):
                    s = host.plugins[0].http_stream()
                    s.send_request_headers([(":path", "/"), ("x-n", str(per_request)), ("x-key", key)],
                                           end_stream=True)
                    s.finish()

        for f in [w.call(job, i) for i, w in enumerate(host.workers)]:
            f.result(60)
        value = lambda k: struct.unpack("<Q", host.state.shared_data(k, CAS.vm_id).value)[0]  # noqa: E731
        assert value("shared") == workers * requests * per_request
        for i in range(workers):
            assert value(f"own-{i}") == requests * per_request


def test_queue_from_every_worker_to_a_singleton_consumer():
    items_per_worker, workers = 3000, 3
    received: list[tuple[int, int, int]] = []

    def consumed(item: bytes) -> None:
        producer, seq = struct.unpack("<II", item)
        received.append((threading.get_ident(), producer, seq))

    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="queue-stress")
    # One on_queue_ready may drain thousands of items with a Python call each: on a loaded
    # machine that outlasts the default deadline, which is not what this test is about.
    consumer = PluginConfig(vm, root_id="consumer", configuration="c", singleton=True,
                            deadline_ms=None)
    producer = PluginConfig(vm, root_id="producer", configuration="p")
    with Host([consumer, producer], concurrency=workers,
              foreign_functions={"consumed": consumed}) as host:
        main = host._main.ident

        def produce(i: int) -> None:
            s = host.plugin("producer").http_stream()
            s.send_request_headers([(":path", "/"), ("x-n", str(items_per_worker)), ("x-p", str(i))],
                                   end_stream=True)
            s.finish()

        for f in [w.call(produce, i) for i, w in enumerate(host.workers)]:
            f.result(60)
        wait_for(lambda: len(received) >= workers * items_per_worker)
        time.sleep(0.05)
    assert len(received) == workers * items_per_worker  # nothing twice
    assert {t for t, _, _ in received} == {main}  # on_queue_ready ran on the owner's thread
    for p in range(workers):
        assert [seq for _, q, seq in received if q == p] == list(range(items_per_worker))


def test_queue_bound_refuses_and_keeps_what_it_has():
    lib.pw_queue_set_max_items(100)
    try:
        vm = VmConfig(WAT / "queue_pc.wasm", vm_id="queue-bound")
        with PluginHarness(vm.code, vm_id="queue-bound", configuration="C", root_id="c") as h:
            producer = h.add_plugin(configuration="p", root_id="p")
            s = h.http(producer)
            s.send_request_headers([(":path", "/"), ("x-n", "105"), ("x-p", "1")], end_stream=True)
            s.finish()
            assert h.queue_size("items") == 100
            assert h.logs("error").count("enqueue 10") == 5  # INTERNAL_FAILURE
            h.dispatch()
            assert h.queue_size("items") == 0
    finally:
        lib.pw_queue_set_max_items(0)


def test_shared_data_values_big_and_empty():
    with PluginHarness(WAT / "cas_loop.wasm", vm_id="values") as h:
        big = bytes(range(256)) * 4096 + b"!"  # 1 MiB + 1
        assert h.set_shared_data("big", big) == 0
        value, cas = h.shared_data("big").value, h.shared_data("big").cas
        assert value == big and cas > 0
        assert h.shared_data("missing") is None
        assert h.set_shared_data("empty", b"") == 0
        assert h.shared_data("empty").value == b""  # present and empty, not missing


def test_plain_threads_get_vms_and_autorun_delivery():
    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="autorun")
    received = []
    host = Host([PluginConfig(vm, root_id="consumer", configuration="c"),
                 PluginConfig(vm, root_id="producer", configuration="p")],
                foreign_functions={"consumed": lambda item: received.append(item)})
    try:
        def use():
            s = host.plugin("producer").http_stream()
            s.send_request_headers([(":path", "/"), ("x-n", "2"), ("x-p", "7")], end_stream=True)
            s.finish()
            # this thread has no loop: its pending notifications run when a stream starts
            host.plugin("producer").http_stream().finish()
            host.release_thread()

        t = threading.Thread(target=use)
        t.start()
        t.join(10)
        assert len(received) == 2
    finally:
        host.close()


def test_shutdown_waits_for_deferred_root_deletion(caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    with Host([PluginConfig(VmConfig(WAT / "semantics.wasm", vm_id="shutdown"))], concurrency=2):
        pass  # on_done returns false; the next tick calls proxy_done
    deleted = [r for r in caplog.records if r.getMessage() == "root deleted"]
    assert sorted(r.threadName for r in deleted) == ["pyproxywasm-worker-0", "pyproxywasm-worker-1"]


def test_asyncio_loop_serves_the_dispatcher(caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm")

    async def main():
        host = Host([PluginConfig(VmConfig(GO_HTTP, vm_id="asyncio"), root_id="a",
                                  configuration="tick=10")])
        detach = host.dispatcher.attach(asyncio.get_running_loop())
        for _ in range(200):
            if any(r.getMessage() == "tick 3" for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        detach()
        host.close()

    asyncio.run(main())
    assert any(r.getMessage() == "tick 3" for r in caplog.records)


def test_worker_errors_surface_at_start():
    from pyproxywasm import PluginStartError

    with pytest.raises(PluginStartError, match="proxy_on_configure returned false"):
        Host([PluginConfig(VmConfig(GO_HTTP), configuration="fail")], concurrency=2)


def test_a_threads_vms_go_when_the_thread_ends():
    cfg = PluginConfig(VmConfig(GO_HTTP, vm_id="thread-end"), root_id="e", configuration="headers")
    with Host([cfg]) as host:
        before = len(host._states)

        def use():
            one_request(host.plugins[0], REQUEST)
            assert len(host._states) == before + 1

        t = threading.Thread(target=use)
        t.start()
        t.join(10)
        assert len(host._states) == before  # freed on that thread as it ended
