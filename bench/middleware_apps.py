"""The apps the wrk benchmark serves: one minimal app, plain or behind the middleware.

The filter is chosen by PYPROXYWASM_BENCH_FILTER: "none", "minimal"
(tests/plugins/wat/bench_filter.wasm) or "go" (the bundled Go SDK example,
pyproxywasm/examples/header_rewrite.wasm, default configuration).

    uvicorn --factory bench.middleware_apps:asgi        # ASGI (uvicorn)
    uvicorn --factory bench.middleware_apps:fastapi     # the same response from a FastAPI app
    python -m bench.middleware_apps wsgi PORT           # WSGI (waitress, one thread)
"""
from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILTERS = {
    "minimal": ROOT / "tests" / "plugins" / "wat" / "bench_filter.wasm",
    "go": ROOT / "pyproxywasm" / "examples" / "header_rewrite.wasm",
}
BODY = b"hello, world\n"


def _plugins():
    from pyproxywasm import PluginConfig, VmConfig

    name = os.environ.get("PYPROXYWASM_BENCH_FILTER", "none")
    if name == "none":
        return []
    return [PluginConfig(VmConfig(str(FILTERS[name])), name=name)]


async def hello(scope, receive, send):
    """A plain ASGI app: the smallest response, so the filter's share is the largest."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def asgi():
    plugins = _plugins()
    if not plugins:
        return hello
    from pyproxywasm.adapters import ProxyWasmMiddleware

    return ProxyWasmMiddleware(hello, plugins=plugins)


def fastapi():
    """The same response from a FastAPI route, the kind of app a service owner puts the
    middleware in front of (its own routing, request and response objects per request)."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse(BODY)

    plugins = _plugins()
    if not plugins:
        return app
    from pyproxywasm.adapters import ProxyWasmMiddleware

    return ProxyWasmMiddleware(app, plugins=plugins)


def hello_wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def wsgi():
    plugins = _plugins()
    if not plugins:
        return hello_wsgi
    from pyproxywasm.adapters import ProxyWasmWSGIMiddleware

    return ProxyWasmWSGIMiddleware(hello_wsgi, plugins=plugins)


if __name__ == "__main__":
    if sys.argv[1] == "wsgi":
        from waitress import serve

        serve(wsgi(), host="127.0.0.1", port=int(sys.argv[2]), threads=1, _quiet=True)
