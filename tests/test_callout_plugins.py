"""The callout test plugins (tests/plugins/*, built by tests/plugins/build.sh): valid
Proxy-Wasm modules with the shapes their READMEs promise, each one starts and reads its
configuration, and each behaves, call by call, as its README states (recorded calls below;
real servers in test_callout_plugins_net.py)."""
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
        assert h.metric("callout_ok") is not None and h.metric("callout_failed") is not None


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


# ===================================================================================
# Behaviour with recorded calls (no network): every mode and refusal case the plugins'
# READMEs state, answered through the harness (h.http_calls / h.grpc_calls), timeouts on
# the virtual clock. Real servers: test_callout_plugins_net.py.
# ===================================================================================

from pyproxywasm import VmConfig  # noqa: E402

from conftest import REQUEST  # noqa: E402

CONTINUE, PAUSE = 0, 1


def go(mode: str, *, clusters=None, buffer_limit=None, deadline_ms=100, **cfg) -> PluginHarness:
    config = json.dumps({"mode": mode, **cfg})
    return PluginHarness(GO_CALLOUTS, configuration=config, clusters=clusters,
                         buffer_limit=buffer_limit, deadline_ms=deadline_ms)


def new_info(h: PluginHarness, start: int) -> list[str]:
    return h.logs("info")[start:]


def request(h: PluginHarness, *extra: tuple[str, str]):
    """A GET through the plugin; returns (stream, what on_request_headers returned,
    the INFO lines it logged)."""
    n = len(h.logs("info"))
    s = h.http()
    action = s.send_request_headers(REQUEST + list(extra), end_stream=True)
    return s, action, new_info(h, n)


def local(s) -> tuple[int, list, bytes]:
    r = s.local_response
    assert r is not None, "expected a local response"
    return r.status, list(r.headers), r.body


class Counters:
    """The tick mode's counters, relative to when this was made (metrics are process-wide,
    so earlier tests' plugins have counted too)."""

    def __init__(self, h: PluginHarness) -> None:
        self.h = h
        self.base = self._read()

    def _read(self) -> tuple[int, int]:
        return (self.h.metric("callout_ok") or 0, self.h.metric("callout_failed") or 0)

    def __call__(self) -> tuple[int, int]:
        now = self._read()
        return now[0] - self.base[0], now[1] - self.base[1]


def resumed(s) -> bool:
    s.refresh()
    return s.request_complete and not s.request_paused and s.local_response is None


# ---- Go SDK plugin: mode auth ---------------------------------------------------------

GO_AUTH = {"cluster": "auth", "path": "/check", "authority": "auth.local"}


def test_go_auth_call_then_allowed_by_response_header():
    with go("auth", **GO_AUTH) as h:
        s, action, lines = request(h, ("x-user", "alice"), ("x-auth-user", "mallory"))
        assert action == PAUSE and s.request_paused
        assert lines == ["auth: calling auth /check", "auth: paused"]
        (call,) = h.http_calls
        assert call.cluster == "auth" and call.timeout_ms == 1000
        assert list(call.headers) == [(":method", "GET"), (":path", "/check"),
                                      (":authority", "auth.local"), ("x-user", "alice")]
        assert call.body == b"" and call.trailers == []
        n = len(h.logs("info"))
        call.respond(200, {"x-auth-user": "bob"}, b"ignored")
        assert new_info(h, n) == ["auth: response status=200 body=7", "auth: allowed user=bob"]
        assert resumed(s)
        assert s.request_headers.get_all("x-auth-user") == ["bob"]  # replaced, not added
        assert h.http_calls == [] and h.calls_in_flight() == 0


def test_go_auth_user_from_body_and_configured_header_names():
    with go("auth", forward_header="x-who", user_header="x-principal", method="HEAD") as h:
        s, _, lines = request(h, ("x-who", "carol"), ("x-user", "not-forwarded"))
        assert lines == ["auth: calling callout /", "auth: paused"]
        (call,) = h.http_calls
        assert list(call.headers) == [(":method", "HEAD"), (":path", "/"),
                                      (":authority", "callout.local"), ("x-who", "carol")]
        n = len(h.logs("info"))
        call.respond(200, body=b"dave")
        assert new_info(h, n) == ["auth: response status=200 body=4", "auth: allowed user=dave"]
        assert resumed(s) and s.request_headers.get("x-principal") == "dave"


def test_go_auth_denied_answers_403_with_the_call_body():
    with go("auth") as h:
        s, _, _ = request(h)
        assert "x-user" not in h.http_calls[0].headers  # nothing to forward
        n = len(h.logs("info"))
        h.http_calls[0].respond(401, {"x-auth-user": "eve"}, b"who are you")
        assert new_info(h, n) == ["auth: response status=401 body=11", "auth: denied status=401"]
        assert local(s) == (403, [("x-auth-status", "401")], b"who are you")


def test_go_auth_failed_call_answers_503():
    with go("auth") as h:
        s, _, _ = request(h)
        n = len(h.logs("info"))
        h.http_calls[0].fail("connection refused")
        assert new_info(h, n) == ["auth: callout failed"]
        assert local(s) == (503, [], b"auth unavailable")


def test_go_auth_timeout_from_the_request_header_on_the_virtual_clock():
    with go("auth", timeout_ms=5000) as h:
        s, _, _ = request(h, ("x-callout-timeout", "250"))
        assert h.http_calls[0].timeout_ms == 250
        h.advance(249)
        assert len(h.http_calls) == 1 and s.request_paused
        h.advance(1)
        assert h.http_calls == [] and h.logs("info")[-1] == "auth: callout failed"
        assert local(s)[0] == 503
        s2, _, _ = request(h, ("x-callout-timeout", "soon"))  # unparsable: ignored
        assert h.http_calls[0].timeout_ms == 5000


def test_go_auth_timeout_zero_means_no_timeout():
    with go("auth", timeout_ms=0) as h:
        s, _, _ = request(h)
        (call,) = h.http_calls
        assert call.timeout_ms == 0
        h.advance(3_600_000)
        assert h.http_calls == [call] and s.request_paused
        call.respond(200, {"x-auth-user": "late"})
        assert resumed(s)


@pytest.mark.parametrize("mode", ["auth", "multi", "post"])
@pytest.mark.parametrize("extra", [
    [("x-callout-cluster", "nope")],      # unknown cluster
    [("x-callout-no-method", "1")],
    [("x-callout-no-path", "")],
    [("x-callout-no-authority", "yes")],
], ids=["unknown-cluster", "no-method", "no-path", "no-authority"])
def test_go_refused_calls_answer_500_bad_argument(mode, extra):
    with go(mode, clusters=["callout"]) as h:
        s, action, lines = request(h, *extra)
        cluster = dict(extra).get("x-callout-cluster", "callout")
        before = {"auth": [f"auth: calling {cluster} /"],
                  "post": [f"post: calling {cluster} POST / body=0 trailers=0"],
                  "multi": []}[mode]
        assert lines == before + [f"{mode}: http_call failed: bad argument"]
        assert action == PAUSE
        assert local(s) == (500, [("x-callout-error", "bad argument")],
                            b"http_call failed: bad argument")
        assert h.calls == [] and h.calls_in_flight() == 0


def test_go_known_cluster_override_is_called():
    with go("auth", clusters=["callout", "other"]) as h:
        request(h, ("x-callout-cluster", "other"))
        assert [c.cluster for c in h.http_calls] == ["other"]


# ---- Go SDK plugin: mode tick --------------------------------------------------------

def test_go_tick_dispatches_from_the_root_and_counts_answers():
    with go("tick", tick_ms=100, authority="ticks.local") as h:
        counts = Counters(h)
        h.advance(99)
        assert h.http_calls == []
        h.advance(1)
        (c1,) = h.http_calls
        assert list(c1.headers) == [(":method", "GET"), (":path", "/tick/1"),
                                    (":authority", "ticks.local")]
        assert c1.body == b"" and c1.trailers == [] and c1.timeout_ms == 1000
        assert h.logs("info")[-1] == "tick 1: dispatched"
        c1.respond(204, body=b"abc")
        assert h.logs("info")[-1] == "tick 1: status=204 body=3"
        assert counts() == (1, 0)
        h.advance(100)
        (c2,) = h.http_calls
        assert c2.path == "/tick/2"
        c2.fail()
        assert h.logs("info")[-1] == "tick 2: failed"
        assert counts() == (1, 1)


def test_go_tick_calls_time_out_between_ticks():
    with go("tick", tick_ms=100, timeout_ms=30) as h:
        counts = Counters(h)
        h.advance(100)
        assert len(h.http_calls) == 1
        h.advance(30)
        assert h.http_calls == [] and h.logs("info")[-1] == "tick 1: failed"
        h.advance(70)  # tick 2 at 200 ms
        assert [c.path for c in h.http_calls] == ["/tick/2"]
        h.advance(29)
        assert len(h.http_calls) == 1 and counts()[1] == 1
        h.advance(1)
        assert h.http_calls == [] and counts()[1] == 2
        assert h.logs("info")[-1] == "tick 2: failed"


def test_go_tick_refused_call_is_counted():
    with go("tick", clusters=[], tick_ms=50) as h:  # no cluster is known
        counts = Counters(h)
        h.advance(100)
        assert [l for l in h.logs("info") if l.startswith("tick")] == [
            "tick 1: http_call failed: bad argument", "tick 2: http_call failed: bad argument"]
        assert counts() == (0, 2)


# ---- Go SDK plugin: mode multi -------------------------------------------------------

def test_go_multi_resumes_after_the_last_of_several_answers():
    with go("multi", count=3, method="PUT") as h:
        s, action, lines = request(h)
        assert action == PAUSE and lines == ["multi: dispatched 3"]
        calls = h.http_calls
        assert [c.path for c in calls] == ["/multi/1", "/multi/2", "/multi/3"]
        assert all(c.method == "PUT" and c.authority == "callout.local" for c in calls)
        assert len({c.token for c in calls}) == 3
        n = len(h.logs("info"))
        calls[1].respond(200)
        calls[2].fail()
        assert s.request_paused  # one answer still missing
        calls[0].respond(404)
        assert new_info(h, n) == ["multi: 2 status=200", "multi: 3 status=failed",
                                  "multi: 1 status=404", "multi: all 3 answered"]
        assert resumed(s)
        assert [(k, v) for k, v in s.request_headers if k.startswith("x-multi-")] == [
            ("x-multi-2", "200"), ("x-multi-3", "failed"), ("x-multi-1", "404")]


def test_go_multi_refusal_past_the_in_flight_bound():
    """1,025 calls from one request: the per-VM bound (1,024 in flight) refuses the last with
    INTERNAL_FAILURE; the calls already made keep running and their callbacks still log."""
    # One callback making 1,025 calls: no CPU deadline (a loaded machine may pass 100 ms).
    with go("multi", count=1025, deadline_ms=None) as h:
        s, action, lines = request(h)
        assert lines == ["multi: http_call failed: internal failure"]
        assert local(s) == (500, [("x-callout-error", "internal failure")],
                            b"http_call failed: internal failure")
        calls = h.http_calls
        assert len(calls) == 1024 and h.calls_in_flight() == 1024
        calls[0].respond(200)
        calls[1].fail()
        assert h.logs("info")[-2:] == ["multi: 1 status=200", "multi: 2 status=failed"]
        assert h.calls_in_flight() == 1022
        for c in h.http_calls:
            c.respond(200)
        assert h.calls_in_flight() == 0
        assert "multi: all 1025 answered" not in h.logs("info")


# ---- Go SDK plugin: mode post --------------------------------------------------------

POST = {"path": "/ingest", "body": "payload!", "headers": [["content-type", "text/plain"], ["x-a", "1"]],
        "trailers": [["x-sum", "42"]]}


def test_go_post_sends_body_headers_trailers_and_relays_the_answer():
    with go("post", **POST) as h:
        s, action, lines = request(h)
        assert action == PAUSE
        assert lines == ["post: calling callout POST /ingest body=8 trailers=1"]
        (call,) = h.http_calls
        assert list(call.headers) == [(":method", "POST"), (":path", "/ingest"),
                                      (":authority", "callout.local"),
                                      ("content-type", "text/plain"), ("x-a", "1")]
        assert call.body == b"payload!" and list(call.trailers) == [("x-sum", "42")]
        n = len(h.logs("info"))
        call.respond(201, {"x-h": "v"}, b"stored", trailers=[("grpc-status", "0"), ("x-t", "9")])
        assert new_info(h, n) == ["post: response status=201 body=6 trailers=2"]
        assert local(s) == (200, [("x-callout-status", "201"), ("x-callout-body-size", "6"),
                                  ("x-callout-trailer-grpc-status", "0"),
                                  ("x-callout-trailer-x-t", "9")], b"stored")


def test_go_post_failure_and_oversized_body():
    with go("post", **POST) as h:
        s, _, _ = request(h)
        h.http_calls[0].fail()
        assert h.logs("info")[-1] == "post: callout failed"
        assert local(s) == (503, [], b"post unavailable")
    # A body over the host's buffer limit is refused as Envoy refuses it: BAD_ARGUMENT.
    with go("post", buffer_limit=4, **POST) as h:
        s, _, lines = request(h)
        assert lines[-1] == "post: http_call failed: bad argument"
        assert local(s)[0] == 500 and h.calls == []


# ---- Rust SDK plugin -------------------------------------------------------------------

def rust(config: str, **kw) -> PluginHarness:
    return PluginHarness(RUST_CALLOUTS, configuration=config, **kw)


def test_rust_auth_allowed_denied_and_call_shape():
    with rust("mode=auth cluster=idp path=/v1/check authority=idp.local timeout_ms=300") as h:
        s, action, lines = request(h, ("x-user", "alice"))
        assert action == PAUSE and lines == ["auth: calling idp /v1/check", "auth: paused"]
        (call,) = h.http_calls
        assert (call.cluster, call.timeout_ms) == ("idp", 300)
        assert list(call.headers) == [(":method", "GET"), (":path", "/v1/check"),
                                      (":authority", "idp.local"), ("x-user", "alice")]
        assert call.body == b"" and call.trailers == []
        n = len(h.logs("info"))
        call.respond(200, body=b"alice-from-body")
        assert new_info(h, n) == ["auth: response status=200 body=15",
                                  "auth: allowed user=alice-from-body"]
        assert resumed(s) and s.request_headers.get("x-auth-user") == "alice-from-body"

        s, _, _ = request(h)
        assert "x-user" not in h.http_calls[0].headers
        h.http_calls[0].respond(200, {"x-auth-user": "bob"}, b"body")
        assert h.logs("info")[-1] == "auth: allowed user=bob"
        assert resumed(s) and s.request_headers.get("x-auth-user") == "bob"

        s, _, _ = request(h)
        n = len(h.logs("info"))
        h.http_calls[0].respond(500, body=b"down")
        assert new_info(h, n) == ["auth: response status=500 body=4", "auth: denied status=500"]
        assert local(s) == (403, [("x-auth-status", "500")], b"down")


@pytest.mark.parametrize("how, message", [("fail", "connection refused"), ("timeout", "timeout")])
def test_rust_auth_failure_reads_status_11_and_the_reason(how, message):
    with rust("mode=auth timeout_ms=50") as h:
        s, _, _ = request(h)
        n = len(h.logs("info"))
        if how == "fail":
            h.http_calls[0].fail(message)
        else:
            h.advance(50)
        assert new_info(h, n) == [f"auth: callout failed status=11 message={message}"]
        assert local(s) == (503, [], b"auth unavailable")


def test_rust_auth_unknown_cluster_is_bad_argument():
    with rust("mode=auth", clusters=["callout"]) as h:
        s, action, lines = request(h, ("x-callout-cluster", "ghost"))
        assert lines == ["auth: calling ghost /", "auth: http_call failed: BadArgument"]
        assert action == PAUSE
        assert local(s) == (500, [("x-callout-error", "BadArgument")], b"http_call failed: BadArgument")


def test_rust_grpc_unary_reply_with_metadata_and_message():
    with rust("mode=grpc cluster=grpcsvc service=pkg.Auth method=Check timeout_ms=700") as h:
        s, action, lines = request(h, ("x-grpc-message", "ping"), ("x-grpc-md", "m1"))
        assert action == PAUSE
        assert lines == ["grpc: calling grpcsvc pkg.Auth/Check", "grpc: paused"]
        (g,) = h.grpc_calls
        assert (g.stream, g.cluster, g.service, g.method, g.timeout_ms) == (
            False, "grpcsvc", "pkg.Auth", "Check", 700)
        assert list(g.metadata) == [("x-plugin", "rustcallouts"), ("x-grpc-md", "m1")]
        assert g.message == b"ping"
        n = len(h.logs("info"))
        g.respond(b"pong")
        assert new_info(h, n) == ["grpc: reply size=4 message=pong"]
        assert resumed(s)
        assert (s.request_headers.get("x-grpc-status"), s.request_headers.get("x-grpc-reply")) == ("0", "pong")
        assert h.grpc_calls == [] and h.calls_in_flight() == 0


def test_rust_grpc_unary_failure_timeout_and_empty_close():
    with rust("mode=grpc timeout_ms=100") as h:
        s, _, _ = request(h)
        g = h.grpc_calls[0]
        assert g.message == b"" and list(g.metadata) == [("x-plugin", "rustcallouts")]
        n = len(h.logs("info"))
        g.close(14, "backend down")
        assert new_info(h, n) == ["grpc: failed status=14 get_status=14 message=backend down"]
        assert local(s) == (503, [("x-grpc-status", "14"), ("x-grpc-message", "backend down")],
                            b"grpc failed: 14 backend down")

        s, _, _ = request(h)
        n = len(h.logs("info"))
        h.advance(100)  # DEADLINE_EXCEEDED on the virtual clock
        assert new_info(h, n) == ["grpc: failed status=4 get_status=4 message=timeout"]
        assert local(s)[0] == 503

        s, _, _ = request(h)
        h.grpc_calls[0].close(0)  # OK without a message looks like an empty reply
        assert h.logs("info")[-1] == "grpc: reply size=0 message="
        assert resumed(s) and s.request_headers.get("x-grpc-reply") == ""


def test_rust_grpc_cancel_forgets_the_call():
    with rust("mode=grpc") as h:
        s, action, lines = request(h, ("x-grpc-cancel", "1"))
        assert action == CONTINUE
        assert lines == ["grpc: calling callout test.Echo/Unary", "grpc: cancel Ok(())"]
        assert s.request_headers.get("x-grpc-result") == "cancelled"
        (record,) = h.recorder.calls
        assert record.cancelled and not record.done
        assert h.grpc_calls == [] and h.calls_in_flight() == 0
        with pytest.raises(RuntimeError, match="no longer pending"):
            record.respond(b"too late")


def test_rust_grpc_unknown_cluster_is_parse_failure():
    with rust("mode=grpc", clusters=["callout"]) as h:
        s, _, lines = request(h, ("x-callout-cluster", "ghost"))
        assert lines[-1] == "grpc: grpc_call failed: ParseFailure"
        assert local(s) == (500, [("x-callout-error", "ParseFailure")], b"grpc_call failed: ParseFailure")


def test_rust_grpc_bad_argument_panics_in_the_sdk_and_the_host_stays_up():
    """The README: a gRPC call answered BAD_ARGUMENT (here: a message over the buffer
    limit) panics inside the Rust SDK. The VM fails; the host, other VMs, go on."""
    with rust("mode=grpc", buffer_limit=16) as h:
        s, _, _ = request(h, ("x-grpc-message", "x" * 40))
        assert any(l.startswith("panicked at 'unexpected status: 2'") for l in h.logs("critical"))
        assert h.calls == [] and h.calls_in_flight() == 0
        # Later streams on the failed VM get FAIL_CLOSED's 503 (Envoy), no guest call.
        later, _, _ = request(h)
        assert later.failed and local(later)[0] == 503
        assert h.plugin.vm.failed
        other = h.add_plugin(configuration="mode=grpc", vm_config=VmConfig(RUST_CALLOUTS, vm_id="b"))
        s2 = h.http(other)
        assert s2.send_request_headers(REQUEST, end_stream=True) == PAUSE
        h.grpc_calls[0].respond(b"ok")
        assert resumed(s2)


def test_rust_stream_full_exchange():
    with rust("mode=stream cluster=chat service=pkg.Chat method=Talk") as h:
        s, action, lines = request(h, ("x-grpc-md", "z"))
        assert action == PAUSE
        assert lines == ["stream: opening chat pkg.Chat/Talk",
                         "stream: sent one end_stream=false Ok(())",
                         "stream: sent two end_stream=false Ok(())",
                         "stream: sent three end_stream=true Ok(())",
                         "stream: paused"]
        (g,) = h.grpc_calls
        assert (g.stream, g.service, g.method, g.timeout_ms) == (True, "pkg.Chat", "Talk", 0)
        assert list(g.metadata) == [("x-plugin", "rustcallouts"), ("x-grpc-md", "z")]
        assert g.messages == [b"one", b"two", b"three"] and g.half_closed
        n = len(h.logs("info"))
        g.send_initial_metadata([("x-a", "1"), ("x-b", "2")])
        g.send(b"hello")
        g.send(b"world")
        g.send_trailing_metadata({"x-count": "2"})
        assert s.request_paused
        g.close(0, "")
        assert new_info(h, n) == [
            "stream: initial metadata 2", "stream: initial x-a=1", "stream: initial x-b=2",
            "stream: message 1 hello", "stream: message 2 world",
            "stream: trailing metadata 1", "stream: trailing x-count=2",
            "stream: closed status=0 get_status=0 message=none"]
        assert resumed(s)
        got = {k: v for k, v in s.request_headers if k.startswith("x-stream-")}
        assert got == {"x-stream-status": "0", "x-stream-received": "2",
                       "x-stream-messages": "hello,world"}
        assert h.calls_in_flight() == 0


def test_rust_stream_cancel_after_k_sends():
    with rust("mode=stream") as h:
        s, action, lines = request(h, ("x-stream-send", "a,b,c"), ("x-stream-cancel", "2"))
        assert action == CONTINUE
        assert lines == ["stream: opening callout test.Echo/Stream",
                         "stream: sent a end_stream=false Ok(())",
                         "stream: sent b end_stream=false Ok(())",
                         "stream: cancel Ok(())"]
        assert s.request_headers.get("x-stream-result") == "cancelled"
        (record,) = h.recorder.calls
        assert record.cancelled and record.messages == [b"a", b"b"] and not record.half_closed
        assert h.grpc_calls == [] and h.calls_in_flight() == 0


def test_rust_stream_half_close_then_remote_failure():
    with rust("mode=stream") as h:
        s, _, lines = request(h, ("x-stream-close", "1"), ("x-stream-send", "x,y"))
        assert lines[1:] == ["stream: sent x end_stream=false Ok(())",
                             "stream: sent y end_stream=false Ok(())",
                             "stream: close Ok(())", "stream: paused"]
        (g,) = h.grpc_calls
        assert g.messages == [b"x", b"y"] and g.half_closed
        assert h.calls_in_flight() == 1  # kept until the remote side closes
        g.send(b"r1")
        g.close(13, "boom")
        assert h.logs("info")[-2:] == ["stream: message 1 r1",
                                       "stream: closed status=13 get_status=13 message=boom"]
        assert resumed(s)
        got = {k: v for k, v in s.request_headers
               if k in ("x-stream-status", "x-stream-received", "x-stream-messages")}
        assert got == {"x-stream-status": "13", "x-stream-received": "1", "x-stream-messages": "r1"}


def test_rust_stream_unknown_cluster_is_parse_failure():
    with rust("mode=stream", clusters=[]) as h:
        s, _, lines = request(h)
        assert lines == ["stream: opening callout test.Echo/Stream",
                         "stream: grpc_stream failed: ParseFailure"]
        assert local(s)[2] == b"grpc_stream failed: ParseFailure"


def test_rust_root_delete_cancels_streams_and_calls():
    with rust("mode=stream") as h:
        request(h)
        request(h, ("x-stream-close", "1"))
        assert h.calls_in_flight() == 2
        records = list(h.recorder.calls)
        n = len(h.logs("info"))
        assert h.plugin.close()
        assert all(r.cancelled for r in records) and h.calls_in_flight() == 0
        assert new_info(h, n) == []  # no callback into the deleted root


# ---- AssemblyScript SDK plugins -------------------------------------------------------

def test_as_http_call_allowed_with_trailers_and_denied():
    with PluginHarness(AS_HTTP_CALL, configuration="cluster=authz path=/ok authority=a.local timeout_ms=250") as h:
        s, action, lines = request(h, ("x-user", "u1"))
        assert action == PAUSE and lines == ["as auth: calling authz /ok", "as auth: paused"]
        (call,) = h.http_calls
        assert (call.cluster, call.timeout_ms, call.body, call.trailers) == ("authz", 250, b"", [])
        assert list(call.headers) == [(":method", "GET"), (":path", "/ok"),
                                      (":authority", "a.local"), ("x-user", "u1")]
        n = len(h.logs("info"))
        call.respond(200, {"x-auth-user": "zoe"}, b"b", trailers=[("t1", "v1"), ("t2", "v2")])
        assert new_info(h, n) == ["as auth: response headers=2 body=1 trailers=2",
                                  "as auth: trailer t1=v1", "as auth: trailer t2=v2",
                                  "as auth: allowed user=zoe"]
        assert resumed(s) and s.request_headers.get("x-auth-user") == "zoe"

        s, _, _ = request(h)
        h.http_calls[0].respond(200, body=b"from-body")
        assert h.logs("info")[-1] == "as auth: allowed user=from-body"

        s, _, _ = request(h)
        n = len(h.logs("info"))
        h.http_calls[0].respond(302, {"location": "/x"}, b"moved")
        assert new_info(h, n) == ["as auth: response headers=2 body=5 trailers=0",
                                  "as auth: denied status=302"]
        assert local(s) == (403, [("x-auth-status", "302")], b"moved")


def test_as_http_call_failure_timeout_and_refusal():
    with PluginHarness(AS_HTTP_CALL, configuration="timeout_ms=80", clusters=["callout"]) as h:
        s, _, _ = request(h)
        n = len(h.logs("info"))
        h.http_calls[0].fail("reset")
        assert new_info(h, n) == ["as auth: response headers=0 body=0 trailers=0",
                                  "as auth: callout failed status=11 message=reset"]
        assert local(s) == (503, [], b"auth unavailable")

        s, _, _ = request(h)
        h.advance(80)
        assert h.logs("info")[-1] == "as auth: callout failed status=11 message=timeout"

        s, action, lines = request(h, ("x-callout-cluster", "nowhere"))
        assert lines == ["as auth: calling nowhere /", "as auth: http_call failed: 2"]
        assert action == PAUSE and local(s) == (500, [], b"http_call failed: 2")


def test_as_http_call_root_done_cancels_the_call():
    """The host cancels the root's call; the SDK's own on_done then runs the callback with
    (0, 0, 0) as its README says (nothing comes from the host afterwards)."""
    with PluginHarness(AS_HTTP_CALL) as h:
        request(h)
        (call,) = h.http_calls
        n = len(h.logs("info"))
        assert h.plugin.close()
        assert call.cancelled and h.calls_in_flight() == 0
        assert new_info(h, n) == ["as auth: response headers=0 body=0 trailers=0",
                                  "as auth: callout failed status=0 message="]


def test_as_grpc_unary_through_the_adapted_10_param_import():
    with PluginHarness(AS_GRPC_CALL, configuration="cluster=g service=s.S method=M timeout_ms=90") as h:
        s, action, lines = request(h, ("x-grpc-message", "req"))
        assert action == PAUSE
        assert lines == ["as grpc: calling g s.S/M", "as grpc: paused"]
        (g,) = h.grpc_calls
        assert (g.stream, g.cluster, g.service, g.method, g.message, g.timeout_ms) == (
            False, "g", "s.S", "M", b"req", 90)
        assert g.metadata == []  # the SDK's import has no place for metadata
        n = len(h.logs("info"))
        g.respond(b"resp")
        assert new_info(h, n) == ["as grpc: message 1 size=4 resp"]
        assert resumed(s)
        assert (s.request_headers.get("x-grpc-status"), s.request_headers.get("x-grpc-reply")) == ("0", "resp")

        s, _, _ = request(h)
        n = len(h.logs("info"))
        h.grpc_calls[0].close(7, "nope")
        assert new_info(h, n) == ["as grpc: close status=7 get_status=7 message=nope"]
        assert local(s) == (503, [("x-grpc-status", "7")], b"grpc failed: 7 nope")

        s, _, _ = request(h)
        h.advance(90)
        assert h.logs("info")[-1] == "as grpc: close status=4 get_status=4 message=timeout"


def test_as_grpc_stream_through_the_adapted_7_param_import():
    with PluginHarness(AS_GRPC_CALL, configuration="mode=stream") as h:
        s, action, lines = request(h, ("x-stream-send", "p,q,r"))
        assert action == PAUSE
        assert lines == ["as grpc: opening callout test.Echo/Stream",
                         "as grpc: sent p end_stream=0 result=0",
                         "as grpc: sent q end_stream=0 result=0",
                         "as grpc: sent r end_stream=1 result=0", "as grpc: paused"]
        (g,) = h.grpc_calls
        assert g.stream and g.messages == [b"p", b"q", b"r"] and g.half_closed and g.metadata == []
        n = len(h.logs("info"))
        g.send_initial_metadata({"k": "v"})
        g.send(b"m1")
        g.send(b"m2")
        g.send_trailing_metadata({"x-count": "2"})  # the pre-spec export name
        g.close(0)
        assert new_info(h, n) == [
            "as grpc: initial metadata 1", "as grpc: initial k=v",
            "as grpc: message 1 size=2 m1", "as grpc: message 2 size=2 m2",
            "as grpc: trailing metadata 1", "as grpc: trailing x-count=2",
            "as grpc: close status=0 get_status=0 message="]
        assert resumed(s)
        assert (s.request_headers.get("x-stream-status"), s.request_headers.get("x-stream-received")) == ("0", "2")


@pytest.mark.parametrize("mode, what", [("call", "grpc_call"), ("stream", "grpc_stream")])
def test_as_grpc_unknown_cluster_is_parse_failure(mode, what):
    with PluginHarness(AS_GRPC_CALL, configuration=f"mode={mode}", clusters=[]) as h:
        s, _, lines = request(h)
        assert lines[-1] == f"as grpc: {what} failed: 4"
        assert local(s) == (500, [], f"{what} failed: 4".encode())


# ---- WAT plugin callout_edge: the hostcalls at their edges ------------------------------

OK, NOT_FOUND, BAD_ARGUMENT, PARSE_FAILURE, INVALID_MEMORY, INTERNAL_FAILURE = 0, 1, 2, 4, 6, 10

EDGE_CASES = {
    # The call path: Envoy's checks, then ours (bad memory, garbage pairs).
    "timeouts": [("zero_timeout", OK), ("negative_timeout", BAD_ARGUMENT)],
    "bad-pointers": [(k, INVALID_MEMORY) for k in (
        "upstream", "upstream_size", "headers", "headers_size", "body", "trailers", "token",
        "token_partial")],
    "garbage-pairs": [(k, BAD_ARGUMENT) for k in (
        "garbage", "huge_count", "overrun", "short", "truncated", "null_headers",
        "garbage_trailers")],
    "missing": [("no_method", BAD_ARGUMENT), ("no_path", BAD_ARGUMENT),
                ("no_authority", BAD_ARGUMENT), ("empty_map", BAD_ARGUMENT),
                ("empty_authority", OK)],  # Envoy checks presence only
    "unknown-cluster": [("unknown_cluster", BAD_ARGUMENT), ("empty_cluster", BAD_ARGUMENT)],
    # gRPC ops with tokens of the wrong kind or unknown (Envoy's token kinds).
    "grpc-unknown": [("send", BAD_ARGUMENT), ("cancel", NOT_FOUND), ("close", NOT_FOUND),
                     ("cancel_zero", BAD_ARGUMENT), ("close_zero", BAD_ARGUMENT)],
    "grpc-bad": [("call_unknown_cluster", PARSE_FAILURE), ("call_upstream", INVALID_MEMORY),
                 ("call_service", INVALID_MEMORY), ("call_metadata", INVALID_MEMORY),
                 ("call_garbage_metadata", BAD_ARGUMENT), ("call_message", INVALID_MEMORY),
                 ("call_token", INVALID_MEMORY), ("stream_unknown_cluster", PARSE_FAILURE),
                 ("stream_token", INVALID_MEMORY)],
    # Maps and buffers of an answer, read outside its callback: empty map / BAD_ARGUMENT
    # for a value / NOT_FOUND for a buffer, as Envoy answers; no status set yet.
    "outside": [("map6_pairs", OK), ("map6_value", BAD_ARGUMENT), ("map7_pairs", OK),
                ("map4_pairs", OK), ("map5_pairs", OK), ("buffer4", NOT_FOUND),
                ("buffer5", NOT_FOUND), ("get_status", OK), ("status_code", 0)],
}


@pytest.fixture
def edge():
    """callout_edge with one recorded cluster ("callout"): any other name is unknown."""
    with PluginHarness(WAT_CALLOUT_EDGE, clusters=["callout"]) as h:
        yield h


def edge_case(h: PluginHarness, case: str) -> list[str]:
    s, action, lines = request(h, ("x-case", case))
    assert action == CONTINUE and s.request_complete
    return lines


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_refusals_answer_statuses_and_start_nothing(edge, case):
    assert edge_case(edge, case) == [f"callout_edge {case} {k}={v}" for k, v in EDGE_CASES[case]]
    # Only the calls answered OK are in flight (a zero timeout; an empty :authority).
    started = 0 if case == "outside" else sum(1 for _, v in EDGE_CASES[case] if v == OK)
    assert len(edge.calls) == started and edge.calls_in_flight() == started
    # and the VM goes on: a valid call afterwards
    ok = edge_case(edge, "ok")
    assert ok[0] == "callout_edge ok http_call=0"
    assert int(ok[1].removeprefix("callout_edge ok token=")) % 4 == 0  # an HTTP-call token
    assert edge.calls_in_flight() == started + 1


def test_edge_unknown_case_and_default_cluster(edge):
    assert edge_case(edge, "what") == ["callout_edge what unknown-case"]
    n = len(edge.logs("info"))
    edge.http().send_request_headers(REQUEST, end_stream=True)
    assert new_info(edge, n) == ["callout_edge none unknown-case"]


def test_edge_response_callback_reads_maps_buffers_and_status(edge):
    assert edge_case(edge, "ok")[0] == "callout_edge ok http_call=0"
    (call,) = edge.http_calls
    assert (call.cluster, call.timeout_ms, call.body) == ("callout", 1000, b"hello")
    assert list(call.headers) == [(":method", "GET"), (":path", "/edge"), (":authority", "edge.local")]
    assert list(call.trailers) == [("x-edge-trailer", "1")]
    n = len(edge.logs("info"))
    call.respond(201, {"x-a": "1"}, b"abcdef", trailers={"t": "v"})
    assert new_info(edge, n) == [
        f"callout_edge callback token={call.token} headers=2 body=6 trailers=1",
        "callout_edge callback get_status=0 code=0 message=",
        "callout_edge callback map6_pairs=0",
        "callout_edge callback status_value=0 status=201",
        "callout_edge callback map7_pairs=0",
        "callout_edge callback buffer4=0 size=6",
        "callout_edge callback buffer4_past_end=0"]
    # After the callback the answer is gone again.
    assert edge_case(edge, "outside") == [f"callout_edge outside {k}={v}" for k, v in EDGE_CASES["outside"]]


@pytest.mark.parametrize("how, message", [("fail", "connection refused"), ("timeout", "timeout")])
def test_edge_failed_call_callback(edge, how, message):
    edge_case(edge, "ok")
    (call,) = edge.http_calls
    n = len(edge.logs("info"))
    if how == "fail":
        call.fail(message)
    else:
        edge.advance(999)
        assert edge.http_calls == [call]
        edge.advance(1)
    assert new_info(edge, n) == [
        f"callout_edge callback token={call.token} headers=0 body=0 trailers=0",
        f"callout_edge callback get_status=0 code=11 message={message}",
        "callout_edge callback map6_pairs=0",
        "callout_edge callback status_value=1 status=",  # no :status in an empty map
        "callout_edge callback map7_pairs=0",
        "callout_edge callback buffer4=0 size=0",
        "callout_edge callback buffer4_past_end=0"]


def test_edge_grpc_ops_on_an_http_token_leave_the_call_alone(edge):
    assert edge_case(edge, "grpc-send-http") == [
        "callout_edge grpc-send-http http_call=0", "callout_edge grpc-send-http grpc_send=2",
        "callout_edge grpc-send-http grpc_cancel=2", "callout_edge grpc-send-http grpc_close=2"]
    (call,) = edge.http_calls
    assert call.pending and edge.calls_in_flight() == 1
    call.respond(200)
    assert edge.logs("info")[-4] == "callout_edge callback status_value=0 status=200"


def test_edge_grpc_unary_callbacks(edge):
    assert edge_case(edge, "grpc") == ["callout_edge grpc grpc_call=0", "callout_edge grpc token=5"]
    (g,) = edge.grpc_calls
    assert (g.service, g.method, g.message, g.metadata, g.timeout_ms) == (
        "test.Echo", "Unary", b"hello", [], 1000)
    n = len(edge.logs("info"))
    g.respond(b"world")
    assert new_info(edge, n) == ["callout_edge grpc message token=5 size=5", "callout_edge grpc buffer5=0"]
    edge_case(edge, "grpc")
    g = edge.grpc_calls[0]
    n = len(edge.logs("info"))
    g.close(7, "denied")
    assert new_info(edge, n) == [f"callout_edge grpc close token={g.token} status=7",
                                 "callout_edge grpc get_status=0 code=7 message=denied"]
    assert edge.calls_in_flight() == 0


def test_edge_grpc_stream_callbacks_and_token_kinds(edge):
    assert edge_case(edge, "grpc-stream") == [
        "callout_edge grpc-stream grpc_stream=0", "callout_edge grpc-stream token=6",
        "callout_edge grpc-stream grpc_send=0", "callout_edge grpc-stream http_token_as_stream=2"]
    (g,) = edge.grpc_calls
    assert g.stream and g.messages == [b"hello"] and g.half_closed
    n = len(edge.logs("info"))
    g.send_initial_metadata({"a": "1", "b": "2"})
    g.send(b"m1")
    g.send_trailing_metadata({"t": "x"})
    g.close(0)
    assert new_info(edge, n) == [
        "callout_edge grpc initial_metadata token=6 elements=2", "callout_edge grpc map4_pairs=0",
        "callout_edge grpc message token=6 size=2", "callout_edge grpc buffer5=0",
        "callout_edge grpc trailing_metadata token=6 elements=1", "callout_edge grpc map5_pairs=0",
        "callout_edge grpc close token=6 status=0", "callout_edge grpc get_status=0 code=0 message="]
    assert edge.calls_in_flight() == 0


def test_edge_flood_is_bounded_at_1024_and_the_slots_come_back():
    # 10,000 calls from one callback, 1,024 of them recorded through Python: on a loaded
    # machine that can outlast the default deadline, which is not what this test is about.
    with PluginHarness(WAT_CALLOUT_EDGE, deadline_ms=None) as h:
        assert edge_case(h, "flood") == [
            "callout_edge flood accepted=1024 refused=8976 first_refusal=10"]
        assert h.calls_in_flight() == 1024 and len(h.http_calls) == 1024
        assert edge_case(h, "count") == ["callout_edge count responses=0"]
        n = len(h.logs())
        for i, c in enumerate(h.http_calls):
            c.respond(200, body=b"x") if i % 2 else c.fail()
        assert h.logs()[n:] == []  # quiet mode: counted, not logged
        assert h.calls_in_flight() == 0
        assert edge_case(h, "count") == ["callout_edge count responses=1024"]
        # The bound is on calls in flight, not a lifetime budget: a second flood gets 1,024 more.
        assert edge_case(h, "flood") == [
            "callout_edge flood accepted=1024 refused=8976 first_refusal=10"]
        tokens = {c.token for c in h.http_calls}
        assert len(tokens) == 1024 and all(t % 4 == 0 for t in tokens)


def test_edge_trapping_callback_fails_its_vm_only():
    with PluginHarness(WAT_CALLOUT_EDGE) as h:
        other = h.add_plugin(vm_config=VmConfig(WAT_CALLOUT_EDGE, vm_id="other"))
        edge_case(h, "ok")
        assert edge_case(h, "trap-callback")[0] == "callout_edge trap-callback http_call=0"
        first, trapping = h.http_calls
        n = len(h.logs())
        trapping.respond(200, body=b"x")
        lines = h.logs()[n:]
        assert lines[-2] == "callout_edge callback trap"
        assert lines[-1].startswith("proxy_on_http_call_response trapped")
        assert "proxy_on_http_call_response trapped" in h.plugin.vm.error
        later, _, _ = request(h, ("x-case", "ok"))  # FAIL_CLOSED: a 503, no guest call
        assert later.failed and local(later)[0] == 503
        # The failed VM's other call is cancelled: no answer has anywhere to go.
        assert first.cancelled and first not in h.http_calls
        n = len(h.logs())
        first._calls.respond_http(first.token, [(":status", "200")], b"")  # a late answer
        h.dispatch()
        assert h.logs()[n:] == []
        # The host and the other VM go on.
        s = h.http(other)
        s.send_request_headers(REQUEST + [("x-case", "ok")], end_stream=True)
        (call,) = h.http_calls
        call.respond(204)
        assert "callout_edge callback status_value=0 status=204" in h.logs("info")
