"""Benchmark plumbing: each benchmark records its median, and the end of the run prints
the ratios the project tracks (all measured in this one run; see bench/README.md)."""
from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

RESULTS: dict[str, float] = {}
LINES: list[str] = []  # finished figure lines (containment proofs), printed as they are


@pytest.fixture
def report():
    return LINES.append


@pytest.fixture
def record():
    def _record(name: str, seconds: float) -> None:
        RESULTS[name] = seconds

    return _record


def pytest_terminal_summary(terminalreporter):
    r = RESULTS
    if not r and not LINES:
        return
    tw = terminalreporter
    tw.section("pyproxywasm figures (medians of this run)")
    for line in LINES:
        tw.line(line)
    if "get_loop" in r and "loop_empty" in r:
        tw.line(f"(a) header get hostcall, guest loop: {(r['get_loop'] - r['loop_empty']) / r['loop_n'] * 1e9:8.1f} ns/call  (target <= 100)")
    if "replace_loop" in r and "loop_empty_resp" in r:
        tw.line(f"(a) header replace hostcall, guest loop: {(r['replace_loop'] - r['loop_empty_resp']) / r['loop_n'] * 1e9:8.1f} ns/call  (target <= 100)")
    if "lifecycle" in r:
        tw.line(f"(b) HTTP lifecycle, WAT filter, Python API: {r['lifecycle'] * 1e6:8.2f} us  (target <= 3)")
    if "lifecycle_encoded" in r:
        tw.line(f"(b') same, headers pre-encoded:           {r['lifecycle_encoded'] * 1e6:8.2f} us")
    if "baseline" in r:
        tw.line(f"(c) same lifecycle, wasmtime-py host:      {r['baseline'] * 1e6:8.2f} us")
    if "baseline" in r and "lifecycle" in r:
        tw.line(f"(c)/(b) = {r['baseline'] / r['lifecycle']:.1f}x  (target >= 30)")
    if "scale_1" in r and "scale_2" in r:
        tw.line(f"thread scaling, 2 workers vs 1:          {r['scale_1'] / r['scale_2']:8.2f}x  (target >= 1.8)")
    if "cas_sharded" in r:
        tw.line(f"guest CAS increments/s, 2 threads:       {r['cas_sharded'] / 1e6:8.2f} M/s  (target >= 5)")
    if "cas_one_mutex" in r:
        tw.line(f"  same with one global mutex:            {r['cas_one_mutex'] / 1e6:8.2f} M/s")
    for t in (1, 2):
        if f"redis_cas_redis_{t}" in r and f"redis_cas_inprocess_{t}" in r:
            tw.line(f"guest CAS increments/s, {t} thread(s), Redis: {r[f'redis_cas_redis_{t}'] / 1e3:8.1f} k/s"
                    f"  (in-process {r[f'redis_cas_inprocess_{t}'] / 1e6:.2f} M/s)")
    if "redis_queue_redis" in r and "redis_queue_inprocess" in r:
        tw.line(f"queue items/s, Redis:                    {r['redis_queue_redis'] / 1e3:8.1f} k/s"
                f"  (in-process {r['redis_queue_inprocess'] / 1e6:.2f} M/s)")
    for kind in ("inprocess", "shm", "redis"):
        if f"backend_cas_{kind}" in r:
            tw.line(f"backend {kind:9}: guest CAS increments/s (2 threads) {r[f'backend_cas_{kind}'] / 1e6:8.3f} M/s")
        if f"backend_queue_{kind}" in r:
            tw.line(f"backend {kind:9}: queue items/s, worker -> singleton {r[f'backend_queue_{kind}'] / 1e6:8.3f} M/s")
    for procs in (1, 2):
        if f"shm_one_key_{procs}p" in r:
            tw.line(f"shm, one key, {procs} process(es) x {2 // procs} worker(s): CAS increments/s {r[f'shm_one_key_{procs}p'] / 1e6:8.3f} M/s")
    if "queue_items_per_s" in r:
        tw.line(f"queue items/s, worker -> singleton:      {r['queue_items_per_s'] / 1e6:8.2f} M/s")
    if "clone_bench_filter" in r:
        tw.line(f"VM clone (WAT filter):                   {r['clone_bench_filter'] * 1e6:8.1f} us  (target <= 200)")
    if "clone_go_httpfilter" in r:
        tw.line(f"VM clone (Go SDK filter, Go runtime init): {r['clone_go_httpfilter'] * 1e6:8.1f} us")
    if "compile_first" in r and "compile_cached" in r:
        tw.line(f"module start, first vs cached: {r['compile_first'] * 1e3:.1f} ms vs {r['compile_cached'] * 1e3:.1f} ms = {r['compile_first'] / r['compile_cached']:.0f}x  (target >= 10)")
    if "callout_direct" in r and "callout_host" in r:
        tw.line(f"http_call round trip: direct {r['callout_direct'] * 1e6:.0f} us, through the host "
                f"{r['callout_host'] * 1e6:.0f} us = {r['callout_host'] / r['callout_direct']:.2f}x  (target <= 1.3)")
    if "callouts_per_s" in r:
        tw.line(f"callouts/s, 2 workers, 1,000 in flight:  {r['callouts_per_s']:8.0f}")
    if "go_lifecycle" in r:
        tw.line(f"Go SDK filter ('headers'), lifecycle:     {r['go_lifecycle'] * 1e6:8.2f} us")
    _lifecycle_summary(tw, r)
    _client_summary(tw, r)


def _lifecycle_summary(tw, r) -> None:
    """bench/test_lifecycle_bench.py: the issue-11 lifecycle, Python API against the core
    driven from C in the same process (bench/core_loop.c, alternating batches) and in a
    process of its own (bench/driver.c), same run."""
    for key, what in (("wat", "minimal WAT filter"), ("go", "Go SDK header_rewrite")):
        c, d = r.get(f"c_{key}"), r.get(f"d_{key}")
        if c:
            tw.line(f"{what}, core driven from C, this process: {c * 1e6:8.2f} us")
        if d:
            tw.line(f"{what}, core driven from C, bench/driver.c: {d * 1e6:8.2f} us")
        x = r.get(f"x_{key}")
        if x:
            tw.line(f"{what}, core driven from C, explicit bounds checks (the issue's configuration): "
                    f"{x * 1e6:8.2f} us")
        for form in ("tuple", "bytes"):
            py = r.get(f"py_{key}_{form}")
            if py:
                pair = r.get(f"r_{key}_{form}")
                ratio = f"  = {pair:.2f}x the core (batch pairs)" if pair else ""
                rx = r.get(f"rx_{key}_{form}")
                if rx:
                    ratio += f", {rx:.2f}x the core with explicit checks (run pairs)"
                tw.line(f"{what}, Python API, {form} headers: {py * 1e6:8.2f} us{ratio}")


def _client_summary(tw, r) -> None:
    """Outbound clients (bench/test_client_bench.py): per round trip, and ratios."""
    names = [("cl_h1_ours", "HTTP/1.1, HttpClient (aiohttp)"), ("cl_h1_aiohttp", "HTTP/1.1, bare aiohttp"),
             ("cl_h1_httpx", "HTTP/1.1, bare httpx"),
             ("cl_h1_cross_thread", "HTTP/1.1, HttpClient, each call from another thread"),
             ("cl_h2_ours", "HTTP/2, HttpClient (h2)"), ("cl_h2_httpx", "HTTP/2, bare httpx"),
             ("cl_h1_ours_asyncio", "HTTP/1.1, HttpClient on asyncio"),
             ("cl_h1_ours_uvloop", "HTTP/1.1, HttpClient on uvloop"),
             ("cl_grpc", "gRPC unary, GrpcClient on asyncio"), ("cl_grpc_uvloop", "gRPC unary, GrpcClient on uvloop")]
    for key, label in names:
        if key in r:
            cpu = f"  ({r[key + '_cpu'] * 1e6:6.1f} us client user CPU)" if key + "_cpu" in r else ""
            tw.line(f"{label + ':':54s} {r[key] * 1e6:8.1f} us/round trip{cpu}")
    for a, b, label in (("cl_h1_httpx", "cl_h1_aiohttp", "httpx / aiohttp, HTTP/1.1"),
                        ("cl_h1_ours", "cl_h1_aiohttp", "HttpClient / bare aiohttp"),
                        ("cl_h1_cross_thread", "cl_h1_ours", "from another thread / on the loop"),
                        ("cl_h2_httpx", "cl_h2_ours", "httpx / HttpClient, HTTP/2"),
                        ("cl_h1_ours_asyncio", "cl_h1_ours_uvloop", "asyncio / uvloop, HTTP/1.1"),
                        ("cl_grpc", "cl_grpc_uvloop", "asyncio / uvloop, gRPC")):
        if a in r and b in r:
            cpu = (f"  (client user CPU {r[a + '_cpu'] / r[b + '_cpu']:.2f}x)"
                   if a + "_cpu" in r and b + "_cpu" in r else "")
            tw.line(f"{label + ':':54s} {r[a] / r[b]:8.2f}x{cpu}")
