"""AssemblyScript SDK plugins (@solo-io/proxy-runtime), ABI 0.2.0 and ABI 0.1.0."""
from __future__ import annotations

import pytest

from pyproxywasm import Action
from pyproxywasm.testing import PluginHarness

from conftest import AS_010, AS_020, REQUEST, RESPONSE

# The runtime registers its root context under this name and looks itself up by the
# plugin_root_id property, so the plugin must be configured with it.
ROOT_ID = "as"


@pytest.fixture(params=[AS_020, AS_010], ids=["abi-0.2.0", "abi-0.1.0"])
def plugin(request):
    return request.param


def test_configuration_and_header_rewrite(plugin):
    with PluginHarness(plugin, root_id=ROOT_ID, configuration="hello") as h:
        assert "as configure: hello" in h.logs("info")
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-as-replace", "a"), ("x-as-replace", "b")],
                                      end_stream=True) is Action.CONTINUE
        got = s.request_headers
        assert got.get("x-as-req") == "hello"
        assert got.get_all("x-as-replace") == ["as"]
        s.send_response_headers(RESPONSE, end_stream=True)
        assert s.response_headers.get("x-as-resp") == "1"
        s.finish()
        assert "as path=/hello?x=1" in h.logs("info")
        assert "as done" in h.logs("info")


def test_empty_configuration(plugin):
    with PluginHarness(plugin, root_id=ROOT_ID) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-as-req") == "none"
        s.finish()


def test_local_response(plugin):
    with PluginHarness(plugin, root_id=ROOT_ID) as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-as-deny", "1")]) is Action.PAUSE
        lr = s.local_response
        assert (lr.status, lr.body, lr.details) == (401, b"as denied", "denied")
        assert lr.headers.get("x-as-reason") == "deny"
        assert lr.grpc_status is None
        s.finish()


def test_many_streams_in_one_vm(plugin):
    with PluginHarness(plugin, root_id=ROOT_ID, configuration="c") as h:
        for _ in range(300):
            with h.http() as s:
                s.send_request_headers(REQUEST, end_stream=True)
                assert s.request_headers.get("x-as-req") == "c"
        assert not h.plugin.vm.failed
