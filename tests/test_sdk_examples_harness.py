"""The Go SDK's own examples (tests/plugins/go/sdk_examples/, built from the SDK's sources)
under PluginHarness, written as a plugin author would test them: each test gives the
plugin its configuration from the example's envoy.yaml, drives requests, connections and
the virtual clock, plays the upstream for the calls it makes, and asserts on what the
example does. No helper code beyond that configuration."""
from __future__ import annotations

import pathlib
import zlib

from pyproxywasm import Action, VmConfig
from pyproxywasm.metrics import StatsTag
from pyproxywasm.testing import PluginHarness

EXAMPLES = pathlib.Path(__file__).parent / "plugins" / "go" / "sdk_examples"


def example(name: str) -> pathlib.Path:
    return EXAMPLES / name / "main.wasm"


def get(path: str = "/", *headers: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":path", path), (":authority", "localhost:18000"), (":scheme", "http"),
            *headers]


# ---- issue 9's two ------------------------------------------------------------------------------
def test_metrics():
    with PluginHarness(example("metrics")) as h:
        for value, n in (("foo", 3), ("bar", 5)):
            for _ in range(n):
                with h.http() as s:
                    assert s.send_request_headers(get("/", ("my-custom-header", value)), end_stream=True) \
                        is Action.CONTINUE
        with h.http() as s:  # no header: no metric
            s.send_request_headers(get("/"), end_stream=True)
        assert h.metric("custom_header_value_counts_value=foo_reporter=wasmgosdk") == 3
        assert h.metric("custom_header_value_counts_value=bar_reporter=wasmgosdk") == 5
        # the example's stats_config.stats_tags
        tags = [StatsTag("value", r"(_value=([a-zA-Z]+))"), StatsTag("reporter", r"(_reporter=([a-zA-Z]+))")]
        assert h.prometheus(tags) == (
            "# TYPE custom_header_value_counts counter\n"
            'custom_header_value_counts{value="bar",reporter="wasmgosdk"} 5\n'
            'custom_header_value_counts{value="foo",reporter="wasmgosdk"} 3\n'
            "\n")


def test_foreign_call_on_tick():
    with PluginHarness(example("foreign_call_on_tick")) as h:
        assert h.logs("info") == ["set tick period milliseconds: 1"]
        h.advance(5)
        compressed = zlib.compress(b"hello world!").hex()  # Envoy's compress: zlib's format
        assert h.logs("info")[1:] == [f"foreign function (compress) called: {i}, result: {compressed}"
                                      for i in range(1, 6)]
        assert not h.logs("critical")


# ---- the others -----------------------------------------------------------------------------------
def test_helloworld():
    with PluginHarness(example("helloworld")) as h:
        assert h.logs("info") == ["OnPluginStart from Go!"]
        h.advance(999)
        assert len(h.logs("info")) == 1
        h.advance(1)
        tick = h.logs("info")[1:]
        assert tick[0].startswith("It's 1700000001000000000: random value: ") and tick[1] == "OnTick called"
        with h.http() as s:  # its HTTP contexts are the SDK's defaults
            assert s.send_request_headers(get(), end_stream=True) is Action.CONTINUE


def test_dispatch_call_on_tick():
    code = example("dispatch_call_on_tick")
    with PluginHarness(code, plugins=[dict(configuration="plugin1"), dict(configuration="plugin2")]) as h:
        for n in range(1, 4):
            h.advance(100)
            calls = h.http_calls
            assert [c.cluster for c in calls] == ["web_service", "web_service"]
            for c in calls:
                assert (c.method, c.authority, c.headers.get("accept")) == ("GET", "some_authority", "*/*")
                assert c.path in ("/ok", "/fail")
                c.respond(200 if c.path == "/ok" else 503, [("x-answer", c.path)], b"example body\n")
            h.dispatch()
            logs = h.logs("info")
            assert f"called {n} for contextID=1" in logs and f"called {n} for contextID=2" in logs
        logs = h.logs("info")
        assert "response header for the dispatched call: :status: 200" in logs or \
            "response header for the dispatched call: :status: 503" in logs
        assert "response header for the dispatched call: x-answer: /ok" in logs or \
            "response header for the dispatched call: x-answer: /fail" in logs


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def test_http_auth_random():
    with PluginHarness(example("http_auth_random")) as h:
        outcomes = set()
        for body in (b'{"uuid": "a"}', b'{"uuid": "b"}', b'{"uuid": "c"}', b'{"uuid": "d"}'):
            with h.http() as s:
                req = get("/uuid", ("this-is-key", "this-is-value"))
                assert s.send_request_headers(req, end_stream=True) is Action.PAUSE
                (call,) = h.http_calls
                assert call.cluster == "httpbin" and call.timeout_ms == 50000
                assert list(call.headers) == req  # the request's own headers
                call.respond(200, [("content-type", "application/json")], body)
                if fnv1a32(body) % 2 == 0:
                    assert s.local_response is None and s.request_headers_forwarded
                    outcomes.add("granted")
                else:
                    lr = s.local_response
                    assert (lr.status, lr.body, lr.headers.get("powered-by")) == (
                        403, b"access forbidden", "proxy-wasm-go-sdk!!")
                    outcomes.add("forbidden")
        assert outcomes == {"granted", "forbidden"}
        logs = h.logs("info")
        assert "access granted" in logs and "access forbidden" in logs
        assert "response header from httpbin: :status: 200" in logs
        assert "request header: this-is-key: this-is-value" in logs


def test_http_body_set_and_echo():
    code = example("http_body")
    with PluginHarness(code, configuration="body-set") as h:
        for op, expected in (("append", b"[original body][this is appended body]"),
                             ("prepend", b"[this is prepended body][original body]"),
                             ("replace", b"[this is replaced body]"),
                             ("invalid", b"[this is replaced body]")):
            with h.http() as s:  # on the request
                s.send_request_headers(get("/anything", ("content-length", "15"), ("buffer-replace-at", "request"),
                                           ("buffer-operation", op)))
                assert "content-length" not in s.request_headers
                assert s.send_request_body(b"[original ", end_stream=False) is Action.PAUSE
                assert s.send_request_body(b"body]", end_stream=True) is Action.CONTINUE
                assert s.take_request_body() == expected
            with h.http() as s:  # on the response
                s.send_request_headers(get("/anything", ("content-length", "15"), ("buffer-replace-at", "response"),
                                           ("buffer-operation", op)))
                assert s.send_request_body(b"[original body]", end_stream=True) is Action.CONTINUE
                assert s.take_request_body() == b"[original body]"
                s.send_response_headers([(":status", "200"), ("content-length", "15")])
                assert "content-length" not in s.response_headers
                assert s.send_response_body(b"[original body]", end_stream=True) is Action.CONTINUE
                assert s.take_response_body() == expected
        with h.http() as s:  # no content-length: refused
            s.send_request_headers(get("/anything"), end_stream=True)
            assert (s.local_response.status, s.local_response.body) == (400, b"content must be provided")
        assert "original request body: [original body]" in h.logs("info")
        assert "original response body: [original body]" in h.logs("info")
    with PluginHarness(code, configuration="echo") as h:
        with h.http() as s:
            s.send_request_headers(get("/anything", ("content-length", "5")))
            assert s.send_request_body(b"hel") is Action.PAUSE
            s.send_request_body(b"lo", end_stream=True)
            assert (s.local_response.status, s.local_response.body) == (200, b"hello")


def test_http_body_chunk():
    with PluginHarness(example("http_body_chunk")) as h:
        with h.http() as s:
            s.send_request_headers([(":method", "POST")] + get("/anything")[1:])
            assert s.send_request_body(b"x" * 1000) is Action.PAUSE
            s.send_request_body(b"y" * 100 + b"pattern\n", end_stream=True)
            lr = s.local_response
            assert (lr.status, lr.body, lr.headers.get("powered-by")) == (
                403, b"pattern found in chunk: 2", "proxy-wasm-go-sdk")
        assert "read chunk size: 1000" in h.logs("info") and "read chunk size: 108" in h.logs("info")
        with h.http() as s:
            s.send_request_headers([(":method", "POST")] + get("/anything")[1:])
            s.send_request_body(b"abc")
            assert s.send_request_body(b"def", end_stream=True) is Action.CONTINUE
            assert s.local_response is None and s.take_request_body() == b"abcdef"
        assert "pattern not found" in h.logs("info")
        assert not h.logs("error")


def test_http_headers():
    config = '{\n  "header": "x-wasm-header",\n  "value": "demo-wasm"\n}\n'
    with PluginHarness(example("http_headers"), configuration=config) as h:
        assert "header from config: x-wasm-header = demo-wasm" in h.logs("info")
        with h.http() as s:
            s.send_request_headers(get("/uuid", ("this-is-key", "this-is-value")), end_stream=True)
            assert s.request_headers.get("test") == "best"
            s.send_response_headers([(":status", "200"), ("server", "envoy")], end_stream=True)
            assert s.response_headers.get("x-wasm-header") == "demo-wasm"
            assert s.response_headers.get("x-proxy-wasm-go-sdk-example") == "http_headers"
            cid = s.context_id
        logs = h.logs("info")
        assert "request header --> this-is-key: this-is-value" in logs
        assert "response header <-- server: envoy" in logs and f"{cid} finished" in logs
    # a configuration that is not the expected JSON fails plugin start
    import pytest

    from pyproxywasm import PluginStartError
    with pytest.raises(PluginStartError):
        PluginHarness(example("http_headers"), configuration="not json")


def test_http_routing():
    seen = set()
    with PluginHarness(example("http_routing")) as h:
        for _ in range(64):
            with h.http() as s:
                s.send_request_headers(get("/"), end_stream=True)
                seen.add(s.request_headers.get(":authority"))
            if len(seen) == 2:
                break
    assert seen == {"localhost:18000", "localhost:18000-canary"}
    with PluginHarness(example("http_routing"), configuration=b"\x02") as h:  # the dice, overridden
        with h.http() as s:
            s.send_request_headers(get("/"), end_stream=True)
            assert s.request_headers.get(":authority") == "localhost:18000-canary"


def test_json_validation():
    with PluginHarness(example("json_validation"), configuration='{ "requiredKeys": ["id", "token"] }\n') as h:
        with h.http() as s:
            s.send_request_headers(get("/"), end_stream=True)
            assert (s.local_response.status, s.local_response.body) == (403, b"content-type must be provided")
        post = [(":method", "POST")] + get("/")[1:] + [("content-type", "application/json")]
        with h.http() as s:
            s.send_request_headers(post)
            assert s.send_request_body(b'{"id": "abc123", "token": "xyz456"}', end_stream=True) is Action.CONTINUE
            assert s.local_response is None
        with h.http() as s:
            s.send_request_headers(post)
            s.send_request_body(b'{"id": "abc123"}', end_stream=True)
            assert (s.local_response.status, s.local_response.body) == (403, b"invalid payload")
        assert any("required key (token) is missing" in m for m in h.logs("error"))


def test_multiple_dispatches():
    with PluginHarness(example("multiple_dispatches")) as h:
        with h.http() as s:
            s.send_request_headers(get("/"), end_stream=True)
            assert s.send_response_headers([(":status", "200")], end_stream=True) is Action.PAUSE
            calls = h.http_calls
            assert len(calls) == 10 and {(c.cluster, c.path, c.authority) for c in calls} == {("httpbin", "/", "")}
            for c in calls:
                assert s.response_paused
                c.respond(200, body=b"ok")
            assert not s.response_paused and s.response_headers.get("total-dispatched") == "10"
        assert h.logs("info") == [f"pending dispatched requests: {i}" for i in range(9, 0, -1)] + [
            "response resumed after processed 10 dispatched request"]


def test_network():
    props = {"upstream.address": "127.0.0.1:8099",
             ("cluster_metadata", "filter_metadata"): {
                 "location": {"cloud_provider": "aws", "region": "ap-northeast-1", "az": "ap-northeast-1a"}}}
    with PluginHarness(example("network")) as h:
        with h.tcp(properties=props) as c:
            assert c.send_downstream(b"GET / HTTP/1.1\r\nThis-Is-Key: this-is-value\r\n\r\n") is Action.CONTINUE
            assert c.send_upstream(b"HTTP/1.1 200 OK\r\n\r\n") is Action.CONTINUE
            assert c.take_upstream_data() == b"HTTP/1.1 200 OK\r\n\r\n"
            c.close_downstream()
        logs = h.logs("info")
        assert logs[0] == "new connection!"
        assert ">>>>>> downstream data received >>>>>>\nGET / HTTP/1.1\r\nThis-Is-Key: this-is-value\r\n\r\n" in logs
        assert "remote address: 127.0.0.1:8099" in logs
        assert {m for m in logs if m.startswith("upstream cluster metadata")} == {
            "upstream cluster metadata location[cloud_provider]=aws",
            "upstream cluster metadata location[region]=ap-northeast-1",
            "upstream cluster metadata location[az]=ap-northeast-1a"}
        assert "downstream connection close!" in logs and logs[-1] == "connection complete!"
        assert h.metric("proxy_wasm_go.connection_counter") == 1


def test_postpone_requests():
    with PluginHarness(example("postpone_requests")) as h:
        with h.http() as s:
            assert s.send_request_headers(get("/"), end_stream=True) is Action.PAUSE
            assert h.logs("info") == [f"postpone request with contextID={s.context_id}"]
            h.advance(999)
            assert s.request_paused
            h.advance(1)
            assert not s.request_paused and s.request_headers_forwarded
            assert h.logs("info")[-1] == f"resume request with contextID={s.context_id}"
        assert s.context_id == 2  # as the e2e test expects of Envoy: the VM's first stream


def test_properties():
    def route(auth: str | None) -> dict:
        meta = {} if auth is None else {"envoy.filters.http.wasm": {"auth": auth}}
        return {("route_metadata", "filter_metadata"): meta}

    with PluginHarness(example("properties")) as h:
        for auth, header, status in (("cookie", None, 401), ("cookie", ("cookie", "value"), None),
                                     ("authorization", None, 401), ("authorization", ("authorization", "token"), None),
                                     (None, None, None)):
            with h.http(properties=route(auth)) as s:
                s.send_request_headers(get("/", *([header] if header else [])), end_stream=True)
                lr = s.local_response
                assert (lr.status if lr else None) == status
        logs = h.logs("info")
        assert 'auth header is "cookie"' in logs and 'auth header is "authorization"' in logs
        assert "no auth header for route" in logs


def test_shared_data():
    with PluginHarness(example("shared_data")) as h:
        assert h.shared_data("shared_data_key").value == b""  # set at VM start
        for _ in range(10):
            with h.http() as s:
                s.send_request_headers(get("/"), end_stream=True)
        assert h.logs("info") == [f"shared value: {i}" for i in range(1, 11)]
        assert h.shared_data("shared_data_key").value == (10).to_bytes(8, "little")


def test_shared_queue():
    receiver = example("shared_queue/receiver")
    with PluginHarness(receiver, vm_id="receiver", singleton=True, plugins=[
            dict(configuration=q) for q in ("http_request_headers", "http_response_headers", "tcp_data_hashes")]) as h:
        sender = VmConfig(example("shared_queue/sender"), vm_id="sender")
        http = h.add_plugin(configuration="http", vm_config=sender, singleton=False)
        tcp = h.add_plugin(configuration="tcp", vm_config=sender, singleton=False)
        with h.http(http) as s:
            s.send_request_headers(get("/"), end_stream=True)
            s.send_response_headers([(":status", "200")], end_stream=True)
        with h.tcp(tcp) as c:
            c.send_downstream(b"GET / HTTP/1.1\r\n\r\n")
            c.send_upstream(b"HTTP/1.1 200 OK\r\n\r\n")
        h.dispatch()
        logs = h.logs("info")
        assert 'enqueued data: {"key": ":method","value": "GET"}' in logs
        assert any("dequeued data from http_request_headers" in m and ':method' in m for m in logs)
        assert any("dequeued data from http_response_headers" in m and ':status' in m for m in logs)
        assert any("dequeued data from tcp_data_hashes" in m for m in logs)
        # one notification per item (as Envoy posts them), one item dequeued per notification
        dequeued = [m for m in logs if "dequeued data from http_request_headers" in m]
        assert len(dequeued) == len([m for m in logs if m.startswith('enqueued data: {"key"')]) == 4  # the four request headers
        assert h.queue_size("http_request_headers", "receiver") == 0


def test_vm_plugin_configuration():
    with PluginHarness(example("vm_plugin_configuration"),
                       vm_configuration='{\n  "name": "vm configuration"\n}\n',
                       configuration='{\n  "name": "plugin configuration"\n}\n') as h:
        assert h.logs("info") == ['vm config: {\n  "name": "vm configuration"\n}\n',
                                  'plugin config: {\n  "name": "plugin configuration"\n}\n']
