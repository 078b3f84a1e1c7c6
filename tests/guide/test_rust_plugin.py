"""Testing a Rust plugin (proxy-wasm crate): configuration, headers, a buffered body the
plugin rewrites, a local reply and the ABI trace a failing test can print."""
import pathlib

from pyproxywasm import Action
from pyproxywasm.testing import PluginHarness

FILTER = pathlib.Path(__file__).parent.parent / "plugins" / "rust" / "rustfilter.wasm"


def test_request_body_is_upper_cased_once_complete():
    with PluginHarness(FILTER, configuration="hello", vm_configuration="vmcfg",
                       root_id="myroot") as h:
        assert h.logs("info")[:2] == ["rust vm_start: vmcfg", "rust configure: hello"]
        s = h.http()
        s.send_request_headers({":method": "POST", ":path": "/x"})
        assert s.request_headers.get("x-rust-req") == "hello"
        assert s.request_headers.get("x-rust-root-id") == "myroot"
        assert s.send_request_body(b"abc") is Action.PAUSE       # buffered by the host
        assert s.send_request_body(b"def", end_stream=True) is Action.CONTINUE
        assert s.take_request_body() == b"ABCDEF"
        s.send_response_headers({":status": "200"}, end_stream=True)
        assert s.response_headers.get("x-rust-resp") == "1"
        s.finish()
        assert h.logs("info", stream=s) == ["rust path=/x", "rust log status=200"]


def test_a_local_reply_and_the_abi_trace():
    with PluginHarness(FILTER, trace=True) as h:
        s = h.http()
        assert s.send_request_headers({":path": "/", "x-rust-deny": "1"}) is Action.PAUSE
        assert (s.local_response.status, s.local_response.body) == (418, b"rust denied")
        calls = [r.name for r in h.trace() if r.kind == "hostcall" and r.context_id == s.context_id]
        assert "proxy_send_local_response" in calls
        print(h.format_trace())           # what a failing test would show
        s.finish()
