"""The middleware's own cost per request, without a server or sockets: the app is called
directly (ASGI: a scope and in-memory receive/send on one event loop; WSGI: an environ and
start_response), plain and behind the middleware, and the process's CPU time per request
is compared. This isolates what the filter chain adds from the server's socket work, which
on a shared machine is the noisiest part of a wrk run.
"""
from __future__ import annotations

import asyncio
import io
import statistics
import time

from .middleware_apps import hello, hello_wsgi, FILTERS

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
         "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
         "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
         "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
ENVIRON = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
           "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "HTTP_HOST": "127.0.0.1:8000",
           "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*", "wsgi.url_scheme": "http",
           "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
           "wsgi.run_once": False, "wsgi.errors": io.StringIO()}


def _plugins(name: str):
    from pyproxywasm import PluginConfig, VmConfig

    return [PluginConfig(VmConfig(str(FILTERS[name])), name=name)]


async def _asgi_per_request(app, n: int) -> float:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        pass

    for _ in range(200):
        await app(dict(SCOPE), receive, send)
    t = time.process_time()
    for _ in range(n):
        await app(dict(SCOPE), receive, send)
    return (time.process_time() - t) / n * 1e6


def _wsgi_per_request(app, n: int) -> float:
    def start_response(status, headers, exc_info=None):
        return lambda data: None

    def one():
        env = dict(ENVIRON)
        env["wsgi.input"] = io.BytesIO(b"")
        it = app(env, start_response)
        for _ in it:
            pass
        close = getattr(it, "close", None)
        if close:
            close()

    for _ in range(200):
        one()
    t = time.process_time()
    for _ in range(n):
        one()
    return (time.process_time() - t) / n * 1e6


def measure(n: int = 20000, rounds: int = 3) -> dict[str, dict[str, float]]:
    from pyproxywasm.adapters import ProxyWasmMiddleware, ProxyWasmWSGIMiddleware

    out: dict[str, dict[str, list[float]]] = {"asgi": {}, "wsgi": {}}

    async def asgi_all():
        apps = {"none": hello, **{f: ProxyWasmMiddleware(hello, plugins=_plugins(f)) for f in FILTERS}}
        for _ in range(rounds):
            for f, app in apps.items():
                out["asgi"].setdefault(f, []).append(await _asgi_per_request(app, n))
        for f, app in apps.items():
            if f != "none":
                app.close()

    asyncio.run(asgi_all())
    apps = {"none": hello_wsgi, **{f: ProxyWasmWSGIMiddleware(hello_wsgi, plugins=_plugins(f)) for f in FILTERS}}
    for _ in range(rounds):
        for f, app in apps.items():
            out["wsgi"].setdefault(f, []).append(_wsgi_per_request(app, n))
    for f, app in apps.items():
        if f != "none":
            app.close()
    return {k: {f: statistics.median(v) for f, v in rows.items()} for k, rows in out.items()}


if __name__ == "__main__":
    for kind, rows in measure().items():
        for f, us in rows.items():
            print(f"{kind} {f:8s} {us:7.2f} us/request")
