"""Per-call and per-request costs of the C core, against a wasmtime-py baseline host.

Run: pytest bench/ (add --benchmark-only to skip nothing, --benchmark-json=F to save).
"""
from __future__ import annotations

import pathlib

import pytest

from baseline_host import BaselineHost
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.pairs import encode_pairs

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAT = ROOT / "tests" / "plugins" / "wat"
GO_HTTP = ROOT / "tests" / "plugins" / "go" / "httpfilter.wasm"

REQUEST = [(":method", "GET"), (":path", "/"), (":authority", "example.com"), ("user-agent", "bench")]
RESPONSE = [(":status", "200"), ("server", "upstream")]
LOOP_N = 20000


def _median(benchmark) -> float:
    return benchmark.stats.stats.median


def lifecycle(plugin, request, response) -> None:
    s = plugin.http_stream()
    s.send_request_headers(request, True)
    s.send_response_headers(response, True)
    s.finish()


@pytest.fixture(scope="module")
def bench_filter():
    host = Host([PluginConfig(VmConfig(WAT / "bench_filter.wasm"), root_id="bench")])
    yield host.plugins[0]
    host.close()


def test_lifecycle(benchmark, bench_filter, record):
    """(b) create, request headers, response headers, log/done/delete; headers as tuples."""
    benchmark(lifecycle, bench_filter, REQUEST, RESPONSE)
    record("lifecycle", _median(benchmark))
    s = bench_filter.http_stream()
    s.send_request_headers(REQUEST, True)
    assert s.request_headers.get("x-wasm-filter") == "1"
    s.finish()


def test_lifecycle_encoded(benchmark, bench_filter, record):
    """(b') the same with headers already in the wire format (as an adapter can keep them)."""
    req, resp = encode_pairs(REQUEST), encode_pairs(RESPONSE)
    benchmark(lifecycle, bench_filter, req, resp)
    record("lifecycle_encoded", _median(benchmark))


def test_baseline_lifecycle(benchmark, record):
    """(c) the same lifecycle on a wasmtime-py host whose hostcalls are Python callbacks."""
    host = BaselineHost((WAT / "bench_filter.wasm").read_bytes())
    req = [(k.encode(), v.encode()) for k, v in REQUEST]
    resp = [(k.encode(), v.encode()) for k, v in RESPONSE]
    out_req, out_resp = benchmark(host.run_lifecycle, req, resp)
    assert (b"x-wasm-filter", b"1") in out_req and (b"server", b"pyproxywasm") in out_resp
    record("baseline", _median(benchmark))


def _time_event(benchmark, plugin, event, prepare, rounds: int) -> float:
    """Median of one event on a fresh stream; making and finishing streams is untimed."""
    streams = []

    def setup():
        s = plugin.http_stream()
        prepare(s)
        streams.append(s)
        return (s,), {}

    benchmark.pedantic(event, setup=setup, rounds=rounds)
    for s in streams:
        s.finish()
    return _median(benchmark)


@pytest.mark.parametrize("n", [0, LOOP_N], ids=["empty", "loop"])
def test_hostcall_get(benchmark, record, n):
    """(a) on_request_headers making n proxy_get_header_map_value calls, each answer
    allocated in the guest as every real plugin's get is."""
    host = Host([PluginConfig(VmConfig(WAT / "hostcall_loop.wasm"), configuration=str(n))])
    req = encode_pairs(REQUEST)
    t = _time_event(benchmark, host.plugins[0], lambda s: s.send_request_headers(req, True),
                    lambda s: None, rounds=30 if n else 3000)
    record("get_loop" if n else "loop_empty", t)
    record("loop_n", LOOP_N)
    host.close()


@pytest.mark.parametrize("n", [0, LOOP_N], ids=["empty", "loop"])
def test_hostcall_replace(benchmark, record, n):
    """(a) on_response_headers making n proxy_replace_header_map_value calls."""
    host = Host([PluginConfig(VmConfig(WAT / "hostcall_loop.wasm"), configuration=str(n))])
    req, resp = encode_pairs(REQUEST), encode_pairs(RESPONSE)
    t = _time_event(benchmark, host.plugins[0], lambda s: s.send_response_headers(resp, True),
                    lambda s: s.send_request_headers(req, True), rounds=30 if n else 3000)
    record("replace_loop" if n else "loop_empty_resp", t)
    host.close()


def test_go_lifecycle(benchmark, record):
    """A real Go SDK filter (headers feature) for scale."""
    host = Host([PluginConfig(VmConfig(GO_HTTP), root_id="r", configuration="headers")])
    benchmark(lifecycle, host.plugins[0], REQUEST, RESPONSE)
    record("go_lifecycle", _median(benchmark))
    host.close()
