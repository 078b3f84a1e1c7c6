"""The http_filters of a listener: the adapters' ASGI middleware in front of the router.

serve is that middleware in front of a proxying app: one code path for middleware and
proxy (docs/ARCHITECTURE.md). What serve adds is small: one Host serves every listener,
so each listener's middleware runs its own subset of the host's plugins (in its
http_filters order) and gives each request its route's attributes; and the loop of each
worker thread serves that thread's dispatcher itself (LoopDispatch), for the TCP
listeners' streams as well as the HTTP ones.

A failed VM follows the plugin's failure_policy (fail_open included), applied per stream
by the C core as for the middleware.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from ..adapters.asgi import ASGIApp, ProxyWasmMiddleware, Receive, Scope, Send
from ..dispatch import Dispatcher
from ..host import Plugin

__all__ = ["ASGIApp", "LoopDispatch", "Receive", "Scope", "Send", "wrap"]


class LoopDispatch:
    """This thread's dispatcher served from its asyncio loop, plus a signal paused streams
    wait on: it fires after every dispatcher run (a tick or notification may have resumed
    a stream) and after any stream event that may have continued another stream."""

    def __init__(self, dispatcher: Dispatcher, loop: asyncio.AbstractEventLoop) -> None:
        self.dispatcher = dispatcher
        self.loop = loop
        self._waiters: list[asyncio.Future[Any]] = []
        self._detach = dispatcher.attach(loop, self.kick)

    def kick(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def changed(self) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        self._waiters.append(fut)
        return fut

    def close(self) -> None:
        self._detach()
        self.kick()


def wrap(app: ASGIApp, filters: Sequence[Plugin],
         route_properties: Callable[[Scope], dict[str, Any]] | None = None) -> ASGIApp:
    """`app` behind the filters (plugins of one Host, the first one sees the request
    first), on loops whose dispatcher a LoopDispatch serves. route_properties(scope): the
    attributes of the route the request matches (Envoy's route_name, route_metadata,
    cluster_name, cluster_metadata)."""
    if not filters:
        return app
    return ProxyWasmMiddleware(app, host=filters[0].host, filters=filters,
                               route_properties=route_properties, attached=True)
