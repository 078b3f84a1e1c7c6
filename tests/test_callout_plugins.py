"""The callout test plugins (tests/plugins/*, built by tests/plugins/build.sh) are valid
Proxy-Wasm modules with the shapes their READMEs promise, and each one starts and reads its
configuration. Their call behaviour is tested with the callout tests."""
from __future__ import annotations

import json
import logging
import pathlib

import pytest

from pyproxywasm import PluginStartError
from pyproxywasm.module import inspect
from pyproxywasm.testing import PluginHarness

PLUGINS = pathlib.Path(__file__).parent / "plugins"
GO_CALLOUTS = PLUGINS / "go" / "callouts.wasm"
RUST_CALLOUTS = PLUGINS / "rust" / "rustcallouts.wasm"
AS_HTTP_CALL = PLUGINS / "as" / "as_http_call.wasm"
AS_GRPC_CALL = PLUGINS / "as" / "as_grpc_call.wasm"
WAT_CALLOUT_EDGE = PLUGINS / "wat" / "callout_edge.wasm"

I = "i32"
HTTP_CALL = (I,) * 10
GRPC_CALL_SPEC, GRPC_STREAM_SPEC = (I,) * 12, (I,) * 9
GRPC_CALL_AS, GRPC_STREAM_AS = (I,) * 10, (I,) * 7


def _imports(path: pathlib.Path) -> dict[str, tuple[str, ...]]:
    spec = inspect(path.read_bytes())
    return {i.name: tuple(i.type.params) for i in spec.info.imports if i.module == "env"}


def _exports(path: pathlib.Path) -> set[str]:
    return {e.name for e in inspect(path.read_bytes()).info.exports}


@pytest.mark.parametrize("path, abi", [
    (GO_CALLOUTS, "0.2.0"),
    (RUST_CALLOUTS, "0.2.1"),
    (AS_HTTP_CALL, "0.2.0"),
    (AS_GRPC_CALL, "0.2.0"),
    (WAT_CALLOUT_EDGE, "0.2.1"),
], ids=lambda v: v.name if isinstance(v, pathlib.Path) else v)
def test_module_inspects_with_its_abi_and_call_imports(path, abi):
    assert inspect(path.read_bytes()).abi_version == abi
    if path is AS_GRPC_CALL:  # gRPC only: checked below
        assert "proxy_http_call" not in _imports(path)
        return
    assert _imports(path)["proxy_http_call"] == HTTP_CALL
    assert "proxy_on_http_call_response" in _exports(path)


def test_spec_shaped_grpc_imports():
    for path in (RUST_CALLOUTS, WAT_CALLOUT_EDGE):
        imports = _imports(path)
        assert imports["proxy_grpc_call"] == GRPC_CALL_SPEC
        assert imports["proxy_grpc_stream"] == GRPC_STREAM_SPEC
        assert imports["proxy_grpc_send"] == (I,) * 4
        assert imports["proxy_get_status"] == (I,) * 3
        assert {"proxy_on_grpc_receive", "proxy_on_grpc_close",
                "proxy_on_grpc_receive_initial_metadata",
                "proxy_on_grpc_receive_trailing_metadata"} <= _exports(path)


def test_assemblyscript_grpc_plugin_uses_the_sdk_legacy_shapes():
    """proxy-runtime 0.1.8 declares 10/7-param gRPC imports and the pre-spec export name."""
    imports = _imports(AS_GRPC_CALL)
    assert imports["proxy_grpc_call"] == GRPC_CALL_AS
    assert imports["proxy_grpc_stream"] == GRPC_STREAM_AS
    exports = _exports(AS_GRPC_CALL)
    assert "proxy_on_grpc_trailing_metadata" in exports
    assert "proxy_on_grpc_receive_trailing_metadata" not in exports


@pytest.mark.parametrize("mode", ["auth", "multi", "post"])
def test_go_callouts_starts_in_each_http_mode(mode):
    config = json.dumps({"mode": mode, "cluster": "auth"})
    with PluginHarness(GO_CALLOUTS, configuration=config) as h:
        assert h.logs("info") == [f"callouts configure: {config}"]


def test_go_callouts_tick_mode_defines_its_counters():
    config = json.dumps({"mode": "tick", "tick_ms": 50})
    with PluginHarness(GO_CALLOUTS, configuration=config) as h:
        assert h.logs("info")[0] == f"callouts configure: {config}"
        assert h.metric("callout_ok") == 0


@pytest.mark.parametrize("config, error", [
    ('{"mode": "nope"}', 'callouts bad mode: "nope"'),
    ("not json", "callouts bad configuration: "),
    ("", 'callouts bad mode: ""'),
])
def test_go_callouts_rejects_bad_configuration(config, error, caplog):
    caplog.set_level(logging.ERROR, logger="pyproxywasm")
    with pytest.raises(PluginStartError, match="proxy_on_configure returned false"):
        PluginHarness(GO_CALLOUTS, configuration=config)
    assert any(r.getMessage().startswith(error) for r in caplog.records
               if r.levelno == logging.ERROR)


def test_rust_callouts_starts_and_rejects_an_unknown_mode(caplog):
    with PluginHarness(RUST_CALLOUTS, configuration="mode=stream cluster=g") as h:
        assert h.logs("info") == ["rustcallouts configure: mode=stream cluster=g"]
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    with pytest.raises(PluginStartError, match="proxy_on_configure returned false"):
        PluginHarness(RUST_CALLOUTS, configuration="mode=nope")
    assert "rustcallouts bad mode: nope" in [r.getMessage() for r in caplog.records]


def test_assemblyscript_http_call_plugin_starts():
    with PluginHarness(AS_HTTP_CALL, configuration="cluster=auth path=/check") as h:
        assert h.logs("info") == ["as http_call configure: cluster=auth path=/check"]


@pytest.mark.parametrize("config, cluster", [("up", "up"), ("", "callout")])
def test_wat_callout_edge_reads_its_cluster(config, cluster):
    with PluginHarness(WAT_CALLOUT_EDGE, configuration=config) as h:
        assert h.logs("info") == [f"callout_edge configure cluster={cluster}"]


def test_assemblyscript_grpc_plugin_links_and_starts():
    """The host adapts the SDK's 10/7-param gRPC imports instead of refusing the module."""
    with PluginHarness(AS_GRPC_CALL, configuration="mode=stream cluster=g") as h:
        assert h.logs("info") == ["as grpc configure: mode=stream cluster=g"]
