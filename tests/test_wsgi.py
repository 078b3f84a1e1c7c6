"""The WSGI middleware under a real threaded WSGI server (waitress) with a Flask app, and
real clients on 127.0.0.1; the plugins are the committed ones."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time

import httpx
from flask import Flask, Response, request, stream_with_context

from conftest import GO_HTTP, WAT
from pyproxywasm import PluginConfig, VmConfig, metrics
from pyproxywasm.adapters import ProxyWasmWSGIMiddleware
from _servers import cheroot_server, waitress_server


def go(features: str, root_id: str = "f", vm_id: str = "") -> PluginConfig:
    return PluginConfig(VmConfig(str(GO_HTTP), vm_id=vm_id), name=root_id, root_id=root_id,
                        configuration=features)


def gauge(name: str) -> int:
    return next((m.value for m in metrics.snapshot() if m.name == name), 0)


class Calls:
    def __init__(self) -> None:
        self.n = 0
        self.release = threading.Event()
        self.environs: list[dict] = []


def flask_app(calls: Calls, plugins) -> Flask:
    app = Flask(__name__)

    @app.route("/stream")
    def stream():
        calls.n += 1

        def gen():
            yield b"one"
            calls.release.wait(5)
            yield b"two"
        return Response(stream_with_context(gen()), mimetype="text/event-stream")

    @app.route("/big")
    def big():
        calls.n += 1
        return Response((b"x" * 65536 for _ in range(32)))

    @app.route("/<path:p>", methods=["GET", "POST"])
    def echo(p):
        calls.n += 1
        calls.environs.append(dict(request.environ))
        body = request.get_data()
        return {"headers": list(request.headers.items()), "body": body.decode(),
                "path": request.path, "query": request.query_string.decode(), "method": request.method}

    app.wsgi_app = ProxyWasmWSGIMiddleware(app.wsgi_app, plugins=plugins)
    return app


def hdr(js: dict, name: str) -> list[str]:
    return [v for k, v in js["headers"] if k.lower() == name]


def test_header_edits_and_properties_reach_the_app():
    calls = Calls()
    with waitress_server(flask_app(calls, [go("headers props")])) as url, httpx.Client(base_url=url) as c:
        r = c.get("/a/b?x=1", headers={"x-remove": "1", "x-replace": "old"})
        js = r.json()
        assert js["path"] == "/a/b" and js["query"] == "x=1"
        assert hdr(js, "x-wasm-req") == ["f"] and hdr(js, "x-replace") == ["replaced"]
        assert hdr(js, "x-remove") == []
        assert hdr(js, "x-path") == ["/a/b?x=1"] and hdr(js, "x-method") == ["GET"]
        assert hdr(js, "x-source")[0].startswith("127.0.0.1:")
        assert r.headers["x-wasm-resp"] == "f"
        assert int(r.headers["content-length"]) == len(r.content)


def test_local_reply_answers_without_the_app():
    calls = Calls()
    with waitress_server(flask_app(calls, [go("headers")])) as url, httpx.Client(base_url=url) as c:
        r = c.get("/x", headers={"x-deny": "1"})
        assert r.status_code == 403 and r.text == "denied by wasm"
        assert r.headers["x-wasm-resp"] == "f"
        assert calls.n == 0


def test_held_request_blocks_only_its_own_thread():
    calls = Calls()
    app = flask_app(calls, [go("pause tick=400")])

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            held = asyncio.ensure_future(c.get("/held", headers={"x-pause": "1"}))
            await asyncio.sleep(0.05)
            for i in range(5):
                quick = await c.get(f"/quick{i}")
                assert quick.status_code == 200
            assert not held.done()
            return await held

    with waitress_server(app, threads=4) as url:
        r = asyncio.run(main(url))
    assert r.status_code == 200 and r.json()["path"] == "/held"


def test_pause_resumed_by_queue_notification():
    calls = Calls()
    plugin = PluginConfig(VmConfig(str(WAT / "queue_resume.wasm"), vm_id="wsgi-queue"), name="q")
    app = flask_app(calls, [plugin])
    with waitress_server(app, threads=1) as url, httpx.Client(base_url=url, timeout=10) as c:
        out: list = []
        t = threading.Thread(target=lambda: out.append(c.post("/held", headers={"x-wait": "1"}, content=b"abc")))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and calls.n == 0
        # Another VM's enqueue: the owner (the server thread, held in its dispatcher) is notified.
        app.wsgi_app.host.state.enqueue("resume", b"go", vm_id="wsgi-queue")
        t.join(10)
    js = out[0].json()
    assert js["body"] == "abc" and hdr(js, "x-resumed") == ["queue"]


def test_request_body_streams_through_wsgi_input():
    calls = Calls()
    body = b"0123456789abcdef" * (200 * 64)  # 200 KiB: four chunks to the plugin
    with waitress_server(flask_app(calls, [go("stream")])) as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/up", content=body)
    got = json.loads(r.content.replace(b">", b""))["body"].encode()
    assert got.replace(b"|", b"") == body
    assert got.count(b"|") == 4 and got.endswith(b"|")
    env = calls.environs[0]
    assert "CONTENT_LENGTH" not in env and env["wsgi.input_terminated"] is True


def test_streaming_response_passes_chunk_by_chunk():
    calls = Calls()
    with waitress_server(flask_app(calls, [go("stream")])) as url, httpx.Client(base_url=url, timeout=10) as c:
        with c.stream("GET", "/stream") as r:
            it = r.iter_raw()
            assert next(it) == b">one"
            calls.release.set()
            rest = b"".join(it)
    assert rest == b">two>"


def test_buffered_bodies_and_content_length():
    calls = Calls()
    with waitress_server(flask_app(calls, [go("buffer")])) as url, httpx.Client(base_url=url) as c:
        r = c.post("/b", content=b"hello")
        assert r.text.endswith("-buffered") and int(r.headers["content-length"]) == len(r.content)
        assert json.loads(r.text[:-9])["body"] == "HELLO"
        # The app started before the plugin let the (changed) body through: read to EOF.
        assert calls.environs[0]["wsgi.input_terminated"] is True
        r = c.get("/nobody")  # a request that ended with its headers: a known length
        assert "CONTENT_LENGTH" not in calls.environs[1] or calls.environs[1]["CONTENT_LENGTH"] in ("", "0")


def test_buffer_limits_413_and_500():
    calls = Calls()
    with waitress_server(flask_app(calls, [go("buffer")])) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/b", content=b"y" * (2 << 20))
        assert r.status_code == 413 and r.text.startswith("Payload Too Large")
        r = c.get("/big")
        assert r.status_code == 500 and not r.content.startswith(b"xxxx")
        assert c.get("/ok").status_code == 200


def test_client_gone_while_held_runs_on_log_and_leaks_nothing(caplog):
    caplog.set_level(logging.INFO, logger="pyproxywasm.plugin.f")
    calls = Calls()
    app = flask_app(calls, [go("metrics log pause tick=300", vm_id="wsgi-disc")])
    before = gauge("inflight")
    with waitress_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /held HTTP/1.1\r\nhost: x\r\nx-pause: 1\r\n\r\n")
        time.sleep(0.1)
        s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (gauge("inflight") != before or not any(
                r.getMessage() == "done path=/held" for r in caplog.records)):
            time.sleep(0.05)
    assert gauge("inflight") == before
    assert any(r.getMessage() == "done path=/held" for r in caplog.records)


def test_slowloris_client_does_not_hold_up_others():
    calls = Calls()
    with waitress_server(flask_app(calls, [go("buffer")]), threads=2) as url, \
            httpx.Client(base_url=url, timeout=10) as c:
        port = int(url.rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        s.sendall(b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\n")
        for b in b"abcd":
            s.sendall(bytes([b]))
            assert c.get("/other").status_code == 200
            time.sleep(0.1)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
    assert data.startswith(b"HTTP/1.1 200") and b'"body":"ABCD"' in data


def test_1000_concurrent_connections():
    calls = Calls()
    # No per-callback deadline: see the ASGI twin of this test.
    app = flask_app(calls, [dataclasses.replace(go("headers"), deadline_ms=None)])

    async def main(url):
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as c:
            return await asyncio.gather(*(c.get(f"/c/{i}") for i in range(1000)))

    with cheroot_server(app, threads=8) as url:
        rs = asyncio.run(main(url))
    assert all(r.status_code == 200 and r.headers["x-wasm-resp"] == "f" for r in rs)
    assert sorted(r.json()["path"] for r in rs) == sorted(f"/c/{i}" for i in range(1000))


def test_trap_fails_closed_with_503():
    calls = Calls()
    plugin = PluginConfig(VmConfig(str(WAT / "trap.wasm")), name="t")
    with waitress_server(flask_app(calls, [plugin]), threads=1) as url, httpx.Client(base_url=url) as c:
        assert c.get("/ok").status_code == 200
        r = c.get("/t", headers={"x-trap": "1"})
        assert r.status_code == 503 and "grpc-status" not in r.headers
        r = c.get("/after")
        assert r.status_code == 503 and calls.n == 1


def test_filter_chain_of_two_plugins():
    calls = Calls()
    chain = [go("headers", root_id="a"), go("headers", root_id="b")]
    with waitress_server(flask_app(calls, chain)) as url, httpx.Client(base_url=url) as c:
        r = c.get("/chain")
        assert hdr(r.json(), "x-wasm-req") == ["a,b"]  # WSGI joins repeated headers
        assert r.headers.get_list("x-wasm-resp") == ["b", "a"]


def test_pause_resumed_by_an_http_call_answer():
    from pyproxywasm.net import Cluster
    from _servers import uvicorn_server
    from test_asgi import auth_server_app

    calls = Calls()
    plugin = PluginConfig(VmConfig(str(GO_HTTP.parent / "callouts.wasm")), name="auth",
                          configuration='{"mode": "auth", "path": "/check"}')
    with uvicorn_server(auth_server_app()) as upstream:
        cluster = Cluster("callout", [upstream.split("//")[1]], connect_timeout=2.0)
        app = Flask(__name__)

        @app.route("/<path:p>")
        def echo(p):
            calls.n += 1
            return {"headers": list(request.headers.items())}

        app.wsgi_app = ProxyWasmWSGIMiddleware(app.wsgi_app, plugins=[plugin],
                                               host_options={"clusters": [cluster]})
        with waitress_server(app) as url, httpx.Client(base_url=url, timeout=10) as c:
            r = c.get("/private", headers={"x-user": "bob"})
            assert r.status_code == 200 and hdr(r.json(), "x-auth-user") == ["bob"]
            r = c.get("/private")
            assert r.status_code == 403 and r.text == "who are you"
        app.wsgi_app.close()  # the Host it made, and its outbound connections
    assert calls.n == 1
