"""The ASGI middleware under real servers (uvicorn, hypercorn) with Starlette, FastAPI and
plain ASGI apps, and real clients on 127.0.0.1; the plugins are the committed ones."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request as FRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from conftest import GO_HTTP, WAT
from pyproxywasm import Host, PluginConfig, VmConfig, metrics
from pyproxywasm.adapters import ProxyWasmMiddleware
from _servers import asgi_server, uvicorn_server

# The bundled example, from the installed package (CI also tests a wheel without the checkout).
EXAMPLE = __import__("pathlib").Path(__import__("pyproxywasm").__file__).parent / "examples" / "header_rewrite.wasm"
SERVERS = ["uvicorn", "hypercorn"]


def go(features: str, root_id: str = "f", vm_id: str = "") -> PluginConfig:
    return PluginConfig(VmConfig(str(GO_HTTP), vm_id=vm_id), name=root_id, root_id=root_id,
                        configuration=features)


def wat_plugin(name: str, root_id: str = "w") -> PluginConfig:
    return PluginConfig(VmConfig(str(WAT / f"{name}.wasm")), name=root_id, root_id=root_id)


class Calls:
    """What the app saw."""

    def __init__(self) -> None:
        self.n = 0
        self.release = threading.Event()  # a streaming response waits for the test


def starlette_app(calls: Calls) -> Starlette:
    async def echo(request: Request) -> Response:
        calls.n += 1
        body = await request.body()
        return JSONResponse({"headers": request.headers.items(), "body": body.decode(),
                             "path": request.url.path, "query": request.url.query,
                             "method": request.method})

    async def stream(request: Request) -> Response:
        calls.n += 1

        async def gen():
            yield b"one"
            for _ in range(500):  # until the client has the first chunk
                if calls.release.is_set():
                    break
                await asyncio.sleep(0.01)
            yield b"two"
        return StreamingResponse(gen(), media_type="text/event-stream")

    async def big(request: Request) -> Response:
        calls.n += 1

        async def gen():
            for _ in range(32):
                yield b"x" * 65536
        return StreamingResponse(gen())

    async def ws(websocket) -> None:
        await websocket.accept()
        msg = await websocket.receive_text()
        await websocket.send_text("echo:" + msg + ":" + websocket.headers.get("x-wasm-req", "none"))
        await websocket.close()

    return Starlette(routes=[Route("/stream", stream), Route("/big", big),
                             WebSocketRoute("/ws", ws),
                             Route("/{p:path}", echo, methods=["GET", "POST", "HEAD", "PUT"])])


def fastapi_app(calls: Calls) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{p:path}", methods=["GET", "POST"])
    async def echo(p: str, request: FRequest):
        calls.n += 1
        body = await request.body()
        return {"headers": request.headers.items(), "body": body.decode(), "path": request.url.path,
                "query": request.url.query, "method": request.method}

    return app


def hdr(js: dict, name: str) -> list[str]:
    return [v for k, v in js["headers"] if k == name]


def gauge(name: str) -> int:
    return next((m.value for m in metrics.snapshot() if m.name == name), 0)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_header_edits_reach_the_app_and_the_client(server, framework):
    calls = Calls()
    app = starlette_app(calls) if framework == "starlette" else fastapi_app(calls)
    mw = ProxyWasmMiddleware(app, plugins=[go("headers props")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url) as c:
        r = c.get("/a/b?x=1&y=2", headers={"x-remove": "1", "x-replace": "old"})
        assert r.status_code == 200
        js = r.json()
        assert js["path"] == "/a/b" and js["query"] == "x=1&y=2"
        assert hdr(js, "x-wasm-req") == ["f"]
        assert hdr(js, "x-replace") == ["replaced"]
        assert hdr(js, "x-remove") == []
        assert hdr(js, "x-path") == ["/a/b?x=1&y=2"]
        assert hdr(js, "x-method") == ["GET"]
        source = hdr(js, "x-source")[0]
        assert source.startswith("127.0.0.1:")
        assert hdr(js, "x-source-port") == [source.split(":")[1]]
        assert hdr(js, "x-host") == [url.split("//")[1]]
        assert r.headers["x-wasm-resp"] == "f"
        assert int(r.headers["content-length"]) == len(r.content)


@pytest.mark.parametrize("server", SERVERS)
def test_local_reply_answers_without_the_app(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("headers")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url) as c:
        r = c.post("/x", headers={"x-deny": "1"}, content=b"body")
        assert r.status_code == 403
        assert r.text == "denied by wasm"
        assert r.headers["x-deny-reason"] == "test"
        assert r.headers["x-wasm-resp"] == "f"  # through the response callbacks, as Envoy
        assert calls.n == 0


def test_bundled_example_filter():
    calls = Calls()
    cfg = PluginConfig(VmConfig(str(EXAMPLE)), name="ex", root_id="",
                       configuration='{"deny_path_prefix": "/admin"}')
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[cfg])
    with uvicorn_server(mw) as url, httpx.Client(base_url=url) as c:
        r = c.get("/hello")
        assert hdr(r.json(), "x-pyproxywasm") == ["hello"]
        assert r.headers["x-powered-by"] == "pyproxywasm"
        r = c.get("/admin/x")
        assert r.status_code == 403 and r.text == "forbidden by header_rewrite\n"
        assert calls.n == 1


@pytest.mark.parametrize("server", SERVERS)
def test_pause_resumed_by_tick_keeps_the_loop_free(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("pause tick=1000")])

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            t0 = time.monotonic()
            held = asyncio.ensure_future(c.get("/held", headers={"x-pause": "1"}))
            await asyncio.sleep(0.05)
            quick = await c.get("/quick")
            t_quick = time.monotonic() - t0
            assert quick.status_code == 200
            assert not held.done()  # still held by the plugin while others are served
            r = await held
            return r, t_quick, time.monotonic() - t0

    with asgi_server(server, mw) as url:
        r, t_quick, t_held = asyncio.run(main(url))
    assert r.status_code == 200 and r.json()["path"] == "/held"
    assert t_quick < t_held


@pytest.mark.parametrize("server", SERVERS)
def test_response_paused_then_resumed_by_tick(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("pause tick=50 headers")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.get("/r", headers={"x-pause-response": "1"})
        assert r.status_code == 200 and r.headers["x-wasm-resp"] == "f"
        assert r.json()["path"] == "/r"


@pytest.mark.parametrize("server", SERVERS)
def test_pause_resumed_by_queue_notification(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[wat_plugin("queue_resume")])

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            held = asyncio.ensure_future(c.post("/held", headers={"x-wait": "1"}, content=b"abc"))
            await asyncio.sleep(0.3)
            assert not held.done()
            assert calls.n == 0
            release = await c.get("/release", headers={"x-release": "1"})
            assert release.status_code == 200
            return await held

    with asgi_server(server, mw) as url:
        r = asyncio.run(main(url))
    js = r.json()
    assert r.status_code == 200 and js["body"] == "abc"
    assert hdr(js, "x-resumed") == ["queue"]


def plain_upload_app(seen: list):
    """A plain ASGI app that records every request message it receives."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            seen.append(msg.get("body", b""))
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize("server", SERVERS)
def test_request_body_streams_chunk_by_chunk(server):
    seen: list[bytes] = []
    mw = ProxyWasmMiddleware(plain_upload_app(seen), plugins=[go("stream")])

    def chunks():
        for part in (b"aa", b"bb", b"cc"):
            yield part
            time.sleep(0.1)

    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/up", content=chunks())
    # Each chunk the plugin saw got a "|"; the server hands them over as they arrive.
    nonempty = [b for b in seen if b]
    assert len(nonempty) >= 3
    assert all(b.endswith(b"|") for b in nonempty)
    assert r.content.replace(b">", b"") == b"".join(seen)
    assert r.content.replace(b">", b"").replace(b"|", b"") == b"aabbcc"


@pytest.mark.parametrize("server", SERVERS)
def test_streaming_response_passes_chunk_by_chunk(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("stream")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=10) as c:
        with c.stream("GET", "/stream") as r:
            assert "content-length" not in r.headers
            it = r.iter_raw()
            first = next(it)
            assert first == b">one"  # before the app produced its second chunk
            calls.release.set()
            rest = b"".join(it)
        # The app ends with an empty last chunk; the plugin sees it too (as in Envoy).
        assert rest == b">two>"


@pytest.mark.parametrize("server", SERVERS)
def test_buffered_bodies_are_changed_and_content_length_fixed(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("buffer")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/b", content=b"hello")
        assert r.status_code == 200
        assert r.text.endswith("-buffered")
        assert int(r.headers["content-length"]) == len(r.content)
        js = json.loads(r.text[:-len("-buffered")])
        assert js["body"] == "HELLO"


@pytest.mark.parametrize("server", SERVERS)
def test_big_request_body_past_the_buffer_limit_is_413(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("buffer")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/b", content=b"y" * (2 << 20))
        # Envoy's local reply, through the plugin's response callbacks ("-buffered").
        assert r.status_code == 413 and r.text == "Payload Too Large-buffered"
        # (The headers had gone on, so the app was called, as Envoy starts the upstream
        # request; it never got the body and its response was dropped.)
        # Within the limit it passes.
        r = c.post("/b", content=b"y" * (512 << 10))
        assert r.status_code == 200 and r.text.endswith("-buffered")
        assert json.loads(r.text[:-9])["body"] == "Y" * (512 << 10)


@pytest.mark.parametrize("server", SERVERS)
def test_big_response_body_past_the_buffer_limit_fails(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("buffer")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/big")  # 2 MiB held by the plugin: Envoy's 500 / reset
        assert r.status_code == 500
        assert not r.content.startswith(b"xxxx")


@pytest.mark.parametrize("server", SERVERS)
def test_client_disconnect_mid_request_runs_on_log_and_leaks_nothing(server, caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm.plugin.f")
    seen: list[bytes] = []
    mw = ProxyWasmMiddleware(plain_upload_app(seen), plugins=[go("metrics log pause tick=60000", vm_id="disc")])
    before = gauge("inflight")
    with asgi_server(server, mw) as url:
        port = int(url.rsplit(":", 1)[1])
        # 1: half a body, then gone.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"z" * 10)
        time.sleep(0.2)
        s.close()
        # 2: held by the plugin (resumed only after a minute), then gone.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /held HTTP/1.1\r\nhost: x\r\nx-pause: 1\r\n\r\n")
        time.sleep(0.2)
        s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and gauge("inflight") != before:
            time.sleep(0.05)
        assert gauge("inflight") == before
        assert mw.host.plugins[0].instance() is not None
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done path=")]
    assert "done path=/up" in done and "done path=/held" in done


@pytest.mark.parametrize("server", SERVERS)
def test_slowloris_client_does_not_hold_up_others(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("buffer")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=10) as c:
        port = int(url.rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        head = b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\nconnection: close\r\n\r\n"
        for i in range(0, len(head), 7):
            s.sendall(head[i:i + 7])
            time.sleep(0.02)
        for b in b"abcdef":
            s.sendall(bytes([b]))
            t = time.monotonic()
            r = c.post("/other", content=b"q")  # served while the slow one trickles in
            assert r.status_code == 200 and time.monotonic() - t < 2
            time.sleep(0.1)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"body":"ABCDEF"' in data


def test_1000_concurrent_connections():
    calls = Calls()
    # No per-callback deadline here: on a loaded machine a callback descheduled for 100 ms
    # would trip it, and this test is about connections, not deadlines.
    plugin = dataclasses.replace(go("headers"), deadline_ms=None)
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[plugin])

    async def main(url):
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
            rs = await asyncio.gather(*(c.get(f"/c/{i}") for i in range(1000)))
        return rs

    with uvicorn_server(mw, backlog=2048, limit_concurrency=5000) as url:
        rs = asyncio.run(main(url))
    bad = [(r.status_code, r.text[:200]) for r in rs if r.status_code != 200]
    assert not bad, bad[:5]
    assert all(r.headers["x-wasm-resp"] == "f" for r in rs)
    assert sorted(r.json()["path"] for r in rs) == sorted(f"/c/{i}" for i in range(1000))
    assert calls.n == 1000


@pytest.mark.parametrize("server", SERVERS)
def test_trap_fails_closed_with_503(server):
    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[wat_plugin("trap")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url) as c:
        assert c.get("/ok").status_code == 200
        r = c.get("/t", headers={"x-trap": "1"})
        assert r.status_code == 503 and "grpc-status" not in r.headers
        # The VM is gone: every later request fails closed too, without reaching the app.
        r = c.get("/after")
        assert r.status_code == 503 and "grpc-status" not in r.headers
        r = c.post("/grpc", headers={"content-type": "application/grpc"}, content=b"\0\0\0\0\0")
        assert r.status_code == 503 and r.headers["grpc-status"] == "14"
        assert calls.n == 1


@pytest.mark.parametrize("server", SERVERS)
def test_filter_chain_of_two_plugins_in_envoy_order(server):
    calls = Calls()
    chain = [go("headers", root_id="a"), go("headers", root_id="b")]
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=chain)
    with asgi_server(server, mw) as url, httpx.Client(base_url=url) as c:
        r = c.get("/chain")
        assert hdr(r.json(), "x-wasm-req") == ["a", "b"]  # request: a, then b
        assert r.headers.get_list("x-wasm-resp") == ["b", "a"]  # response: b, then a


def test_some_of_a_hosts_plugins_in_their_own_order_with_per_request_properties():
    """serve's use of the middleware: one Host, a listener runs some of its plugins in its
    own order (filters=), and each request gets its route's attributes (route_properties=),
    which the plugin reads back."""
    calls = Calls()
    host = Host([go("headers", root_id="a"), go("headers props", root_id="b"), go("headers", root_id="c")])
    try:
        a, b, c = host.plugins
        mw = ProxyWasmMiddleware(starlette_app(calls), host=host, filters=[c, b],
                                 route_properties=lambda scope: {"source.address": "route" + scope["path"]})
        with uvicorn_server(mw) as url, httpx.Client(base_url=url) as cl:
            for path in ("/one", "/two"):
                r = cl.get(path)
                assert hdr(r.json(), "x-wasm-req") == ["c", "b"]  # not a; c first
                assert hdr(r.json(), "x-source") == ["route" + path]
                assert r.headers.get_list("x-wasm-resp") == ["b", "c"]
        with pytest.raises(ValueError):
            ProxyWasmMiddleware(starlette_app(calls), plugins=[go("headers")], filters=[a])
    finally:
        host.close()
    assert calls.n == 2


def test_local_reply_from_the_second_filter_goes_back_through_the_first():
    calls = Calls()
    deny = PluginConfig(VmConfig(str(EXAMPLE)), name="deny", configuration='{"deny_path_prefix": "/admin"}')
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("headers", root_id="a"), deny])
    with uvicorn_server(mw) as url, httpx.Client(base_url=url) as c:
        r = c.get("/admin")
        assert r.status_code == 403 and r.text == "forbidden by header_rewrite\n"
        assert r.headers["x-wasm-resp"] == "a" and r.headers["x-powered-by"] == "pyproxywasm"
        assert calls.n == 0


@pytest.mark.parametrize("server", SERVERS)
def test_websocket_passes_through_untouched(server):
    from websockets.sync.client import connect

    calls = Calls()
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[go("headers")])
    with asgi_server(server, mw) as url:
        with connect(url.replace("http", "ws") + "/ws") as ws:
            ws.send("hi")
            assert ws.recv() == "echo:hi:none"  # the filters did not see it


@pytest.mark.parametrize("server", SERVERS)
def test_lifespan_starts_and_closes_the_host(server):
    events: list[str] = []
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/", lambda r: Response("ok"))], lifespan=lifespan)
    mw = ProxyWasmMiddleware(app, plugins=[go("headers")])
    with asgi_server(server, mw) as url:
        assert events == ["startup"]
        assert mw._holder.host is not None  # started at startup, before any request
        host = mw._holder.host
        assert httpx.get(url + "/").text == "ok"
    assert events == ["startup", "shutdown"]
    assert mw._holder.host is None and host._closed


def test_fail_open_lets_streams_pass_without_the_failed_plugin():
    calls = Calls()
    trap = PluginConfig(VmConfig(str(WAT / "trap.wasm")), name="trap", failure_policy="FAIL_OPEN")
    mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[trap, go("headers", root_id="g")])
    with uvicorn_server(mw) as url, httpx.Client(base_url=url) as c:
        r = c.get("/t", headers={"x-trap": "1"})  # the stream it traps on passes too
        assert r.status_code == 200 and hdr(r.json(), "x-wasm-req") == ["g"]
        r = c.get("/after")
        assert r.status_code == 200 and hdr(r.json(), "x-wasm-req") == ["g"]
        assert r.headers["x-wasm-resp"] == "g"
    assert calls.n == 2


def h2_get(port: int, path: str) -> tuple[list, bytes, list]:
    """One HTTP/2 request (prior knowledge, with te: trailers): headers, body, trailers."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(conn.data_to_send())
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":authority", "x"),
                          (":scheme", "http"), ("te", "trailers")], end_stream=True)
    sock.sendall(conn.data_to_send())
    headers, body, trailers, done = [], b"", [], False
    while not done:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                headers = ev.headers
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(len(ev.data), 1)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
        sock.sendall(conn.data_to_send())
    sock.close()
    return headers, body, trailers


def test_response_trailers_pass_through_the_plugin_with_hypercorn_http2():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert "http.response.trailers" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"payload", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-app-trailer", b"1")],
                    "more_trailers": False})

    mw = ProxyWasmMiddleware(app, plugins=[go("trailers headers")])
    with asgi_server("hypercorn", mw) as url:
        headers, body, trailers = h2_get(int(url.rsplit(":", 1)[1]), "/t")
    assert (b":status", b"200") in headers and (b"x-wasm-resp", b"f") in headers
    assert body == b"payload"
    assert (b"x-app-trailer", b"1") in trailers and (b"x-wasm-trailer", b"resp") in trailers


def auth_server_app():
    """The upstream an auth plugin calls: 200 with x-auth-user = the caller's x-user, else 403."""
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        user = dict(scope["headers"]).get(b"x-user")
        status, headers = (200, [(b"x-auth-user", user)]) if user else (403, [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if user else b"who are you"})
    return app


@pytest.mark.parametrize("server", SERVERS)
def test_pause_resumed_by_an_http_call_answer(server):
    from pyproxywasm.net import Cluster

    calls = Calls()
    plugin = PluginConfig(VmConfig(str(GO_HTTP.parent / "callouts.wasm")), name="auth",
                          configuration='{"mode": "auth", "path": "/check"}')
    with uvicorn_server(auth_server_app()) as upstream:
        cluster = Cluster("callout", [upstream.split("//")[1]], connect_timeout=2.0)
        mw = ProxyWasmMiddleware(starlette_app(calls), plugins=[plugin],
                                 host_options={"clusters": [cluster]})
        with asgi_server(server, mw) as url, httpx.Client(base_url=url, timeout=10) as c:
            r = c.get("/private", headers={"x-user": "bob"})
            assert r.status_code == 200 and hdr(r.json(), "x-auth-user") == ["bob"]
            r = c.get("/private")
            assert r.status_code == 403 and r.text == "who are you"
            assert r.headers["x-auth-status"] == "403"
    assert calls.n == 1


@pytest.mark.parametrize("server", SERVERS)
def test_wrapped_send_is_a_coroutine_function_for_task_based_apps(server):
    """The app's send stays a coroutine function returning coroutines (the one-filter
    common path included): apps and libraries that hand send(msg) to create_task, or
    check iscoroutinefunction (anyio's start_soon, asgiref's async_to_sync), work."""
    import inspect

    seen: list[bool] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(inspect.iscoroutinefunction(send))
        await asyncio.create_task(send({"type": "http.response.start", "status": 200,
                                        "headers": [(b"content-type", b"text/plain")]}))
        await asyncio.create_task(send({"type": "http.response.body", "body": b"from tasks"}))

    mw = ProxyWasmMiddleware(app, plugins=[go("headers")])
    with asgi_server(server, mw) as url, httpx.Client(base_url=url) as c:
        for _ in range(3):
            r = c.get("/t")
            assert r.status_code == 200 and r.text == "from tasks"
            assert r.headers["x-wasm-resp"] == "f"  # through the filter's response callback
    assert seen == [True, True, True]
