"""The `proxywasm` pytest fixture that installing pyproxywasm provides."""
from __future__ import annotations

from conftest import GO_HTTP, REQUEST


def test_fixture_builds_harnesses_and_closes_them(proxywasm):
    h = proxywasm(GO_HTTP, configuration="headers", root_id="fx")
    s = h.http()
    s.send_request_headers(REQUEST, end_stream=True)
    assert s.request_headers.get("x-wasm-req") == "fx"
    s.finish()
    second = proxywasm(GO_HTTP, configuration="headers", root_id="fx2", vm_id="other")
    assert second.plugin.vm is not h.plugin.vm
