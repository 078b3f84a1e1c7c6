"""Envoy's built-in foreign functions and default properties, called from a Go plugin
(tests/plugins/go/builtins): compress/uncompress, declare_property,
set_envoy_filter_state, clear_route_cache, expr_create/evaluate/delete."""
from __future__ import annotations

import struct
import zlib

import pytest
from conftest import PLUGINS

from pyproxywasm.builtins import parse_protobuf
from pyproxywasm.http import HttpStream
from pyproxywasm.testing import PluginHarness

BUILTINS = PLUGINS / "go" / "builtins.wasm"
OK = "ok"
NOT_FOUND = "error status returned by host: not found"
BAD_ARGUMENT = "error status returned by host: bad argument"


def send(h: PluginHarness, **headers: str) -> HttpStream:
    s = h.http()
    s.send_request_headers([(":method", "GET"), (":path", "/p?q=1"), (":authority", "a.example")]
                           + [(k.replace("_", "-"), v) for k, v in headers.items()], end_stream=True)
    return s


def request(h: PluginHarness, **headers: str) -> dict[str, str]:
    with send(h, **headers) as s:
        return dict(s.request_headers)


def test_compress_and_uncompress_are_zlib_as_in_envoy():
    with PluginHarness(BUILTINS) as h:
        r = request(h, x_compress="hello world!")
        assert r["x-compress-status"] == OK
        # what the Go SDK's foreign_call_on_tick example prints under Envoy
        assert r["x-compressed"] == "789ccb48cdc9c95728cf2fca495104001e89047e"
        assert zlib.decompress(bytes.fromhex(r["x-compressed"])) == b"hello world!"
        assert (r["x-uncompress-status"], r["x-roundtrip"]) == (OK, "hello world!")
        bad = request(h, x_uncompress="not zlib")
        assert bad["x-uncompress-status"] == "unknown status code: 3"  # SERIALIZATION_FAILURE


def test_declare_property_once_then_bad_argument_and_the_property_is_usable():
    with PluginHarness(BUILTINS) as h:
        assert "declare my.state: ok" in h.logs("info")
        assert f"declare my.state again: {BAD_ARGUMENT}" in h.logs("info")
        (decl,) = [d for per_ctx in h.host.builtins.declared.values() for d in per_ctx.values()]
        assert (decl.name, decl.readonly, decl.type, decl.span) == (
            "my.state", True, "string", "downstream_request")
        r = request(h, x_set_declared="v1")
        assert (r["x-set-declared-status"], r["x-get-declared"]) == (OK, "v1 (ok)")



def test_a_read_only_property_takes_one_value_per_stream_as_in_envoy():
    """Envoy: the root declared my.state read-only, so a stream's first set is OK and every
    later one BAD_ARGUMENT with the value kept; the next stream starts afresh. Undeclared
    properties, and ones declared from a stream context, stay writable."""
    with PluginHarness(BUILTINS) as h:
        r = request(h, x_set_twice="my.state")
        assert (r["x-set-first-status"], r["x-set-second-status"], r["x-set-twice-value"]) == (
            OK, BAD_ARGUMENT, "first (ok)")
        r = request(h, x_set_twice="my.state")  # a new stream: a new filter state
        assert (r["x-set-first-status"], r["x-set-second-status"]) == (OK, BAD_ARGUMENT)
        r = request(h, x_set_declared="v1", x_set_twice="my.state")  # set before: refused
        assert (r["x-set-declared-status"], r["x-set-first-status"],
                r["x-set-second-status"], r["x-set-twice-value"]) == (
            OK, BAD_ARGUMENT, BAD_ARGUMENT, "v1 (ok)")
        r = request(h, x_set_twice="other.state")
        assert (r["x-set-first-status"], r["x-set-second-status"], r["x-set-twice-value"]) == (
            OK, OK, "second (ok)")
        r = request(h, x_declare="stream.state", x_set_twice="stream.state")
        assert (r["x-declare-status"], r["x-set-first-status"], r["x-set-second-status"],
                r["x-set-twice-value"]) == (OK, OK, OK, "second (ok)")

def test_set_envoy_filter_state_known_unknown_invalid_and_from_a_root():
    with PluginHarness(BUILTINS) as h:
        # from on_plugin_start: a root context has no stream, Envoy answers NOT_FOUND
        assert f"root set_envoy_filter_state: {NOT_FOUND}" in h.logs("info")
        s = send(h, x_filter_state="envoy.tcp_proxy.cluster=c9")
        r = dict(s.request_headers)
        assert (r["x-filter-state-status"], r["x-filter-state-read"]) == (OK, "c9 (ok)")
        assert h.filter_state(s) == {"envoy.tcp_proxy.cluster": b"c9"}
        s.finish()
        assert request(h, x_filter_state="no.such.key=1")["x-filter-state-status"] == NOT_FOUND
        assert request(h, x_filter_state="envoy.upstream.dynamic_port=abc")[
            "x-filter-state-status"] == BAD_ARGUMENT
    with PluginHarness(BUILTINS, filter_state_keys=["my.key"]) as h:
        assert request(h, x_filter_state="my.key=x")["x-filter-state-status"] == OK


def test_clear_route_cache_is_ok_and_counted_per_stream():
    with PluginHarness(BUILTINS) as h:
        s, other = send(h, x_clear_route="1"), send(h)
        assert s.request_headers.get("x-clear-route-status") == OK
        assert (h.route_cache_clears(s), h.route_cache_clears(other)) == (1, 0)


def test_per_stream_records_are_bounded(monkeypatch):
    """A host serving streams without end keeps only the latest contexts' records (they
    used to stay until the VM was freed: one entry per request that cleared the route
    cache, say)."""
    from pyproxywasm import builtins
    monkeypatch.setattr(builtins, "MAX_CONTEXT_RECORDS", 8)
    with PluginHarness(BUILTINS) as h:
        streams = [send(h, x_clear_route="1") for _ in range(20)]
        assert len(h.host.builtins.route_cache_clears) == 8
        assert [h.route_cache_clears(s) for s in streams] == [0] * 12 + [1] * 8


def test_default_properties_and_overrides():
    with PluginHarness(BUILTINS, name="bname", root_id="broot", vm_id="bvm") as h:
        logs = h.logs("info")
        for line in ['property plugin_name = "bname" (ok)', 'property plugin_root_id = "broot" (ok)',
                     'property plugin_vm_id = "bvm" (ok)', 'property node.id = "pyproxywasm" (ok)',
                     'property xds.node.id = "pyproxywasm" (ok)',
                     'property cluster_name = "pyproxywasm" (ok)',
                     'property xds.route_name = "pyproxywasm" (ok)',
                     "property listener_direction = 0"]:
            assert line in logs
    props = {"node": {"id": "sidecar~1"}, "xds.cluster_name": "payments", "listener_direction": 1}
    with PluginHarness(BUILTINS, properties=props) as h:
        logs = h.logs("info")
        assert 'property node.id = "sidecar~1" (ok)' in logs
        assert 'property node.cluster = "pyproxywasm" (ok)' in logs  # merged, not replaced
        assert 'property xds.cluster_name = "payments" (ok)' in logs
        assert "property listener_direction = 1" in logs


def test_cel_expressions_create_evaluate_delete():
    pytest.importorskip("celpy")
    with PluginHarness(BUILTINS) as h:
        r = request(h, x_expr='request.path + "!"')
        assert (r["x-expr-create-status"], r["x-expr-evaluate-status"]) == (OK, OK)
        assert bytes.fromhex(r["x-expr-value"]) == b"/p?q=1!"
        assert r["x-expr-delete-status"] == OK and r["x-expr-after-delete-status"] == NOT_FOUND
        r = request(h, x_expr="size(request.headers['x-expr']) * 2 + request.size")
        assert bytes.fromhex(r["x-expr-value"]) == struct.pack("<q", 2 * len(
            "size(request.headers['x-expr']) * 2 + request.size"))
        r = request(h, x_expr="request.host == 'a.example' && plugin_vm_id == ''")
        assert bytes.fromhex(r["x-expr-value"]) == b"\x01"
        assert request(h, x_expr="1 +")["x-expr-create-status"] == BAD_ARGUMENT


def test_a_hosts_own_foreign_function_overrides_a_builtin():
    with PluginHarness(BUILTINS, foreign_functions={"compress": lambda b: b[::-1]}) as h:
        assert request(h, x_compress="abc")["x-compressed"] == b"cba".hex()


def test_protobuf_arguments_that_do_not_parse():
    assert parse_protobuf(b"\x0a\x02hi\x10\x01") == {1: b"hi", 2: 1}
    for bad in (b"\x0a\x05hi", b"\x0a", b"\x00\x01", b"\x0f\x01", b"\x10\xff"):
        with pytest.raises(ValueError):
            parse_protobuf(bad)
