"""Per-request cost of one HTTP lifecycle (6 request headers, body, 4 response headers,
body, teardown): through the Python API, and the C core driven from C by bench/driver.c
(built here like `make -C csrc bench-driver`), all in one run. The figures and their
ratios print at the end of the run (bench/conftest.py); bench/README.md has them, with
callgrind instruction counts."""
from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile

import pytest

from lifecycle import GO_REWRITE, REQUEST, REQUEST_BYTES, RESPONSE, RESPONSE_BYTES, WAT_FILTER, lifecycle
from pyproxywasm import Host, PluginConfig, VmConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLUGINS = {"wat": (WAT_FILTER, 2), "go": (GO_REWRITE, 1)}  # (.wasm, ABI id for the driver)


@pytest.fixture(scope="module")
def driver():
    """Builds bench/driver.c against the core's sources; returns a runner giving seconds
    per lifecycle (the median of its batches)."""
    out = tempfile.mkdtemp(prefix="pw-bench-")
    subprocess.run(["make", "-s", "-C", str(ROOT / "csrc"), "bench-driver", f"OUT={out}"],
                   check=True, capture_output=True)
    from wasmtime import _ffi
    libpath = _ffi.dll._name

    def run(key: str, rounds: int) -> float:
        wasm, abi = PLUGINS[key]
        env = {**os.environ, "PW_BENCH_CACHE": os.path.join(out, f"{key}.cwasm")}
        p = subprocess.run([os.path.join(out, "bench-driver"), libpath, str(wasm), str(abi), str(rounds)],
                           check=True, capture_output=True, text=True, env=env)
        return float(p.stdout.split("=")[1]) / 1e9

    return run


@pytest.fixture(scope="module")
def plugins():
    host = Host([PluginConfig(VmConfig(WAT_FILTER), root_id="bench", name="wat"),
                 PluginConfig(VmConfig(GO_REWRITE), name="go")])
    plugins = {"wat": host.plugins[0], "go": host.plugins[1]}
    for plugin in plugins.values():  # warm: the Go runtime sizes its heap over the first
        for _ in range(3000):        # thousands of requests (its GC then settles)
            lifecycle(plugin, REQUEST, RESPONSE)
    yield plugins
    host.close()


FORMS = {"tuple": (REQUEST, RESPONSE), "bytes": (REQUEST_BYTES, RESPONSE_BYTES)}


BATCH = {"wat": 2000, "go": 300}  # lifecycles per timed batch, as the driver's batches


@pytest.mark.parametrize("key,form", [("wat", "tuple"), ("wat", "bytes"), ("go", "tuple"), ("go", "bytes")])
def test_lifecycle_python_vs_core(benchmark, record, driver, plugins, key, form):
    """The Python API's lifecycle against the core driven from C, measured the same way:
    batches of lifecycles timed as a whole (the median batch, per lifecycle), the driver
    right before and right after (the lower of the two: the machine is shared). Timing
    each lifecycle alone would add the timer's own cost to the Python side only."""
    n = BATCH[key]
    before = driver(key, n)
    req, resp = FORMS[form]
    plugin = plugins[key]
    benchmark.pedantic(lifecycle, (plugin, req, resp), iterations=n, rounds=15, warmup_rounds=1)
    after = driver(key, n)
    record(f"py_{key}_{form}", benchmark.stats.stats.median)
    record(f"c_{key}", min(before, after, *(x for x in [_prev(key)] if x)))
    s = plugin.http_stream()
    s.send_request_headers(req)
    assert s.request_headers.get("x-wasm-filter" if key == "wat" else "x-pyproxywasm") is not None
    s.finish()


def _prev(key: str) -> float | None:
    from conftest import RESULTS
    return RESULTS.get(f"c_{key}")
