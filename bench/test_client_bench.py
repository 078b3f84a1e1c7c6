"""Outbound clients: round-trip cost on 127.0.0.1, to choose the HTTP library and the loop.

The servers (tests/servers.py: HTTP/1.1 on h11, HTTP/2 on h2, gRPC on grpcio) run in a
child process, so the client's loop has a core and the GIL to itself. A contender is one
way of making a keep-alive request on a warm pooled connection; a batch is N sequential
requests. Each benchmark compares its contenders in the same rounds, one batch of each
per round in turn, so a load change on the (shared, noisy) machine hits all of them
alike. Per contender it records the median over rounds of
- the wall time per request, and
- the user CPU time of the client's loop thread per request (getrusage(RUSAGE_THREAD)):
  the client's own cost, without the server's, the wait, or the kernel's loopback
  delivery (which a send performs for the receiver too, and which dominates the wall
  time on a loaded machine).
Ratios between contenders of one run are the figures (bench/README.md); pytest-benchmark's
own table times a whole round of all contenders.
"""
from __future__ import annotations

import json
import pathlib
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Awaitable, Callable

import pytest

from pyproxywasm.net import Cluster
from pyproxywasm.net.grpc_client import GrpcClient
from pyproxywasm.net.http_client import HttpClient
from pyproxywasm.net.loop import IoLoop

ROOT = pathlib.Path(__file__).resolve().parent.parent
N = 100  # requests per batch
ROUNDS = 11

SERVERS = """
import json, sys
sys.path.insert(0, %r)
import servers
h1, h2, g = servers.start_http1(), servers.start_http2(), servers.GrpcServer()
print(json.dumps({"h1": h1.endpoint, "h2": h2.endpoint, "grpc": g.endpoint}), flush=True)
sys.stdin.read()
""" % str(ROOT / "tests")

GET = [(b":method", b"GET"), (b":path", b"/echo"), (b":authority", b"bench")]


@pytest.fixture(scope="module")
def upstreams():
    proc = subprocess.Popen([sys.executable, "-c", SERVERS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(10)


@pytest.fixture(scope="module")
def uv_io():
    """A uvloop loop on its own daemon thread, wrapped like the shared IoLoop."""
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True, name="bench-uvloop")
    t.start()
    yield IoLoop(loop, t)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def _user_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_utime


class Contender:
    """N sequential `await one()` on `io`'s loop, or, `from_outside`, N calls each
    submitted from this thread and waited for (what a VM thread does)."""

    def __init__(self, name: str, io: IoLoop, one: Callable[[], Awaitable[object]],
                 from_outside: bool = False) -> None:
        self.name, self.io, self.one, self.outside = name, io, one, from_outside
        self.wall: list[float] = []
        self.cpu: list[float] = []

    async def _batch(self) -> float:
        t0 = _user_cpu()
        for _ in range(N):
            await self.one()
        return _user_cpu() - t0

    def run(self, keep: bool = True) -> None:
        t0 = time.perf_counter()
        if self.outside:
            for _ in range(N):
                self.io.submit(self.one()).result(10)
            cpu = None
        else:
            cpu = self.io.submit(self._batch()).result(120)
        wall = time.perf_counter() - t0
        if keep:
            self.wall.append(wall / N)
            if cpu is not None:
                self.cpu.append(cpu / N)


def _compare(benchmark, record, contenders: list[Contender]) -> None:
    for c in contenders:
        c.run(keep=False)  # warm: connections made, code paths hot
    turn = [0]

    def one_round():
        k = turn[0] = turn[0] + 1
        for c in contenders[k % len(contenders):] + contenders[:k % len(contenders)]:
            c.run()
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    for c in contenders:
        record(c.name, statistics.median(c.wall))
        if c.cpu:
            record(c.name + "_cpu", statistics.median(c.cpu))


def _aiohttp(io: IoLoop, url: str):
    import aiohttp
    box = {}

    async def make():
        box["s"] = aiohttp.ClientSession()
    io.submit(make()).result(10)

    async def one():
        async with box["s"].get(url) as r:
            await r.read()
    return one, lambda: io.submit(box["s"].close()).result(10)


def _httpx(io: IoLoop, url: str, http2: bool = False):
    import httpx
    box = {}

    async def make():
        box["c"] = httpx.AsyncClient(http1=not http2, http2=http2)
    io.submit(make()).result(10)

    async def one():
        r = await box["c"].get(url)
        r.read()
    return one, lambda: io.submit(box["c"].aclose()).result(10)


def test_http1_clients(benchmark, record, upstreams):
    """HttpClient (aiohttp under it) vs bare aiohttp vs bare httpx, and HttpClient
    driven from another thread, all on the shared (asyncio) IoLoop."""
    io = IoLoop.shared()
    ours = HttpClient(io)
    c = Cluster("b1", (upstreams["h1"],))
    url = f"http://{upstreams['h1']}/echo"
    aio, aio_close = _aiohttp(io, url)
    hx, hx_close = _httpx(io, url)
    try:
        _compare(benchmark, record, [
            Contender("cl_h1_ours", io, lambda: ours.request(c, GET, b"", [], 5)),
            Contender("cl_h1_aiohttp", io, aio),
            Contender("cl_h1_httpx", io, hx),
            Contender("cl_h1_cross_thread", io, lambda: ours.request(c, GET, b"", [], 5),
                      from_outside=True),
        ])
    finally:
        aio_close()
        hx_close()
        io.submit(ours.close()).result(10)


def test_http2_clients(benchmark, record, upstreams):
    """HttpClient's HTTP/2 (h2 under it) vs httpx with http2=True."""
    pytest.importorskip("h2")
    io = IoLoop.shared()
    ours = HttpClient(io)
    c = Cluster("b2", (upstreams["h2"],), http2=True)
    hx, hx_close = _httpx(io, f"http://{upstreams['h2']}/echo", http2=True)
    try:
        _compare(benchmark, record, [
            Contender("cl_h2_ours", io, lambda: ours.request(c, GET, b"", [], 5)),
            Contender("cl_h2_httpx", io, hx),
        ])
    finally:
        hx_close()
        io.submit(ours.close()).result(10)


def test_loops(benchmark, record, upstreams, uv_io):
    """The same HttpClient and GrpcClient calls on an asyncio loop and on uvloop (this
    also checks that grpc.aio runs on uvloop)."""
    io = IoLoop.shared()
    h_a, h_u = HttpClient(io), HttpClient(uv_io)
    g_a, g_u = GrpcClient(io), GrpcClient(uv_io)
    c1 = Cluster("l1", (upstreams["h1"],))
    cg = Cluster("lg", (upstreams["grpc"],))
    try:
        _compare(benchmark, record, [
            Contender("cl_h1_ours_asyncio", io, lambda: h_a.request(c1, GET, b"", [], 5)),
            Contender("cl_h1_ours_uvloop", uv_io, lambda: h_u.request(c1, GET, b"", [], 5)),
            Contender("cl_grpc", io, lambda: g_a.unary(cg, "test.Echo", "Unary", [], b"ping", 5)),
            Contender("cl_grpc_uvloop", uv_io,
                      lambda: g_u.unary(cg, "test.Echo", "Unary", [], b"ping", 5)),
        ])
    finally:
        for client, loop in ((h_a, io), (h_u, uv_io), (g_a, io), (g_u, uv_io)):
            loop.submit(client.close()).result(10)
