"""The adapters' one-filter exchange in C (pyproxywasm/_fast_exchange.c): what the app and
the client see is exactly what the general Python path gives them, for many request and
response shapes; headers a filter left alone are handed on without being rebuilt (the
core's PW_S_*_HEADERS_CHANGED flags); and Envoy's :authority is the client's Host header.
The apps are called in-process with real plugins (the committed .wasm files)."""
from __future__ import annotations

import asyncio
import io
import json
import os

import pytest

from conftest import WAT
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.abi import StreamFlags
from pyproxywasm.adapters import ProxyWasmMiddleware, ProxyWasmWSGIMiddleware
from pyproxywasm.adapters import _common, asgi as asgi_mod, wsgi as wsgi_mod

EXAMPLE = __import__("pathlib").Path(__import__("pyproxywasm").__file__).parent / "examples" / "header_rewrite.wasm"
NOOP = json.dumps({"request_headers": {}, "response_headers": {}})  # changes nothing
EDIT = json.dumps({"request_headers": {"x-a": "set", "accept": "text/html"},  # replace, add,
                   "remove_request_headers": ["user-agent", "x-b", "content-type"],  # remove
                   "response_headers": {"x-a": "r", "content-type": "text/html"}})
FILTERS = ["wat", "go", "go-noop", "go-edit"]

needs_fast = pytest.mark.skipif(not _common.FAST, reason="the C exchange is not built (or turned off)")


def plugin(which: str) -> PluginConfig:
    if which == "wat":
        return PluginConfig(VmConfig(str(WAT / "bench_filter.wasm")), name="w", root_id="w")
    if which == "go-noop":
        return PluginConfig(VmConfig(str(EXAMPLE)), name="g", root_id="g", configuration=NOOP)
    if which == "go-edit":
        return PluginConfig(VmConfig(str(EXAMPLE)), name="g", root_id="g", configuration=EDIT)
    return PluginConfig(VmConfig(str(EXAMPLE)), name="g", root_id="g")


# ---- ASGI -------------------------------------------------------------------------------
BASE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/a b", "raw_path": b"/a%20b", "query_string": b"x=1&y=%20",
        "root_path": "", "headers": [(b"host", b"example.com"), (b"user-agent", b"t"),
                                     (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}

REQUESTS = {
    "get": {},
    "no query": {"query_string": b""},
    "no host header": {"headers": [(b"accept", b"*/*")]},
    "host not first": {"headers": [(b"accept", b"*/*"), (b"host", b"h.example")]},
    "headers the filter edits": {"headers": [(b"host", b"h"), (b"x-a", b"1"), (b"x-b", b"2"),
                                             (b"x-a", b"again"), (b"accept", b"text/html")]},
    "two hosts": {"headers": [(b"host", b"first"), (b"host", b"second")]},
    "unix socket": {"server": ("/tmp/sock", None), "headers": [(b"accept", b"*/*")]},
    "no server": {"server": None, "headers": [(b"accept", b"*/*")]},
    "post with body": {"method": "POST", "headers": [(b"host", b"h"), (b"content-length", b"5")]},
    "post length 0": {"method": "POST", "headers": [(b"host", b"h"), (b"content-length", b" 0 ")]},
    "chunked": {"method": "POST", "headers": [(b"host", b"h"), (b"transfer-encoding", b"chunked")]},
    "http2": {"http_version": "2", "headers": [(b"host", b"h")]},
    "grpc": {"method": "POST", "http_version": "2",
             "headers": [(b"host", b"h"), (b"content-type", b"application/grpc")]},
    "head": {"method": "HEAD"},
    "extensions kept": {"extensions": {"http.response.trailers": {}}},
    "non-ASCII raw path": {"raw_path": b"/\xc3\xa9t\xc3\xa9", "path": "/été"},
    "NUL in a header (refused: 503)": {"headers": [(b"host", b"h"), (b"x", b"a\0b")]},
    "list pairs": {"headers": [[b"host", b"h"], [b"x-l", b"1"]]},
}

RESPONSES = {
    "plain": (200, [(b"content-type", b"text/plain"), (b"content-length", b"5")], [b"hello"]),
    "wrong length": (200, [(b"content-length", b"99")], [b"hello"]),
    "no length": (200, [(b"x-a", b"1")], [b"hello"]),
    "streamed": (200, [(b"content-length", b"10")], [b"hello", b"world"]),
    "empty": (200, [(b"content-length", b"0")], [b""]),
    "204": (204, [(b"content-length", b"7")], [b""]),
    "304": (304, [], [b""]),
    "mixed-case names": (201, [(b"Content-Length", b"5"), (b"X-Up", b"V")], [b"hello"]),
    "str fields": (200, [("x-str", "v")], [b"hello"]),
}


def asgi_app(seen: dict, status: int, headers: list, chunks: list[bytes]):
    async def app(scope, receive, send):
        seen["scope"] = scope
        seen["headers_obj"] = scope["headers"]
        if scope["method"] == "POST":
            seen["body"] = (await receive()).get("body")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, c in enumerate(chunks):
            await send({"type": "http.response.body", "body": c, "more_body": i < len(chunks) - 1})
    return app


def run_asgi(which: str, scope: dict, response, fast: bool, monkeypatch) -> tuple[dict, list]:
    monkeypatch.setattr(asgi_mod, "FAST", fast)
    seen: dict = {}
    mw = ProxyWasmMiddleware(asgi_app(seen, *response), plugins=[plugin(which)])
    sent: list = []
    body = [{"type": "http.request", "body": b"hello", "more_body": False}]

    async def receive():
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    async def go():
        await mw(dict(scope), receive, send)
        mw.close()  # on the loop's thread, which owns the VMs
    asyncio.run(go())
    return seen, sent


def _comparable(seen: dict) -> dict:
    s = dict(seen.get("scope", {}))
    s["headers"] = [tuple(kv) for kv in s.get("headers", [])]
    return {"scope": s, "body": seen.get("body")}


@needs_fast
@pytest.mark.parametrize("which", FILTERS)
@pytest.mark.parametrize("req", list(REQUESTS))
def test_asgi_requests_the_same_on_both_paths(monkeypatch, which, req):
    scope = {**BASE, **REQUESTS[req]}
    fast = run_asgi(which, scope, RESPONSES["plain"], True, monkeypatch)
    general = run_asgi(which, scope, RESPONSES["plain"], False, monkeypatch)
    assert _comparable(fast[0]) == _comparable(general[0])
    assert fast[1] == general[1]
    assert fast[1][0]["status"] == (503 if "NUL" in req else 200)


@needs_fast
@pytest.mark.parametrize("which", FILTERS)
@pytest.mark.parametrize("resp", list(RESPONSES))
def test_asgi_responses_the_same_on_both_paths(monkeypatch, which, resp):
    fast = run_asgi(which, BASE, RESPONSES[resp], True, monkeypatch)
    general = run_asgi(which, BASE, RESPONSES[resp], False, monkeypatch)
    # Names the filter did not touch keep the app's spelling on the fast path (the general
    # path reads them back from the core, lowercased): compare names case-insensitively.
    def norm(msgs):
        return [{**m, "headers": [(bytes(k).lower() if isinstance(k, bytes) else k.lower().encode(),
                                   v if isinstance(v, bytes) else v.encode()) for k, v in m["headers"]]}
                if m["type"] == "http.response.start" else m for m in msgs]
    assert norm(fast[1]) == norm(general[1])
    start = fast[1][0]
    lengths = [v for k, v in start["headers"]
               if (k if isinstance(k, bytes) else k.encode()).lower() == b"content-length"]
    body = b"".join(m.get("body", b"") for m in fast[1][1:])
    status = RESPONSES[resp][0]
    if status in (204, 304):
        assert lengths == [dict(RESPONSES[resp][1]).get(b"content-length")][:len(lengths)]
    elif len(RESPONSES[resp][2]) == 1:
        assert lengths == [str(len(body)).encode()]  # made true: exactly one, exact


def test_host_header_is_the_authority_on_both_paths(monkeypatch):
    """Envoy's :authority is the Host header, not the server's own address: a filter that
    changes the request headers (so the app's headers are rebuilt from the filter's) must
    leave the app the client's Host."""
    scope = {**BASE, "headers": [(b"host", b"virtual.example:8080"), (b"accept", b"*/*")]}
    for fast in ([True, False] if _common.FAST else [False]):
        seen, sent = run_asgi("wat", scope, RESPONSES["plain"], fast, monkeypatch)
        hdrs = [tuple(kv) for kv in seen["scope"]["headers"]]
        assert (b"host", b"virtual.example:8080") in hdrs and (b"x-wasm-filter", b"1") in hdrs
        assert not any(v == b"127.0.0.1:8000" for _, v in hdrs)


@needs_fast
def test_headers_a_filter_left_alone_are_handed_on_as_they_are(monkeypatch):
    """With a filter that changes nothing, the app gets the client's own header list object
    and the server the app's own header pairs: nothing read back or rebuilt."""
    headers = [(b"x-app", b"1"), (b"content-type", b"text/plain")]
    seen, sent = run_asgi("go-noop", BASE, (200, headers, [b"hello"]), True, monkeypatch)
    assert seen["headers_obj"] is BASE["headers"]
    out = sent[0]["headers"]
    assert out[0] is headers[0] and out[1] is headers[1]
    assert out[2] == (b"content-length", b"5")
    seen, sent = run_asgi("wat", BASE, (200, headers, [b"hello"]), True, monkeypatch)
    assert seen["headers_obj"] is not BASE["headers"]
    assert (b"server", b"pyproxywasm") in sent[0]["headers"]


@pytest.mark.parametrize("which,changed", [("wat", True), ("go", True), ("go-noop", False)])
def test_the_core_says_which_headers_the_filter_changed(which, changed):
    with Host([plugin(which)]) as host:
        s = host.plugins[0].http_stream()
        s.send_request_headers([(":method", "GET"), (":path", "/"), (":authority", "h")])
        s.send_request_body(b"", True)
        assert bool(s.flags & StreamFlags.REQ_HEADERS_CHANGED) is changed
        s.send_response_headers([(":status", "200"), ("content-type", "text/plain")])
        assert bool(s.flags & StreamFlags.RESP_HEADERS_CHANGED) is changed
        s.send_response_body(b"x", True)
        s.finish()


def test_a_local_reply_marks_the_response_changed():
    cfg = PluginConfig(VmConfig(str(EXAMPLE)), name="g", root_id="g",
                       configuration=json.dumps({"deny_path_prefix": "/deny"}))
    with Host([cfg]) as host:
        s = host.plugins[0].http_stream()
        s.send_request_headers([(":method", "GET"), (":path", "/deny/x"), (":authority", "h")], True)
        assert s.flags & StreamFlags.LOCAL_REPLY and s.flags & StreamFlags.RESP_HEADERS_CHANGED
        s.finish()


# ---- WSGI -------------------------------------------------------------------------------
ENV = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/a b", "QUERY_STRING": "x=1",
       "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
       "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "HTTP_HOST": "example.com",
       "HTTP_USER_AGENT": "t", "HTTP_ACCEPT": "*/*", "wsgi.url_scheme": "http",
       "CONTENT_TYPE": "", "CONTENT_LENGTH": ""}

ENVIRONS = {
    "no REQUEST_URI (quoted)": {},
    "REQUEST_URI": {"REQUEST_URI": "/a%20b?x=1"},
    "RAW_URI": {"RAW_URI": "/raw?q"},
    "script name": {"SCRIPT_NAME": "/app", "PATH_INFO": "/x;y=1,z"},
    "latin-1 path": {"PATH_INFO": "/\u00e9t\u00e9"},
    "no host": {"HTTP_HOST": None},
    "post": {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "5", "CONTENT_TYPE": "text/plain"},
    "headers the filter edits": {"HTTP_X_A": "1", "HTTP_X_B": "2", "HTTP_ACCEPT": "text/html"},
    "a header the filter adds again (joined)": {"HTTP_X_WASM_FILTER": "0"},
    "HTTP_CONTENT_TYPE (not CGI's)": {"HTTP_CONTENT_TYPE": "text/x"},
    "non-ASCII value (general path)": {"HTTP_X_N": "\u00e9"},
}

WSGI_RESPONSES = {
    "plain": ("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")], [b"hello"]),
    "wrong length": ("200 OK", [("Content-Length", "99")], [b"hello"]),
    "generator": ("201 Created", [("X-A", "1")], None),  # a fresh generator of b"hel", b"lo"
    "empty": ("204 No Content", [], []),
    "custom reason": ("200 Fine", [("X-A", "1")], [b"hello"]),
}


def run_wsgi(which: str, env: dict, response, fast: bool, monkeypatch):
    monkeypatch.setattr(wsgi_mod, "FAST", fast)
    seen: dict = {}
    status, headers, chunks = response

    def app(environ, start_response):
        seen["env"] = {k: v for k, v in environ.items() if k not in ("wsgi.input", "wsgi.errors")}
        seen["body"] = environ["wsgi.input"].read()
        start_response(status, headers)
        return (c for c in [b"hel", b"lo"]) if chunks is None else list(chunks)

    mw = ProxyWasmWSGIMiddleware(app, plugins=[plugin(which)])
    started: list = []
    e = {k: v for k, v in {**ENV, **env}.items() if v is not None}
    e["wsgi.input"] = io.BytesIO(b"hello" if e["REQUEST_METHOD"] == "POST" else b"")
    e["wsgi.errors"] = io.StringIO()
    it = mw(e, lambda s, h, exc=None: started.append((s, list(h))))
    out = b"".join(it)
    getattr(it, "close", lambda: None)()
    mw.close()
    return seen, started, out


@needs_fast
@pytest.mark.parametrize("which", FILTERS)
@pytest.mark.parametrize("env", list(ENVIRONS))
def test_wsgi_requests_the_same_on_both_paths(monkeypatch, which, env):
    fast = run_wsgi(which, ENVIRONS[env], WSGI_RESPONSES["plain"], True, monkeypatch)
    general = run_wsgi(which, ENVIRONS[env], WSGI_RESPONSES["plain"], False, monkeypatch)
    assert fast[0] == general[0]
    assert fast[2] == general[2] == b"hello"


@needs_fast
@pytest.mark.parametrize("which", FILTERS)
@pytest.mark.parametrize("resp", list(WSGI_RESPONSES))
def test_wsgi_responses_the_same_on_both_paths(monkeypatch, which, resp):
    fast = run_wsgi(which, {}, WSGI_RESPONSES[resp], True, monkeypatch)
    general = run_wsgi(which, {}, WSGI_RESPONSES[resp], False, monkeypatch)

    def norm(started):
        return [(s, [(k.lower(), v) for k, v in h]) for s, h in started]
    assert norm(fast[1]) == norm(general[1])
    assert fast[2] == general[2]


def test_wsgi_repeated_header_is_joined(monkeypatch):
    for fast in ([True, False] if _common.FAST else [False]):
        seen, _, _ = run_wsgi("wat", {"HTTP_X_WASM_FILTER": "0"}, WSGI_RESPONSES["plain"], fast,
                              monkeypatch)
        assert seen["env"]["HTTP_X_WASM_FILTER"] == "0,1"


def test_wsgi_host_header_is_the_authority(monkeypatch):
    for fast in ([True, False] if _common.FAST else [False]):
        seen, _, _ = run_wsgi("wat", {"HTTP_HOST": "virtual.example"}, WSGI_RESPONSES["plain"],
                              fast, monkeypatch)
        assert seen["env"]["HTTP_HOST"] == "virtual.example"
        assert seen["env"]["HTTP_X_WASM_FILTER"] == "1"


@pytest.mark.skipif(os.environ.get("PYPROXYWASM_FAST") == "0", reason="turned off on purpose")
def test_the_exchange_in_c_is_built():
    assert _common.FAST
