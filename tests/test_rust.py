"""The Rust SDK test plugin (tests/plugins/rust, proxy-wasm 0.2.2, ABI 0.2.1).

The Rust SDK is the strictest guest: it panics (traps) on any status it does not expect,
on a callback for an unknown context id, and on on_vm_start without a real root id."""
from __future__ import annotations

import pytest

from pyproxywasm import Action, PluginStartError
from pyproxywasm.testing import PluginHarness

from conftest import PLUGINS, REQUEST, RESPONSE

RUST = PLUGINS / "rust" / "rustfilter.wasm"


def test_lifecycle_headers_body_and_logs():
    with PluginHarness(RUST, configuration="hello", vm_configuration="vmcfg", root_id="myroot") as h:
        assert h.plugin.vm.abi_version == "0.2.1"
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-rust-replace", "old")]) is Action.CONTINUE
        hd = s.request_headers
        assert hd.get("x-rust-req") == "hello" and hd.get("x-rust-replace") == "rust"
        assert hd.get("x-rust-root-id") == "myroot"
        assert s.send_request_body(b"abc") is Action.PAUSE
        assert s.send_request_body(b"def", end_stream=True) is Action.CONTINUE
        assert s.take_request_body() == b"ABCDEF"
        s.send_response_headers(RESPONSE, end_stream=True)
        assert s.response_headers.get("x-rust-resp") == "1"
        s.finish()
        assert h.logs("info") == ["rust vm_start: vmcfg", "rust configure: hello",
                                  "rust path=/hello?x=1", "rust log status=200"]
        assert not h.plugin.vm.failed


def test_local_response():
    with PluginHarness(RUST) as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-rust-deny", "1")]) is Action.PAUSE
        lr = s.local_response
        assert (lr.status, lr.body) == (418, b"rust denied")
        assert lr.headers.get("x-rust-reason") == "deny"
        s.finish()
        assert "rust log status=418" in h.logs("info")
        assert not h.plugin.vm.failed


def test_ticks_and_a_failing_configuration():
    with PluginHarness(RUST, configuration="tick") as h:
        h.advance(35)
        assert h.logs("info").count("rust tick") == 3
    with pytest.raises(PluginStartError, match="proxy_on_configure returned false"):
        PluginHarness(RUST, configuration="fail")


def test_many_streams_without_a_panic():
    with PluginHarness(RUST, configuration="c") as h:
        for _ in range(200):
            with h.http() as s:
                s.send_request_headers(REQUEST, end_stream=True)
                s.send_response_headers(RESPONSE, end_stream=True)
        assert not h.plugin.vm.failed
