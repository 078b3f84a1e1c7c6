"""Outbound clients: round-trip latency on 127.0.0.1, to choose the HTTP library and the loop.

The servers (tests/servers.py: HTTP/1.1 on h11, HTTP/2 on h2, gRPC on grpcio) run in a
child process, so the client's loop has a core and the GIL to itself. Every figure is
the median time of one sequential keep-alive request in a batch of N, on a warm pooled
connection, and beside it the CPU time the client's loop thread spent per request
(time.thread_time: the client's own cost, without the server's or the wait); they are
compared as ratios measured in this one run (bench/README.md).
"""
from __future__ import annotations

import asyncio
import json
import pathlib
import statistics
import subprocess
import sys
import threading
import time

import pytest

from pyproxywasm.net import Cluster
from pyproxywasm.net.grpc_client import GrpcClient
from pyproxywasm.net.http_client import HttpClient
from pyproxywasm.net.loop import IoLoop

ROOT = pathlib.Path(__file__).resolve().parent.parent
N = 100  # requests per batch
ROUNDS = 15

SERVERS = """
import json, sys, time
sys.path.insert(0, %r)
import servers
h1, h2, g = servers.start_http1(), servers.start_http2(), servers.GrpcServer()
print(json.dumps({"h1": h1.endpoint, "h2": h2.endpoint, "grpc": g.endpoint}), flush=True)
sys.stdin.read()
""" % str(ROOT / "tests")


@pytest.fixture(scope="module")
def upstreams():
    proc = subprocess.Popen([sys.executable, "-c", SERVERS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(10)


def _loop_thread(factory) -> IoLoop:
    """A loop of `factory`'s kind on a daemon thread, wrapped like the shared IoLoop."""
    loop = factory()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    return IoLoop(loop, t)


def _measure(benchmark, record, name: str, io: IoLoop, one_call, setup=None) -> None:
    """Time batches of N sequential `await one_call()` on `io`'s loop; record per call."""
    if setup is not None:
        io.submit(setup()).result(30)

    cpu: list[float] = []

    async def batch():
        t0 = time.thread_time()
        for _ in range(N):
            await one_call()
        cpu.append(time.thread_time() - t0)

    io.submit(batch()).result(60)  # warm: connections made, code paths hot
    cpu.clear()
    benchmark.pedantic(lambda: io.submit(batch()).result(60), rounds=ROUNDS, iterations=1)
    record(name, benchmark.stats.stats.median / N)
    record(name + "_cpu", statistics.median(cpu) / N)


GET = [(b":method", b"GET"), (b":path", b"/echo"), (b":authority", b"bench")]


def test_h1_ours(benchmark, record, upstreams):
    io = IoLoop.shared()
    client = HttpClient(io)
    c = Cluster("b1", (upstreams["h1"],))
    _measure(benchmark, record, "cl_h1_ours", io, lambda: client.request(c, GET, b"", [], 5))
    io.submit(client.close()).result(10)


def test_h1_aiohttp(benchmark, record, upstreams):
    import aiohttp
    io = IoLoop.shared()
    url = f"http://{upstreams['h1']}/echo"
    box = {}

    async def setup():
        box["s"] = aiohttp.ClientSession()

    async def one():
        async with box["s"].get(url) as r:
            await r.read()
    _measure(benchmark, record, "cl_h1_aiohttp", io, one, setup)
    io.submit(box["s"].close()).result(10)


def test_h1_httpx(benchmark, record, upstreams):
    import httpx
    io = IoLoop.shared()
    url = f"http://{upstreams['h1']}/echo"
    box = {}

    async def setup():
        box["c"] = httpx.AsyncClient()

    async def one():
        r = await box["c"].get(url)
        r.read()
    _measure(benchmark, record, "cl_h1_httpx", io, one, setup)
    io.submit(box["c"].aclose()).result(10)


def test_h1_ours_uvloop(benchmark, record, upstreams):
    uvloop = pytest.importorskip("uvloop")
    io = _loop_thread(uvloop.new_event_loop)
    client = HttpClient(io)
    c = Cluster("b1u", (upstreams["h1"],))
    _measure(benchmark, record, "cl_h1_ours_uvloop", io, lambda: client.request(c, GET, b"", [], 5))
    io.submit(client.close()).result(10)
    io.loop.call_soon_threadsafe(io.loop.stop)


def test_h1_ours_from_another_thread(benchmark, record, upstreams):
    """What a VM thread pays: submit one call to the I/O thread and wait for it."""
    io = IoLoop.shared()
    client = HttpClient(io)
    c = Cluster("b1x", (upstreams["h1"],))

    def batch():
        for _ in range(N):
            io.submit(client.request(c, GET, b"", [], 5)).result(5)
    batch()
    benchmark.pedantic(batch, rounds=ROUNDS, iterations=1)
    record("cl_h1_cross_thread", benchmark.stats.stats.median / N)
    io.submit(client.close()).result(10)


def test_h2_ours(benchmark, record, upstreams):
    io = IoLoop.shared()
    client = HttpClient(io)
    c = Cluster("b2", (upstreams["h2"],), http2=True)
    _measure(benchmark, record, "cl_h2_ours", io, lambda: client.request(c, GET, b"", [], 5))
    io.submit(client.close()).result(10)


def test_h2_httpx(benchmark, record, upstreams):
    import httpx
    pytest.importorskip("h2")
    io = IoLoop.shared()
    url = f"http://{upstreams['h2']}/echo"
    box = {}

    async def setup():
        box["c"] = httpx.AsyncClient(http1=False, http2=True)

    async def one():
        r = await box["c"].get(url)
        r.read()
    _measure(benchmark, record, "cl_h2_httpx", io, one, setup)
    io.submit(box["c"].aclose()).result(10)


def test_grpc_unary(benchmark, record, upstreams):
    io = IoLoop.shared()
    client = GrpcClient(io)
    c = Cluster("bg", (upstreams["grpc"],))
    _measure(benchmark, record, "cl_grpc", io,
             lambda: client.unary(c, "test.Echo", "Unary", [], b"ping", 5))
    io.submit(client.close()).result(10)


def test_grpc_unary_uvloop(benchmark, record, upstreams):
    """grpc.aio on uvloop: does it work, and is it faster?"""
    uvloop = pytest.importorskip("uvloop")
    io = _loop_thread(uvloop.new_event_loop)
    client = GrpcClient(io)
    c = Cluster("bgu", (upstreams["grpc"],))
    _measure(benchmark, record, "cl_grpc_uvloop", io,
             lambda: client.unary(c, "test.Echo", "Unary", [], b"ping", 5))
    io.submit(client.close()).result(10)
    io.loop.call_soon_threadsafe(io.loop.stop)
