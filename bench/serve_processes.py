"""`pyproxywasm serve --processes N` under wrk, with a shared-data counter plugin.

    python -m bench.serve_processes [--duration 10] [--connections 16]

`serve` (the CLI, in its own process tree) answers a direct_response behind the committed
Go test filter in `shared metrics` mode: every request increments one shared-data key in
a CAS loop (and a counter metric). Rows, from one invocation: 1 process with the
in-process store (today's default), 1 process on the shared-memory backend, 2 processes
on shared memory (the `--processes` default), 2 processes each with its own store
(`--shared-state memory`). Each row is one `wrk -t1 -c<connections> -d<duration>s`
run after a 1 s warm-up; CPU per request is the whole process tree's (supervisor and
workers, from /proc); "counted" is the admin's summed `requests_total` against wrk's
request count (wrk does not count the requests still in flight when it stops).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

from bench.serve_wrk import cpu_seconds, wrk

ROOT = pathlib.Path(__file__).resolve().parent.parent
COUNTER = ROOT / "tests" / "plugins" / "go" / "httpfilter.wasm"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
LOCAL = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}


def config() -> dict:
    filt = {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "shared metrics"},
            "vm_config": {"code": {"local": {"filename": str(COUNTER)}}}}}}
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    return {"static_resources": {"listeners": [{
        "name": "main", "address": LOCAL, "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": "b", "http_filters": [filt, {"name": "envoy.filters.http.router"}],
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}}}]}]}],
        "clusters": []}, "admin": {"address": LOCAL}}


def tree(pid: int) -> list[int]:
    """pid and its live children."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def run(cfg: str, args: list[str], duration: int, connections: int) -> dict:
    p = subprocess.Popen([sys.executable, "-m", "pyproxywasm", "serve", cfg, "--log-level", "warning", *args],
                         stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("serve did not start")
            lines.append(line)
        text = "".join(lines)
        port = int(re.search(r"main: http://127.0.0.1:(\d+)", text).group(1))
        admin = int(re.search(r"admin: http://127.0.0.1:(\d+)", text).group(1))
        wrk(port, 1, connections)  # warm-up: VMs, pools, caches
        pids = tree(p.pid)
        cpu0 = sum(cpu_seconds(x) for x in pids)
        before = _counted(admin)
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
        cpu = sum(cpu_seconds(x) for x in pids) - cpu0
        total = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50 = re.search(r"50%\s+(\S+)", out).group(1)
        p99 = re.search(r"99%\s+(\S+)", out).group(1)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {"rps": rps, "p50": p50, "p99": p99, "requests": total, "counted": _counted(admin) - before,
                "cpu_us": cpu / total * 1e6 if total else 0.0, "non2xx": int(errors.group(1)) if errors else 0}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _counted(admin: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=10).read().decode()
    m = re.search(r"^requests_total: (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config(), f)
    rows = []
    try:
        for name, args in (("1 process, in-process shared data", []),
                           ("1 process, shared memory", ["--shared-state", "shm"]),
                           ("2 processes, shared memory (default)", ["--processes", "2"]),
                           ("2 processes, each its own store", ["--processes", "2", "--shared-state", "memory"])):
            rows.append((name, run(f.name, args, a.duration, a.connections)))
    finally:
        os.unlink(f.name)
    print(f"\nwrk -t1 -c{a.connections} -d{a.duration}s, {os.cpu_count()} cores; Go filter `shared metrics`, "
          "direct_response\n")
    print("| setup | req/s | p50 | p99 | CPU per request (all processes) | counted / wrk's requests |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        bad = f" ({r['non2xx']} non-2xx)" if r["non2xx"] else ""
        print(f"| {name} | {r['rps']:.0f}{bad} | {r['p50']} | {r['p99']} | {r['cpu_us']:.0f} µs | "
              f"{r['counted']} / {r['requests']} |")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
