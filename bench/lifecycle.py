"""The bench lifecycle through the Python API, shared by the benchmarks and the callgrind
runs (python bench/lifecycle.py PLUGIN ROUNDS [tuple|wire] counts ROUNDS lifecycles after
a warm-up; run it under callgrind twice and subtract to get instructions per request).
FORM "fresh" sends tuple headers made anew for every lifecycle (new tuple objects, as a
server's parser makes them), which the extension's cache of pairs sent again never hits.

One lifecycle: 6 request headers, a request body (end of stream), 4 response headers, a
response body (end of stream), teardown — the one bench/driver.c runs from C."""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAT_FILTER = ROOT / "tests" / "plugins" / "wat" / "bench_filter.wasm"
GO_REWRITE = ROOT / "pyproxywasm" / "examples" / "header_rewrite.wasm"

REQUEST = [(":method", "GET"), (":path", "/"), (":authority", "example.com"),
           (":scheme", "http"), ("user-agent", "bench"), ("accept", "*/*")]
RESPONSE = [(":status", "200"), ("content-type", "text/plain"), ("content-length", "5"),
            ("server", "upstream")]
REQUEST_BYTES = [(k.encode(), v.encode()) for k, v in REQUEST]
RESPONSE_BYTES = [(k.encode(), v.encode()) for k, v in RESPONSE]


def lifecycle(plugin, request, response) -> None:
    s = plugin.http_stream()
    s.send_request_headers(request)
    s.send_request_body(b"hello", True)
    s.send_response_headers(response)
    s.send_response_body(b"world", True)
    s.finish()


def main() -> None:
    from pyproxywasm import Host, PluginConfig, VmConfig
    from pyproxywasm.pairs import encode_pairs

    path, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    form = sys.argv[3] if len(sys.argv) > 3 else "tuple"
    if form == "fresh":
        sets = [(fresh(REQUEST), fresh(RESPONSE)) for _ in range(200 + rounds)]
    else:
        req, resp = {"tuple": (REQUEST, RESPONSE), "bytes": (REQUEST_BYTES, RESPONSE_BYTES),
                     "wire": (encode_pairs(REQUEST), encode_pairs(RESPONSE))}[form]
        sets = [(req, resp)] * (200 + rounds)
    with Host([PluginConfig(VmConfig(path), root_id="bench")]) as host:
        plugin = host.plugins[0]
        for req, resp in sets[:200]:
            lifecycle(plugin, req, resp)
        toggle = _callgrind_toggle()
        toggle and toggle.cg_start()
        for req, resp in sets[200:]:
            lifecycle(plugin, req, resp)
        toggle and toggle.cg_stop()


def fresh(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same headers in new tuple objects (the str items are shared)."""
    return [(k, v) for k, v in headers]


def _callgrind_toggle():
    """Under callgrind --collect-atstart=no, with PW_CG_TOGGLE naming a library whose
    cg_start/cg_stop issue CALLGRIND_TOGGLE_COLLECT: only the measured loop is counted."""
    import ctypes
    import os

    path = os.environ.get("PW_CG_TOGGLE")
    return ctypes.CDLL(path) if path else None


if __name__ == "__main__":
    main()
