"""Testing an AssemblyScript plugin (@solo-io/proxy-runtime): headers, a local reply, and
two harnesses that share state only when asked to."""
import pathlib

from pyproxywasm import Action
from pyproxywasm.testing import PluginHarness

FILTER = pathlib.Path(__file__).parent.parent / "plugins" / "as" / "as_abi020.wasm"


def test_headers_and_a_denied_request():
    with PluginHarness(FILTER, configuration="cfg") as h:
        s = h.http()
        assert s.send_request_headers({":method": "GET", ":path": "/p"}) is Action.CONTINUE
        assert s.request_headers.get("x-as-req") == "cfg"
        assert s.request_headers.get("x-as-replace") == "as"
        s.send_response_headers({":status": "200"}, end_stream=True)
        assert s.response_headers.get("x-as-resp") == "1"
        s.finish()
        assert h.logs("info", stream=s) == ["as path=/p", "as done"]

        denied = h.http()
        assert denied.send_request_headers({":path": "/", "x-as-deny": ""}) is Action.PAUSE
        assert (denied.local_response.status, denied.local_response.body) == (401, b"as denied")
        denied.finish()


def test_each_harness_is_isolated_unless_given_a_namespace():
    with PluginHarness(FILTER) as a, PluginHarness(FILTER) as b, \
            PluginHarness(FILTER, namespace=a.namespace) as c:
        a.set_shared_data("k", b"from a")
        assert b.shared_data("k") is None            # its own namespace
        assert c.shared_data("k").value == b"from a"  # shares a's
