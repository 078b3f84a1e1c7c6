"""`pyproxywasm serve` end to end: the proxy on free ports on 127.0.0.1, upstream servers
started here, real HTTP and TCP clients, the committed test plugins."""
from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from pyproxywasm.serve import DEFAULT_CONFIG, Server, loads

from conftest import GO_HTTP, GO_TCP
from servers import http1_tls_server, http2_server, tls_ca  # noqa: F401 - fixtures

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = {"name": "envoy.filters.http.router"}
LOCAL = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}


# ---- upstream servers ---------------------------------------------------------------------
class Upstream(http.server.ThreadingHTTPServer):
    """Answers with what it received (JSON); /slow/<ms> waits first; /stream sends one chunk,
    waits for `gate`, then a second."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, name: str = "up") -> None:
        self.name = name
        self.status = 200  # of the JSON answers
        self.gate = threading.Event()
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        pass  # a client the proxy gave up on (the timeout test): not this test's concern

    def close(self) -> None:
        self.gate.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _answer(self) -> None:
        srv: Upstream = self.server
        body = self._body()
        seen = {"server": srv.name, "method": self.command, "path": self.path,
                "headers": {k.lower(): ", ".join(self.headers.get_all(k)) for k in self.headers}, "body_len": len(body),
                "body_head": body[:64].decode("latin-1")}
        srv.requests.append(seen)
        if self.path.startswith("/slow/"):
            time.sleep(int(self.path.split("/")[2]) / 1000)
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i, chunk in enumerate((b"first\n", b"second\n")):
                if i:
                    srv.gate.wait(10)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/big/"):
            data = b"x" * int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        out = json.dumps(seen).encode()
        self.send_response(srv.status)
        self.send_header("content-type", "application/json")
        self.send_header("x-upstream-resp", "1")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _answer


@pytest.fixture
def upstreams():
    made: list[Upstream] = []

    def make(name: str = "up") -> Upstream:
        u = Upstream(name)
        made.append(u)
        return u
    yield make
    for u in made:
        u.close()


# ---- configs ---------------------------------------------------------------------------------
def cluster(name: str, *ports: int, timeout: str = "1s") -> dict:
    return {"name": name, "connect_timeout": timeout, "type": "STATIC", "load_assignment": {"endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                          for p in ports]}]}}


def wasm(code, configuration: str = "", **config) -> dict:
    return {"name": "envoy.filters.http.wasm", "typed_config": {"@type": WASM, "config": {
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
        "vm_config": {"code": {"local": {"filename": str(code)}}}, **config}}}


def http_listener(vhosts: list, filters: list | None = None, name: str = "main") -> dict:
    return {"name": name, "address": LOCAL, "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "in", "route_config": {"virtual_hosts": vhosts},
            "http_filters": (filters or []) + [ROUTER]}}]}]}


def bootstrap(listeners: list, clusters: list, **top) -> dict:
    return {"static_resources": {"listeners": listeners, "clusters": clusters},
            "admin": {"address": LOCAL}, **top}


@pytest.fixture(params=["auto", "net"])
def serve(request):
    """Starts a Server; every test runs with the default upstream client ("auto": the
    httptools one for plain HTTP/1.1) and with pyproxywasm.net's."""
    servers: list[Server] = []

    def start(doc: dict, concurrency: int = 1) -> Server:
        s = Server(loads(json.dumps(doc)), concurrency=concurrency, client=request.param)
        s.start()
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def get(port: int, path: str = "/", method: str = "GET", headers: dict | None = None,
        body: bytes | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        headers: dict[str, str] = {}
        for k, v in r.getheaders():
            headers[k.lower()] = f"{headers[k.lower()]}, {v}" if k.lower() in headers else v
        return r.status, headers, r.read()
    finally:
        c.close()


# ---- routing ------------------------------------------------------------------------------------
def test_routing_by_domain_path_regex_and_headers(serve, upstreams):
    a, b = upstreams("a"), upstreams("b")
    vhosts = [
        {"name": "exact", "domains": ["api.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "suffix", "domains": ["*.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "b"}}]},
        {"name": "prefix", "domains": ["internal.*"], "routes": [
            {"match": {"prefix": "/", "headers": [{"name": "x-canary", "exact_match": "1"}]}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "any", "domains": ["*"], "routes": [
            {"match": {"path": "/exact"}, "route": {"cluster": "b"}},
            {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "b"}},
            {"match": {"prefix": "/a/"}, "route": {"cluster": "a"}}]},
    ]
    s = serve(bootstrap([http_listener(vhosts)], [cluster("a", a.port), cluster("b", b.port)]))
    port = s.ports["main"]

    def who(path: str, host: str, **h) -> str | int:
        status, _, body = get(port, path, headers={"host": host, **h})
        return json.loads(body)["server"] if status == 200 else status

    assert who("/x", "api.example.com") == "a"
    # as in Envoy (no strip_any_host_port), a port is part of the name: the catch-all host
    assert who("/x", "api.example.com:8080") == 404
    assert who("/x", "www.example.com") == "b"
    assert who("/x", "internal.corp") == "a"
    assert who("/x", "internal.corp", **{"x-canary": "1"}) == "b"
    assert who("/exact", "other") == "b"
    assert who("/exact/more", "other") == 404
    assert who("/items/42", "other") == "b"
    assert who("/items/42x", "other") == 404  # the regex must match the whole path
    assert who("/a/b?q=1", "other") == "a"
    assert a.requests[-1]["path"] == "/a/b?q=1"
    assert who("/nothing", "other") == 404


def test_routing_by_domain_behind_a_wasm_filter(serve, upstreams):
    """The request's Host picks the virtual host (and is the plugin's :authority) when a
    filter runs too: it used to be replaced by the listener's own address."""
    u = upstreams("a")
    vhosts = [{"name": "api", "domains": ["api.example.com"], "routes": [
                  {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
              {"name": "any", "domains": ["*"], "routes": [
                  {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "any"}}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "headers props")])], [cluster("a", u.port)]))
    status, _, body = get(s.ports["main"], "/x", headers={"Host": "api.example.com"})
    assert status == 200 and json.loads(body)["server"] == "a"
    seen = u.requests[-1]["headers"]
    assert seen["host"] == "api.example.com" and seen["x-host"] == "api.example.com"  # request.host
    assert get(s.ports["main"], "/x", headers={"Host": "other.example.com"})[2] == b"any"


def test_connection_manager_request_and_response_headers(serve, upstreams):
    """As Envoy's http_connection_manager: x-forwarded-proto is the connection's scheme (a
    client's is overwritten), x-request-id is generated unless the client sent one, both
    before the filters; server (server_name, per server_header_transformation) and date
    after them."""
    u = upstreams("a")
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]
    lst = http_listener(vhosts, [wasm(GO_HTTP, "headers props")])
    second = http_listener(vhosts, [], name="second")
    hcm = second["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.update(server_name="edge", server_header_transformation="APPEND_IF_ABSENT", generate_request_id=False)
    s = serve(bootstrap([lst, second], [cluster("a", u.port)]))
    status, headers, _ = get(s.ports["main"], "/", headers={"x-forwarded-proto": "https", "x-forwarded-for": "10.9.8.7"})
    seen = u.requests[-1]["headers"]
    # neither was taken as the truth (uvicorn's proxy_headers would have: scheme, client)
    assert seen["x-forwarded-proto"] == "http" and seen["x-source"].startswith("127.0.0.1:")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", seen["x-request-id"])
    assert headers["server"] == "envoy" and headers["date"].endswith(" GMT")  # the upstream's server replaced
    assert headers["x-wasm-resp"] == ""  # the filter ran on the response before them
    get(s.ports["main"], "/", headers={"x-request-id": "mine"})
    assert u.requests[-1]["headers"]["x-request-id"] == "mine"
    _, headers, _ = get(s.ports["second"], "/")
    assert "x-request-id" not in u.requests[-1]["headers"]
    assert headers["server"].startswith("BaseHTTP")  # APPEND_IF_ABSENT keeps the upstream's


def test_rewrites_and_forwarded_headers(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/api/"}, "route": {"cluster": "up", "prefix_rewrite": "/v2/",
                                                  "host_rewrite_literal": "backend.internal"}},
        {"match": {"prefix": "/auto"}, "route": {"cluster": "up", "auto_host_rewrite": True}},
    ]}]
    s = serve(bootstrap([http_listener(vhosts)], [cluster("up", u.port)]))
    status, headers, body = get(s.ports["main"], "/api/users?id=7", headers={"host": "front", "x-custom": "kept"})
    seen = json.loads(body)
    assert status == 200 and headers["x-upstream-resp"] == "1"
    assert seen["path"] == "/v2/users?id=7"
    assert seen["headers"]["host"] == "backend.internal"
    assert seen["headers"]["x-custom"] == "kept"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    _, _, body = get(s.ports["main"], "/auto", headers={"host": "front"})
    assert json.loads(body)["headers"]["host"] == f"127.0.0.1:{u.port}"


def test_direct_response_and_round_robin(serve, upstreams):
    a, b = upstreams("a"), upstreams("b")
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 418, "body": {"inline_string": "teapot\n"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "both"}}]}]
    s = serve(bootstrap([http_listener(vhosts)], [cluster("both", a.port, b.port)]))
    status, headers, body = get(s.ports["main"], "/direct")
    assert (status, body, headers["content-type"]) == (418, b"teapot\n", "text/plain")
    servers = [json.loads(get(s.ports["main"], "/")[2])["server"] for _ in range(4)]
    assert servers == ["a", "b", "a", "b"]


def test_upstream_down_is_503_and_timeout_is_504(serve, upstreams):
    u = upstreams()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/down"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0.2s"}}]}]
    s = serve(bootstrap([http_listener(vhosts)], [cluster("dead", dead_port), cluster("up", u.port)]))
    status, _, body = get(s.ports["main"], "/down")
    assert status == 503 and b"connection failure" in body
    t0 = time.monotonic()
    status, _, body = get(s.ports["main"], "/slow/1500")
    assert status == 504 and body == b"upstream request timeout"
    assert time.monotonic() - t0 < 1.4
    assert get(s.ports["main"], "/slow/10")[0] == 200  # the listener still serves


def test_streaming_both_ways(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "stream")])], [cluster("up", u.port)]))
    c = http.client.HTTPConnection("127.0.0.1", s.ports["main"], timeout=10)
    c.request("GET", "/stream")
    r = c.getresponse()
    assert r.status == 200
    # the first chunk arrives while the upstream still holds the second one back
    assert r.read1(100) == b">first\n"
    u.gate.set()
    # a chunked body ends with an empty last chunk, which the filter sees too (as in Envoy)
    assert r.read() == b">second\n>"
    c.close()
    # a 3 MB request body streams up in chunks (past Envoy's 1 MiB buffer limit: nothing holds it)
    # (chunked: the filter appends "|" to each chunk, so no content-length could hold)
    chunks = [b"y" * (64 << 10)] * 48
    c = http.client.HTTPConnection("127.0.0.1", s.ports["main"], timeout=10)
    c.request("POST", "/upload", body=iter(chunks), encode_chunked=True)
    r = c.getresponse()
    seen = json.loads(r.read()[1:])  # the filter prepended ">"
    c.close()
    assert r.status == 200 and seen["body_head"].startswith("yyyy")
    assert 3 << 20 < seen["body_len"] < (3 << 20) + 1000  # each chunk passed with its "|"
    # and a 3 MB response streams down
    status, _, body = get(s.ports["main"], f"/big/{3 << 20}")
    assert status == 200 and body.count(b"x") == 3 << 20


def test_http2_and_tls_clusters(serve, http2_server, http1_tls_server, tls_ca):
    h2 = cluster("h2", http2_server.port)
    h2["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    tls = cluster("tls", http1_tls_server.port)
    tls["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "localhost",
        "common_tls_context": {"validation_context": {"trusted_ca": {"filename": str(tls_ca.ca_file)}}}}}
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/h2/"}, "route": {"cluster": "h2", "prefix_rewrite": "/echo/"}},
        {"match": {"prefix": "/tls/"}, "route": {"cluster": "tls", "prefix_rewrite": "/echo/"}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "headers", root_id="x")])], [h2, tls]))
    status, headers, body = get(s.ports["main"], "/h2/a", "POST", body=b"up by h2")
    seen = json.loads(body)
    assert status == 200 and seen["protocol"] == "2" and seen["path"] == "/echo/a" and seen["body"] == "up by h2"
    assert ["x-wasm-req", "x"] in seen["headers"] and headers["x-wasm-resp"] == "x"
    status, _, body = get(s.ports["main"], "/tls/b")
    seen = json.loads(body)
    assert status == 200 and seen["protocol"] == "1.1" and seen["path"] == "/echo/b"


# ---- the Wasm HTTP filter -------------------------------------------------------------------
def test_wasm_filter_edits_headers_and_answers_locally(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "headers", root_id="r1")])], [cluster("up", u.port)]))
    status, headers, body = get(s.ports["main"], "/p", headers={"x-remove": "1", "x-replace": "old"})
    seen = json.loads(body)["headers"]
    assert status == 200
    assert seen["x-wasm-req"] == "r1" and seen["x-replace"] == "replaced" and "x-remove" not in seen
    assert headers["x-wasm-resp"] == "r1"
    status, headers, body = get(s.ports["main"], "/p", headers={"x-deny": "1"})
    assert (status, body, headers["x-deny-reason"]) == (403, b"denied by wasm", "test")
    assert headers["x-wasm-resp"] == "r1"  # the local reply went through the response callbacks
    assert len(u.requests) == 1  # the denied request never reached the upstream


def test_filter_chain_order_and_buffered_body(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    filters = [wasm(GO_HTTP, "headers", root_id="first"), wasm(GO_HTTP, "headers buffer", root_id="second")]
    s = serve(bootstrap([http_listener(vhosts, filters)], [cluster("up", u.port)]))
    status, headers, body = get(s.ports["main"], "/p", "POST", body=b"hello body")
    assert status == 200 and body.endswith(b"-buffered")
    seen = json.loads(body[:-len(b"-buffered")])
    # both request filters ran in config order (x-wasm-req appended by each)
    assert seen["headers"]["x-wasm-req"] == "first, second"
    assert seen["body_head"] == "HELLO BODY"
    # the response passed them in reverse: "second" added its header before "first"
    assert headers["x-wasm-resp"] == "second, first"


def test_paused_request_resumes_on_tick_without_blocking_the_loop(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "pause tick=300")])], [cluster("up", u.port)]))
    port = s.ports["main"]
    out: dict = {}

    def paused():
        t0 = time.monotonic()
        out["status"] = get(port, "/held", headers={"x-pause": "1"})[0]
        out["took"] = time.monotonic() - t0
    t = threading.Thread(target=paused)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert get(port, "/free")[0] == 200  # served while the other request waits
    assert time.monotonic() - t0 < 0.25
    t.join(5)
    assert out["status"] == 200 and out["took"] > 0.05
    assert [r["path"] for r in u.requests] == ["/free", "/held"]


def test_client_leaving_a_held_request_ends_its_stream_at_once(serve, upstreams, caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "pause tick=3000 log")])], [cluster("up", u.port)]))
    c = socket.create_connection(("127.0.0.1", s.ports["main"]), timeout=5)
    c.sendall(b"GET /held HTTP/1.1\r\nhost: x\r\nx-pause: 1\r\n\r\n")
    time.sleep(0.3)  # held by the plugin until its next tick, 3 s away
    t0 = time.monotonic()
    c.close()
    while "done path=/held" not in caplog.text and time.monotonic() - t0 < 2.5:
        time.sleep(0.02)
    assert "done path=/held" in caplog.text  # on_log and on_done ran when the client left
    assert time.monotonic() - t0 < 2.5 and not u.requests  # not at the tick, and never forwarded
    assert get(s.ports["main"], "/after")[0] == 200


def test_slow_client_does_not_hold_up_others(serve):
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "headers")])], []))
    slow = [socket.create_connection(("127.0.0.1", s.ports["main"]), timeout=5) for _ in range(20)]
    for c in slow:
        c.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-a")  # half a header, then nothing
    t0 = time.monotonic()
    assert all(get(s.ports["main"], "/")[0] == 200 for _ in range(10))
    assert time.monotonic() - t0 < 5
    for c in slow:
        c.sendall(b": 1\r\n\r\n")  # the rest, late: they are served too
        assert c.recv(100).startswith(b"HTTP/1.1 200")
        c.close()


def test_failed_vm_fails_closed_or_open(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    closed = http_listener(vhosts, [wasm(GO_HTTP, "panic")], name="closed")
    s = serve(bootstrap([closed], [cluster("up", u.port)]))
    status, _, _ = get(s.ports["closed"], "/", headers={"x-panic": "1"})
    assert status == 503
    status, _, _ = get(s.ports["closed"], "/")  # the VM stays failed: fail closed
    assert status == 503 and not u.requests
    opened = http_listener(vhosts, [wasm(GO_HTTP, "panic", fail_open=True)], name="open")
    s2 = serve(bootstrap([opened], [cluster("up", u.port)]))
    get(s2.ports["open"], "/", headers={"x-panic": "1"})
    assert get(s2.ports["open"], "/")[0] == 200  # fail open: the filter is skipped


def test_plugin_calls_a_bootstrap_cluster_and_the_answer_resumes_the_request(serve, upstreams):
    u, svc = upstreams("up"), upstreams("svc")
    callout = GO_HTTP.parent.parent / "wat" / "callout.wasm"
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(callout)])], [cluster("up", u.port), cluster("svc", svc.port)]))
    status, _, body = get(s.ports["main"], "/x", headers={"x-call": "h"})
    assert status == 200 and json.loads(body)["server"] == "up"
    assert [(r["method"], r["path"], r["body_head"]) for r in svc.requests] == [("GET", "/check", "ping")]
    svc.status = 403  # the plugin answers the request itself when the service says no
    status, _, _ = get(s.ports["main"], "/x", headers={"x-call": "h"})
    assert status == 403 and len(u.requests) == 1


def test_route_attributes_for_filters(upstreams):
    from pyproxywasm.serve.proxy import ProxyApp
    from pyproxywasm import properties
    meta = {"envoy.filters.http.wasm": {"auth": "cookie"}}
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"name": "r1", "match": {"prefix": "/one"}, "route": {"cluster": "up"}, "metadata": {"filter_metadata": meta}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]
    doc = bootstrap([http_listener(vhosts)], [dict(cluster("up", 1), metadata={"filter_metadata": {"loc": {"az": "a"}}})])
    b = loads(json.dumps(doc))
    app = ProxyApp(b.listeners[0], b.clusters, None, b.cluster_metadata)
    assert app.has_metadata
    scope = {"type": "http", "method": "GET", "path": "/one", "query_string": b"", "headers": [(b"host", b"h")]}
    p = app.route_properties(scope)
    assert p["route_name"] == "r1" and p["cluster_name"] == "up"
    # filter names hold dots: paths are segment tuples, never split on them
    assert p[("route_metadata", "filter_metadata", "envoy.filters.http.wasm", "auth")] == "cookie"
    assert p[("route_metadata", "filter_metadata", "envoy.filters.http.wasm")] == properties.encode_value({"auth": "cookie"})
    assert p[("cluster_metadata", "filter_metadata", "loc", "az")] == "a"
    assert app.route_properties(dict(scope, path="/other")) == {}


# ---- admin --------------------------------------------------------------------------------
def test_admin_ready_stats_and_prometheus_with_tags(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]
    doc = bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "metrics")])], [cluster("up", u.port)],
                    stats_config={"stats_tags": [{"tag_name": "kind", "regex": "^body(_(size))$"}]})
    s = serve(doc)
    for _ in range(3):
        assert get(s.ports["main"], "/")[0] == 200
    assert get(s.admin_port, "/ready")[2] == b"LIVE\n"
    stats = get(s.admin_port, "/stats")[2].decode()
    total = int(re.search(r"^requests_total: (\d+)$", stats, re.M).group(1))
    assert total >= 3
    prom = get(s.admin_port, "/stats/prometheus")[2].decode()
    assert f"requests_total{{}} {total}" in prom and "# TYPE requests_total counter" in prom
    assert re.search(r'^body_count\{kind="size"\} \d+$', prom, re.M), prom  # name cut, tag as label
    # Envoy's histogram: cumulative buckets with its default bounds, then sum and count
    assert "# TYPE body histogram" in prom and 'body_bucket{kind="size",le="+Inf"}' in prom
    deadline = time.monotonic() + 5  # every stream was finished (on_done ran: inflight back to 0)
    while "inflight{} 0" not in get(s.admin_port, "/stats/prometheus")[2].decode() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "inflight{} 0" in get(s.admin_port, "/stats/prometheus")[2].decode()
    assert get(s.admin_port, "/nope")[0] == 404


# ---- TCP ------------------------------------------------------------------------------------
class _TcpEcho(socketserver.ThreadingTCPServer):
    """Sends back "world" for each read; closes after it reads "bye"."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.received = b""
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.server.received += data
            self.request.sendall(b"world")
            if b"BYE" in data:
                self.request.shutdown(socket.SHUT_WR)
                return


def test_tcp_proxy_through_a_network_filter(serve, caplog):
    echo = _TcpEcho()
    lst = {"name": "tcp", "address": LOCAL, "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {"vm_config": {"code": {"local": {"filename": str(GO_TCP)}}}}}},
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "echo"}}]}]}
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    try:
        s = serve(bootstrap([lst], [cluster("echo", echo.port if hasattr(echo, "port") else echo.server_address[1])]))
        c = socket.create_connection(("127.0.0.1", s.ports["tcp"]), timeout=5)
        c.sendall(b"hello")
        assert c.recv(100) == b"up:world"
        c.sendall(b"bye")
        data = b""
        while chunk := c.recv(100):  # the upstream closes: the proxy closes the client side
            data += chunk
        # the answer to "bye", then the upstream's end of stream, which the filter sees too
        assert data == b"up:worldup:"
        c.close()
        assert echo.received == b"HELLOBYE"
        deadline = time.monotonic() + 5
        while "tcp done" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        text = caplog.text
        assert "new connection" in text and "downstream hello eos=false" in text
        assert "upstream world eos=false" in text and "upstream close peer=2" in text
        assert "tcp done" in text
    finally:
        echo.shutdown()
        echo.server_close()


def test_tcp_filter_closes_the_connection_and_connect_failure_closes_it(serve):
    echo = _TcpEcho()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()

    def listener(name: str, cluster_name: str) -> dict:
        return {"name": name, "address": LOCAL, "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": {"vm_config": {"code": {"local": {"filename": str(GO_TCP)}}}}}},
            {"name": "envoy.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp", "cluster": cluster_name}}]}]}
    try:
        s = serve(bootstrap([listener("tcp", "echo"), listener("dead", "dead")],
                            [cluster("echo", echo.server_address[1]), cluster("dead", dead_port)]))
        c = socket.create_connection(("127.0.0.1", s.ports["tcp"]), timeout=5)
        c.sendall(b"please close")  # the plugin closes the connection (proxy_close_stream)
        assert c.recv(100) == b""
        c.close()
        assert echo.received == b""  # nothing went upstream
        c = socket.create_connection(("127.0.0.1", s.ports["dead"]), timeout=5)
        assert c.recv(100) == b""  # no upstream: the client is closed, as Envoy does
        c.close()
    finally:
        echo.shutdown()
        echo.server_close()


def test_stopping_with_an_open_tcp_connection_ends_its_streams_cleanly(caplog):
    """A worker stopping while a proxied connection is open: its pumps end before its
    streams do (a pump used to run on into a finished stream: StreamClosedError in a task
    nobody awaited, and the cancelled connection task logged by asyncio as an error)."""
    echo = _TcpEcho()
    lst = {"name": "tcp", "address": LOCAL, "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {"vm_config": {"code": {"local": {"filename": str(GO_TCP)}}}}}},
        {"name": "envoy.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "echo"}}]}]}
    caplog.set_level(logging.INFO)
    s = Server(loads(json.dumps(bootstrap([lst], [cluster("echo", echo.server_address[1])]))))
    s.start()
    try:
        c = socket.create_connection(("127.0.0.1", s.ports["tcp"]), timeout=5)
        c.sendall(b"hello")
        assert c.recv(100) == b"up:world"
        # an upstream answer in flight while the worker stops
        c.sendall(b"again")
    finally:
        s.stop()
        echo.shutdown()
        echo.server_close()
    assert c.recv(100) in (b"", b"up:world")
    c.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert "tcp done" in caplog.text


def test_strict_dns_cluster_by_name(serve, upstreams):
    u = upstreams()
    dns = cluster("up", u.port)
    dns["type"] = "STRICT_DNS"
    dns["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = "localhost"
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    s = serve(bootstrap([http_listener(vhosts)], [dns]))
    status, _, body = get(s.ports["main"], "/dns")
    assert status == 200 and json.loads(body)["path"] == "/dns"


def test_timeout_during_the_response_body_resets_the_stream(serve, upstreams):
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0.5s"}}]}]
    s = serve(bootstrap([http_listener(vhosts)], [cluster("up", u.port)]))
    c = http.client.HTTPConnection("127.0.0.1", s.ports["main"], timeout=10)
    c.request("GET", "/stream")  # the upstream holds its second chunk back until the gate opens
    r = c.getresponse()
    assert r.status == 200 and r.read1(100) == b"first\n"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        r.read()  # the route timeout passed mid-body: the stream is reset, not completed
    c.close()


# ---- workers ----------------------------------------------------------------------------------
def test_concurrency_runs_workers_each_with_its_own_vms(serve, upstreams, caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "log")])], []), concurrency=2)
    for _ in range(40):
        assert get(s.ports["main"], "/")[0] == 200
    threads = {r.threadName for r in caplog.records if r.getMessage().startswith("done path=")}
    assert threads == {"pyproxywasm-worker-0", "pyproxywasm-worker-1"}
    starts = [r for r in caplog.records if r.getMessage().startswith("configure ")]
    # one root context per thread: the main thread's and each worker's
    assert {r.threadName for r in starts} == {"pyproxywasm-main", "pyproxywasm-worker-0", "pyproxywasm-worker-1"}


def test_a_thousand_concurrent_connections(serve, upstreams):
    import asyncio
    u = upstreams()
    vhosts = [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "d"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    # (connect timeout 5 s, Envoy's default: one process holds the clients, the proxy and
    # the upstream, so a connect can wait on the GIL)
    s = serve(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "headers", root_id="c")])],
                        [cluster("up", u.port, timeout="5s")]))
    port = s.ports["main"]

    async def one(i: int, opened: asyncio.Event, all_open: list) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        all_open.append(1)
        await opened.wait()  # every connection is open before any request goes
        path = b"/direct" if i % 10 else b"/up"
        w.write(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = await r.read()
        w.close()
        return data

    async def main() -> list[bytes]:
        opened, all_open = asyncio.Event(), []
        tasks = [asyncio.ensure_future(one(i, opened, all_open)) for i in range(1000)]
        while len(all_open) < 1000:
            await asyncio.sleep(0.01)
        opened.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    answers = asyncio.run(main())
    bad = [a[:300] for a in answers if not (a.startswith(b"HTTP/1.1 200") and b"x-wasm-resp: c" in a)]
    assert not bad, (len(bad), bad[:3])
    assert sum(a.endswith(b"\r\n\r\nd") for a in answers) == 900
    assert len(u.requests) == 100


# ---- CLI ----------------------------------------------------------------------------------------
def test_cli_serves_the_bundled_config(tmp_path):
    text = DEFAULT_CONFIG.read_text()
    assert "port_value: 10000" in text  # what `pyproxywasm serve` runs with no argument
    wasm_path = DEFAULT_CONFIG.parent.parent / "examples" / "header_rewrite.wasm"
    text = text.replace("port_value: 10000", "port_value: 0").replace("port_value: 9901", "port_value: 0")
    text = text.replace("../examples/header_rewrite.wasm", str(wasm_path))
    cfg = tmp_path / "default.yaml"
    cfg.write_text(text)
    p = subprocess.Popen([sys.executable, "-m", "pyproxywasm", "serve", str(cfg)], cwd=tmp_path,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = p.stdout.readline()
            assert line, p.stderr.read()
            lines.append(line.strip())
        port = int(re.search(r"curl -i http://127.0.0.1:(\d+)/", "\n".join(lines)).group(1))
        # curl itself, without the sanitizer runtime a sanitized test run preloads
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        out = subprocess.run(["curl", "-si", f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=10, env=env).stdout if os.path.exists("/usr/bin/curl") else None
        status, headers, body = get(port, "/")
        assert (status, body, headers["x-powered-by"]) == (200, b"hello from pyproxywasm serve\n", "pyproxywasm")
        if out is not None:
            assert "x-powered-by: pyproxywasm" in out and "hello from pyproxywasm serve" in out
        status, _, body = get(port, "/admin/x")
        assert (status, body) == (403, b"forbidden by header_rewrite\n")
    finally:
        p.send_signal(signal.SIGINT)
        rc = p.wait(10)
    err = p.stderr.read()
    assert rc == 0, err
    assert "request GET /" in err and "response 403" in err  # the plugin's logs


def test_cli_reports_config_errors_with_their_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("static_resources:\n  clusters:\n  - name: c\n    type: EDS\n")
    p = subprocess.run([sys.executable, "-m", "pyproxywasm", "serve", str(cfg)], capture_output=True,
                       text=True, timeout=30, cwd=tmp_path)
    assert p.returncode == 2
    assert "static_resources.clusters[0].type: unsupported value 'EDS'" in p.stderr


def test_cli_reports_a_plugin_that_fails_to_start(tmp_path):
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]
    cfg = tmp_path / "fail.json"
    cfg.write_text(json.dumps(bootstrap([http_listener(vhosts, [wasm(GO_HTTP, "fail")])], [])))
    p = subprocess.run([sys.executable, "-m", "pyproxywasm", "serve", str(cfg)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2
    assert "failed to start: proxy_on_configure returned false" in p.stderr
