"""The Rust SDK's own examples under `pyproxywasm serve`, from their committed envoy.yaml
(tests/plugins/rust/sdk_examples/, the SDK's files, unmodified), checked against what each
example's README shows Envoy doing (the Rust SDK has no e2e test of its own; its CI only
validates these configs with Envoy).

Substituted here, as for the Go SDK's (tests/_sdk_serve.py): the directory the configs
load the .wasm from (`/etc/envoy/proxy-wasm-plugins/`, a docker volume there), ports,
`0.0.0.0`, and the docker-compose `httpbin` service (an httpbin stand-in started here).
Left out: envoy_filter_metadata (its config runs Envoy's Lua filter, which serve refuses;
the plugin itself runs under the harness below) and grpc_auth_random (not built here: it
needs a gRPC upstream)."""
from __future__ import annotations

import http.client
import json
import pathlib
import re
import socket

import pytest

from pyproxywasm import Action
from pyproxywasm.testing import PluginHarness

from _sdk_serve import HttpBin, eventually, get_ok, request, serving

EXAMPLES = pathlib.Path(__file__).parent / "plugins" / "rust" / "sdk_examples"


@pytest.fixture
def serve(tmp_path_factory):
    yield from serving(tmp_path_factory, EXAMPLES, code=("/etc/envoy/proxy-wasm-plugins/", "{examples}/{name}/"),
                       upstream=("httpbin", 8080), admin=None)


@pytest.fixture
def httpbin():
    h = HttpBin()
    yield h
    h.close()


def wasm(name: str) -> pathlib.Path:
    return EXAMPLES / name / f"proxy_wasm_example_{name}.wasm"


def test_code_paths_are_the_only_thing_moved():
    """The committed configs name their .wasm in the directory the test maps."""
    for name in ("hello_world", "http_auth_random", "http_body", "http_config", "http_headers"):
        text = (EXAMPLES / name / "envoy.yaml").read_text()
        assert f"/etc/envoy/proxy-wasm-plugins/proxy_wasm_example_{name}.wasm" in text


def test_hello_world(serve):
    """A singleton service: "Hello, World!" at VM start, then a line every 5 s."""
    s = serve("hello_world")
    # on_vm_start runs in the plugin's root context: Envoy prefixes the plugin's name (the
    # README's "wasm log: " lines predate the config's `name`)
    eventually(lambda: "wasm log hello_world: Hello, World!" in s.stderr(), 10, 0.1, s.stderr)
    eventually(lambda: re.search(r"wasm log hello_world: It's \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ UTC, "
                                 r"your lucky number is \d+\.", s.stderr()) is not None, 12, 0.1, s.stderr)


def test_http_auth_random(serve, httpbin):
    s = serve("http_auth_random", httpbin)
    port = s.port(10000)
    seen: dict[int, tuple] = {}

    def both() -> bool:
        r = get_ok(port, "/headers", headers={"User-Agent": "curl/7.81.0", "Accept": "*/*"})
        if r is not None:
            seen[r[0]] = r
        return set(seen) == {200, 403}
    eventually(both, 20, 0.05, s.stderr)
    status, headers, body = seen[200]
    assert headers.get("powered-by") == "proxy-wasm"
    assert json.loads(body)["headers"]["User-Agent"] == "curl/7.81.0"  # httpbin's /headers, through the proxy
    status, headers, body = seen[403]
    assert (headers.get("powered-by"), body) == ("proxy-wasm", b"Access forbidden.\n")
    text = s.stderr()
    assert "wasm log http_auth_random: Access granted." in text
    assert "wasm log http_auth_random: Access forbidden." in text
    calls = [(m, p, h.get("host")) for m, p, h in httpbin.requests if p == "/bytes/1"]
    assert calls and set(calls) == {("GET", "/bytes/1", "httpbin.org")}


def test_http_body(serve):
    s = serve("http_body")
    port = s.port(10000)
    assert request(port, "/hello")[2] == b"Everyone may read this message.\n"
    status, headers, body = request(port, "/secret")
    assert (status, body) == (200, b"Original message body (50 bytes) redacted.\n")
    assert headers.get("content-length") is None or int(headers["content-length"]) == len(body)


def test_http_config(serve):
    s = serve("http_config")
    port = s.port(10000)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("HEAD", "/hello", headers={"Host": f"localhost:{port}"})  # curl -I
        r = c.getresponse()
        r.read()
    finally:
        c.close()
    assert r.status == 200
    assert r.getheader("custom-header") == "The secret to life is meaningless unless you discover it yourself"
    assert (r.getheader("content-length"), r.getheader("content-type")) == ("40", "text/plain")
    assert r.getheader("server") == "envoy" and r.getheader("date")


def test_http_headers(serve):
    s = serve("http_headers")
    port = s.port(10000)
    status, headers, body = request(port, "/hello", headers={"User-Agent": "curl/7.81.0", "Accept": "*/*"})
    assert (status, body, headers.get("hello"), headers.get("powered-by")) == (
        200, b"Hello, World!\n", "World", "proxy-wasm")
    eventually(lambda: "completed." in s.stderr(), 5, 0.05, s.stderr)
    text = s.stderr()
    m = re.search(r"wasm log http_headers: #(\d+) -> :authority: localhost:" + str(port), text)
    assert m is not None, text
    n = m.group(1)
    for line in (f"#{n} -> :path: /hello", f"#{n} -> :method: GET", f"#{n} -> :scheme: http",
                 f"#{n} -> user-agent: curl/7.81.0", f"#{n} -> accept: */*",
                 f"#{n} -> x-forwarded-proto: http",
                 f"#{n} <- :status: 200", f"#{n} <- hello: World", f"#{n} <- powered-by: proxy-wasm",
                 f"#{n} completed."):
        assert f"wasm log http_headers: {line}" in text, line
    assert re.search(rf"#{n} -> x-request-id: [0-9a-f-]{{36}}\n", text), text
    # any other path goes on to the direct response
    assert request(port, "/")[2] == b"Request /hello and be welcomed!\n"


def test_envoy_tcp_routing(serve, httpbin):
    """The plugin picks the TCP upstream cluster by the client address's last byte (even:
    egress-router1, odd: egress-router2) with the set_envoy_filter_state built-in
    (envoy.tcp_proxy.cluster); tcp_proxy connects there. The yaml's two clusters both name
    httpbin:8080: here egress-router2 gets port 8081, a second stand-in, to tell them apart."""
    second = HttpBin()
    try:
        def edit(text: str) -> str:
            head, sep, tail = text.partition("- name: egress-router2")
            return head + sep + tail.replace("port_value: 8080", "port_value: 8081")
        s = serve("envoy_tcp_routing", httpbin, edit=edit, ports={8081: second.port})
        port = s.port(10000)
        answers = {}
        for source in ("127.0.0.10", "127.0.0.11"):
            c = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
            try:
                c.sendall(b"GET /ip HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
            finally:
                c.close()
            answers[source] = data
        assert all(a.startswith(b"HTTP/1.0 200") or a.startswith(b"HTTP/1.1 200") for a in answers.values()), answers
        assert [p for _, p, _ in httpbin.requests] == ["/ip"] and [p for _, p, _ in second.requests] == ["/ip"]
        text = s.stderr()
        assert re.search(r"wasm log envoy_tcp_routing_filter envoy_tcp_routing_filter vm\.envoy_tcp_routing: "
                         r"\[TCP WASM\] Routed source 127\.0\.0\.10:\d+ to egress-router1", text), text
        assert re.search(r"Routed source 127\.0\.0\.11:\d+ to egress-router2", text), text
    finally:
        second.close()


def test_envoy_tcp_routing_under_the_harness():
    """The connection's source address is there when on_new_connection runs (it used to be
    set after: the plugin logged "Missing source address property" and routed nothing)."""
    with PluginHarness(wasm("envoy_tcp_routing"), configuration="standalone") as h:
        for source, cluster in (("10.1.2.4:5000", b"egress-router1"), ("10.1.2.7:5000", b"egress-router2")):
            with h.tcp(properties={"source.address": source}) as c:
                assert h.filter_state(c) == {"envoy.tcp_proxy.cluster": cluster}
        assert not h.logs("warning")


def test_envoy_filter_metadata_config_is_refused_with_its_path(tmp_path):
    """serve has no Lua filter: the config is refused, naming the filter and where it is."""
    import subprocess
    import sys
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text((EXAMPLES / "envoy_filter_metadata" / "envoy.yaml").read_text())
    p = subprocess.run([sys.executable, "-m", "pyproxywasm", "serve", str(cfg)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 2
    assert ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: "
            "unsupported filter envoy.filters.http.lua") in p.stderr


def test_envoy_filter_metadata_under_the_harness():
    """The plugin reads what the Lua filter would have set (dynamic metadata)."""
    with PluginHarness(wasm("envoy_filter_metadata"), name="envoy_metadata_filter") as h:
        req = [(":method", "GET"), (":path", "/"), (":authority", "localhost:10000"), (":scheme", "http")]
        with h.http() as s:
            assert s.send_request_headers(req, end_stream=True) is Action.CONTINUE
        meta = {("metadata", "filter_metadata"): {"envoy.filters.http.lua": {"uppercased-custom-metadata": "SOME-VALUE"}}}
        with h.http(properties=meta) as s:
            s.send_request_headers(req + [("x-custom-metadata", "some-value")], end_stream=True)
            lr = s.local_response
            assert (lr.status, lr.body, lr.headers.get("uppercased-metadata"), lr.headers.get("powered-by")) == (
                200, b'Custom response with Envoy metadata: "SOME-VALUE"\n', "SOME-VALUE", "proxy-wasm")
