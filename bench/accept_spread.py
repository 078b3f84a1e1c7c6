"""How two worker processes share a listening port: SO_REUSEPORT sockets (one per process,
what `serve --processes N` does) vs one socket bound in the parent and inherited (what
gunicorn and `uvicorn --workers` do).

    python -m bench.accept_spread [--duration 3] [--connections 16]

Each worker is a uvloop asyncio server answering a tiny HTTP response and counting the
connections it accepted and the requests it served; wrk drives them with keep-alive
connections and then with `connection: close` (a new connection per request). Prints each
worker's share of connections and requests per mode.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

WORKER = r"""
import asyncio, os, signal, socket, sys, uvloop
fd = int(sys.argv[1]); port = int(sys.argv[2])
if fd < 0:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port)); s.listen(1024)
else:
    s = socket.socket(fileno=fd)
s.setblocking(False)
conns = reqs = 0
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
class P(asyncio.Protocol):
    def connection_made(self, t):
        global conns; conns += 1; self.t = t; self.buf = b""
    def data_received(self, d):
        global reqs
        self.buf += d
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            reqs += 1
            self.t.write(RESP)
            if b"onnection: close" in head or b"onnection: Close" in head:
                self.t.close(); return
async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    srv = await loop.create_server(P, sock=s)
    print("ready", flush=True)
    await stop.wait()
    print(conns, reqs, flush=True)
uvloop.run(main())
"""


def wrk(port: int, duration: int, connections: int, close: bool) -> None:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if close:
        args += ["-H", "Connection: close"]
    subprocess.run(args + [f"http://127.0.0.1:{port}/"], capture_output=True, check=True)


def run(mode: str, duration: int, connections: int, close: bool) -> list[tuple[int, int]]:
    parent = socket.socket()
    parent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    parent.bind(("127.0.0.1", 0))
    port = parent.getsockname()[1]
    fds: list[int] = []
    if mode == "inherited":
        parent.listen(1024)
        fds = [parent.fileno()]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(fds[0] if fds else -1), str(port)],
                              stdout=subprocess.PIPE, text=True, pass_fds=fds) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        wrk(port, duration, connections, close)
    finally:
        out = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
            assert p.stdout is not None
            line = p.stdout.readline().split()
            out.append((int(line[0]), int(line[1])) if len(line) == 2 else (0, 0))
            p.wait(10)
        parent.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    a = ap.parse_args()
    print(f"wrk -t1 -c{a.connections} -d{a.duration}s, 2 worker processes, {os.cpu_count()} cores\n")
    print("| listening socket | client | connections per worker | requests per worker | busier worker's share |")
    print("|---|---|---|---|---|")
    for mode in ("SO_REUSEPORT", "inherited"):
        for close in (False, True):
            r = run(mode, a.duration, a.connections, close)
            total = sum(x[1] for x in r) or 1
            share = max(x[1] for x in r) / total
            print(f"| {mode} | {'connection: close' if close else 'keep-alive'} | "
                  f"{r[0][0]} / {r[1][0]} | {r[0][1]} / {r[1][1]} | {share:.0%} |")


if __name__ == "__main__":
    main()
