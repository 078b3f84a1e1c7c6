"""One process of the shared-memory tests (tests/test_shm.py runs several at once).

python shm_worker.py MODE SEGMENT SIZE NAMESPACE PLUGIN_DIR [ARGS...], run from outside the
checkout. Every process uses vm_id "mp" in NAMESPACE, its state in SharedMemory(SEGMENT).
Modes:
  cas THREADS N [AT]   THREADS worker threads each make N guest CAS increments of "ctr"
                       (cas_loop.wasm), starting at time.time() AT if given; prints "done"
                       (and the seconds it took on stderr).
  produce ID N         a guest producer enqueues N items (queue_pc.wasm, x-p = ID) on
                       ("mp", "items"); prints "done <refused>".
  consume TOTAL        registers the consumer of "items" (a singleton) and prints "ready";
                       prints one JSON line of what it received once TOTAL items came (or
                       after 60 s): [[producer, seq, on_owner_thread], ...].
  hang                 registers the consumer, prints "ready", then sleeps (to be killed).
  hammer               writes 1 MiB values to "big" in a loop (prints "running" first).
"""
from __future__ import annotations

import json
import pathlib
import struct
import sys
import threading
import time

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.backends import SharedMemory

REQUEST = [(":method", "GET"), (":path", "/"), (":authority", "x"), (":scheme", "http")]


def main() -> None:
    mode, seg, size, ns, plugins = sys.argv[1:6]
    args = sys.argv[6:]
    backend = SharedMemory(seg, size=int(size))
    wat = pathlib.Path(plugins)
    if mode == "cas":
        threads, n = int(args[0]), int(args[1])
        vm = VmConfig(wat / "cas_loop.wasm", vm_id="mp")
        with Host([PluginConfig(vm, deadline_ms=None)], concurrency=threads, namespace=ns,
                  shared_state=backend) as host:
            def run() -> None:
                s = host.plugins[0].http_stream()
                s.send_request_headers(REQUEST + [("x-n", str(n)), ("x-key", "ctr")],
                                       end_stream=True)
                s.finish()

            if len(args) > 2:  # a start time (time.time()) shared with other processes
                late = time.time() - float(args[2])
                if late > 0:
                    raise SystemExit(f"started {late:.3f} s after the common start")
                time.sleep(-late)
            start = time.perf_counter()
            for f in [w.call(run) for w in host.workers]:
                f.result(300)
            took = time.perf_counter() - start
        print("done", flush=True)
        print(f"took {took:.6f}", file=sys.stderr, flush=True)  # for bench/
    elif mode == "produce":
        pid, n = args[0], int(args[1])
        vm = VmConfig(wat / "queue_pc.wasm", vm_id="mp")
        with Host([PluginConfig(vm, configuration="p", deadline_ms=None)], namespace=ns,
                  shared_state=backend) as host:
            s = host.plugins[0].http_stream()
            s.send_request_headers(REQUEST + [("x-n", str(n)), ("x-p", pid)], end_stream=True)
            s.finish()
        print("done", flush=True)
    elif mode in ("consume", "hang"):
        total = int(args[0]) if args else 0
        got: list[list[int]] = []
        done = threading.Event()

        def consumed(item: bytes) -> None:  # items may come while the Host is being made
            producer, seq = struct.unpack("<II", item)
            got.append([producer, seq, threading.get_ident()])
            if len(got) >= total:
                done.set()

        from pyproxywasm import trace

        vms = []

        def on_vm(v: object) -> None:  # the ABI trace counts on_queue_ready callbacks
            trace.enable(v, 1 << 20)  # type: ignore[arg-type]
            vms.append(v)

        vm = VmConfig(wat / "queue_pc.wasm", vm_id="mp")
        with Host([PluginConfig(vm, configuration="c", singleton=True)], concurrency=1,
                  namespace=ns, shared_state=backend, on_vm=on_vm,
                  foreign_functions={"consumed": consumed}) as host:
            assert host._main is not None
            owner = host._main.ident
            print("ready", flush=True)
            if mode == "hang":
                time.sleep(3600)
            done.wait(60)
            time.sleep(0.3)  # nothing more may come

            def count() -> int:
                return sum(1 for v in vms for r in trace.read(v)[0]  # type: ignore[arg-type]
                           if r.kind == "callback" and r.name == "proxy_on_queue_ready")

            ready = host._main.call(count).result(10)
        print(json.dumps({"items": [[p, q, int(t == owner)] for p, q, t in got],
                          "on_queue_ready": ready}), flush=True)
    elif mode == "wsgi":
        # The README's recipe: the middleware makes its Host in this process.
        from wsgiref.util import setup_testing_defaults

        from pyproxywasm.adapters import ProxyWasmWSGIMiddleware

        def app(environ, start_response):  # type: ignore[no-untyped-def]
            start_response("200 OK", [("content-type", "text/plain")])
            return [b"ok"]

        cfg = PluginConfig(VmConfig(wat / "cas_loop.wasm", vm_id="mp"), deadline_ms=None)
        mw = ProxyWasmWSGIMiddleware(app, plugins=[cfg],
                                     host_options={"shared_state": backend, "namespace": ns})
        for _ in range(int(args[0])):
            env: dict[str, object] = {"HTTP_X_N": "100", "HTTP_X_KEY": "ctr"}
            setup_testing_defaults(env)
            body = b"".join(mw(env, lambda status, headers, exc=None: None))
            assert body == b"ok", body
        mw.close()
        print("done", flush=True)
    elif mode == "hammer":
        with Host([], namespace=ns, shared_state=backend) as host:
            print("running", flush=True)
            values = [i.to_bytes(8, "little") * (1 << 17) for i in range(1, 9)]
            while True:  # most of the time goes to the 1 MiB copy, under the shard's lock
                for v in values:
                    host.state.set_shared_data("big", v, vm_id="mp")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
