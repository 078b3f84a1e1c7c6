"""`pyproxywasm serve` under wrk: req/s and latency with and without a Wasm filter.

    python -m bench.serve_wrk [--duration 5] [--connections 16]

Starts an upstream (uvicorn + httptools + uvloop, a 2-byte answer) and then, one at a
time, `serve` in its own process in front of it: no filter, the minimal WAT filter
(tests/plugins/wat/bench_filter.wasm), the bundled Go filter (header_rewrite); then the
direct_response route alone with 1 and 2 workers (what scales). Each row is one wrk run
(`wrk -t1 -c<connections> -d<duration>s --latency`); all rows come from one invocation, so
they share the machine's conditions. Prints a Markdown table. Besides wrk's req/s and
latency, each row has the CPU time the measured process (serve, or the upstream alone) spent
per request (user + system, from /proc): on a shared machine that figure moves far less
than throughput does, and its difference between two rows is the per-request cost of what
differs (the filter, the client).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MINIMAL = ROOT / "tests" / "plugins" / "wat" / "bench_filter.wasm"
GO = ROOT / "pyproxywasm" / "examples" / "header_rewrite.wasm"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

UPSTREAM = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
            log_level="warning", access_log=False)
"""

SERVE = """
import sys, signal, threading
from pyproxywasm.serve import Server, load
s = Server(load(sys.argv[1]), concurrency=int(sys.argv[2]), client=sys.argv[3])
s.start()
print("ready", flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
s.stop()
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def config(port: int, upstream: int | None, wasm: pathlib.Path | None) -> dict:
    route = ({"route": {"cluster": "up"}} if upstream else
             {"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    filters = []
    if wasm is not None:
        filters.append({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"vm_config": {"code": {"local": {"filename": str(wasm)}}}}}})
    filters.append({"name": "envoy.filters.http.router"})
    clusters = [{"name": "up", "connect_timeout": "1s", "load_assignment": {"endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}] \
        if upstream else []
    return {"static_resources": {"listeners": [{
        "name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "b", "http_filters": filters, "route_config": {"virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **route}]}]}}}]}]}],
        "clusters": clusters}}


def _us(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process and its threads (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, duration: int, connections: int, pid: int | None = None) -> dict:
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _us(re.search(r"50%\s+(\S+)", out).group(1))
    p99 = _us(re.search(r"99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_us": p50, "p99_us": p99, "non2xx": int(errors.group(1)) if errors else 0,
            "cpu_us": cpu / total * 1e6 if pid and total else 0.0}


def run_serve(doc: dict, concurrency: int, client: str, port: int, duration: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    p = subprocess.Popen([sys.executable, "-c", SERVE, f.name, str(concurrency), client],
                         stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == b"ready"
        wrk(port, 1, connections)  # warm-up: VMs, pools, caches
        return wrk(port, duration, connections, p.pid)
    finally:
        p.terminate()
        p.wait(20)
        os.unlink(f.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    up_port = free_port()
    up = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)])
    rows: list[tuple[str, dict]] = []
    try:
        wait_port(up_port)
        wrk(up_port, 1, a.connections)
        rows.append(("upstream alone (uvicorn)", wrk(up_port, a.duration, a.connections, up.pid)))
        for name, wasm, client in (("serve → upstream, no filter", None, "net"),
                                   ("serve → upstream, minimal WAT filter", MINIMAL, "net"),
                                   ("serve → upstream, Go filter (header_rewrite)", GO, "net"),
                                   ("serve → upstream, no filter, httptools client", None, "httptools"),
                                   ("serve → upstream, Go filter, httptools client", GO, "httptools")):
            port = free_port()
            rows.append((name, run_serve(config(port, up_port, wasm), 1, client, port, a.duration, a.connections)))
        for workers in (1, 2):
            for name, wasm in (("no filter", None), ("Go filter", GO)):
                port = free_port()
                rows.append((f"serve direct_response, {name}, {workers} worker{'s' if workers > 1 else ''}",
                             run_serve(config(port, None, wasm), workers, "net", port, a.duration, a.connections)))
    finally:
        up.terminate()
        up.wait(10)
    print(f"\nwrk -t1 -c{a.connections} -d{a.duration}s, {os.cpu_count()} cores\n")
    print("| setup | req/s | p50 | p99 | CPU per request (the proxy's process) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        bad = f" ({r['non2xx']} non-2xx)" if r["non2xx"] else ""
        print(f"| {name} | {r['rps']:.0f}{bad} | {r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs | {r['cpu_us']:.0f} µs |")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
