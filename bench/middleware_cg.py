"""Instructions per request of the middleware (callgrind: deterministic, unlike wall-clock
time on a shared machine). The request is bench/middleware_inproc.py's: the smallest app
called in-process, plain or behind the middleware with the minimal WAT filter or the Go SDK
filter, ASGI or WSGI.

    python -m bench.middleware_cg                  # every row, under valgrind
    python -m bench.middleware_cg --rounds 1000    # requests per measured run

Each row runs the process twice under `valgrind --tool=callgrind --collect-atstart=no`,
with N and with 10 requests after a warm-up, only the measured loop collected (a two-line
library issuing CALLGRIND_TOGGLE_COLLECT, built here with cc): (total(N) - total(10)) /
(N - 10) is what one request costs, with the toggling's own cost cancelled.

    python -m bench.middleware_cg one KIND FILTER N   # the child (KIND asgi|wsgi)

FILTER "floor" (ASGI only) is no middleware at all but the do-nothing wrapper of the same
shape (`_Floor`): the cost any Python ASGI layer that wraps `send` and rebuilds the two
response messages has, which the middleware cannot go below while it is in Python.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import io
import os
import pathlib
import re
import subprocess
import sys
import tempfile

TOGGLE_C = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_TOGGLE_COLLECT; }
void cg_stop(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def _toggle() -> ctypes.CDLL | None:
    path = os.environ.get("PW_CG_TOGGLE")
    return ctypes.CDLL(path) if path else None


class _Floor:
    """The shape of the middleware's common ASGI path with nothing else: a coroutine around
    the app, the scope copied, `send` wrapped by a coroutine function (the start recorded,
    the body sent as two rebuilt messages)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        start = []

        async def wrapped(msg):
            if msg["type"] == "http.response.start":
                start.append(msg)
                return
            await send({"type": "http.response.start", "status": start[0]["status"],
                        "headers": list(start[0]["headers"]), "trailers": False})
            await send({"type": "http.response.body", "body": msg["body"], "more_body": False})

        await self.app(dict(scope), receive, wrapped)


def one(kind: str, filter_name: str, n: int) -> None:
    from .middleware_apps import hello, hello_wsgi
    from .middleware_inproc import ENVIRON, SCOPE, _plugins

    tg = _toggle()
    if kind == "asgi":
        from pyproxywasm.adapters import ProxyWasmMiddleware

        app = hello if filter_name == "none" else _Floor(hello) if filter_name == "floor" else \
            ProxyWasmMiddleware(hello, plugins=_plugins(filter_name))

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg):
            pass

        async def run():
            for _ in range(200):
                await app(dict(SCOPE), receive, send)
            tg and tg.cg_start()
            for _ in range(n):
                await app(dict(SCOPE), receive, send)
            tg and tg.cg_stop()

        asyncio.run(run())
    else:
        from pyproxywasm.adapters import ProxyWasmWSGIMiddleware

        app = hello_wsgi if filter_name == "none" else \
            ProxyWasmWSGIMiddleware(hello_wsgi, plugins=_plugins(filter_name))

        def start_response(status, headers, exc_info=None):
            return None

        def req():
            env = dict(ENVIRON)
            env["wsgi.input"] = io.BytesIO(b"")
            it = app(env, start_response)
            for _ in it:
                pass
            close = getattr(it, "close", None)
            if close:
                close()

        for _ in range(200):
            req()
        tg and tg.cg_start()
        for _ in range(n):
            req()
        tg and tg.cg_stop()


def _build_toggle(d: pathlib.Path) -> pathlib.Path:
    src, lib = d / "cgtoggle.c", d / "cgtoggle.so"
    src.write_text(TOGGLE_C)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def _instructions(lib: pathlib.Path, d: pathlib.Path, kind: str, f: str, n: int) -> int:
    out = d / f"cg.{kind}.{f}.{n}"
    env = dict(os.environ, PW_CG_TOGGLE=str(lib))
    subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, "-m", "bench.middleware_cg",
                    "one", kind, f, str(n)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=pathlib.Path(__file__).resolve().parents[1])
    m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
    if not m:
        raise RuntimeError(f"no summary in {out}")
    return int(m.group(1))


def measure(rounds: int = 1000, kinds=("asgi", "wsgi"), filters=("none", "minimal", "go")
            ) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as t:
        d = pathlib.Path(t)
        lib = _build_toggle(d)
        for kind in kinds:
            for f in filters:
                big = _instructions(lib, d, kind, f, rounds + 10)
                small = _instructions(lib, d, kind, f, 10)
                res.setdefault(kind, {})[f] = (big - small) / rounds
                print(f"{kind} {f:8s} {res[kind][f]:10.0f} instructions/request", flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "one":
        one(argv[1], argv[2], int(argv[3]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--kind", action="append")
    p.add_argument("--filter", action="append")
    a = p.parse_args(argv)
    measure(a.rounds, tuple(a.kind or ("asgi", "wsgi")), tuple(a.filter or ("none", "minimal", "go")))


if __name__ == "__main__":
    main()
