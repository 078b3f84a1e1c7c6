"""The router as an ASGI app: match a route, then answer directly or forward to the route's
cluster, streaming both ways. Envoy's answers where it answers itself: 404 with no route,
503 when no upstream connection can be made, 504 when the route timeout passes first."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Mapping

from .. import properties as props
from ..net.cluster import Cluster
from .config import HttpListener, Route
from .filters import Receive, Scope, Send
from .router import Router
from .upstream import Upstream, UpstreamConnectError, UpstreamResetError

log = logging.getLogger("pyproxywasm.serve")

_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
        b"te", b"trailer"}
CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
RESET = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
TIMEOUT = b"upstream request timeout"


async def reply(send: Send, status: int, body: bytes = b"", headers: list[Any] | None = None) -> None:
    h = list(headers or [])
    if body and not any(k == b"content-type" for k, _ in h):
        h.append((b"content-type", b"text/plain"))
    h.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ProxyApp:
    """One HTTP listener's routes, forwarding through `upstream` to `clusters`."""

    def __init__(self, listener: HttpListener, clusters: Mapping[str, Cluster], upstream: Upstream,
                 metadata: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.router = Router(listener.virtual_hosts)
        self.clusters = clusters
        self.upstream = upstream
        self.metadata = metadata or {}
        # Route attributes cost a second route match per request: only when there are any.
        self.has_metadata = bool(
            any(r.metadata or r.name for vh in listener.virtual_hosts for r in vh.routes)
            or any(self.metadata.get(r.action.cluster) for vh in listener.virtual_hosts
                   for r in vh.routes if r.action))

    def match(self, scope: Scope) -> tuple[Route | None, str, str]:
        """The route for a request scope, with its authority and path (query included)."""
        headers: dict[str, list[str]] = {}
        authority = ""
        for k, v in scope["headers"]:
            name = k.decode("latin-1")
            value = v.decode("latin-1")
            if name == "host":
                authority = value
            headers.setdefault(name, []).append(value)
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        headers[":path"] = [path]
        headers[":method"] = [scope["method"]]
        headers[":authority"] = [authority]
        return self.router.route(authority, path, headers), authority, path

    def route_properties(self, scope: Scope) -> dict[str, Any]:
        """What a filter may ask about the route this request takes, as Envoy's attributes."""
        route = self.match(scope)[0]
        if route is None:
            return {}
        out: dict[str, Any] = {}
        if route.name:
            out["route_name"] = route.name
        if route.metadata:
            out.update(tree_properties(("route_metadata", "filter_metadata"), route.metadata))
        if route.action is not None:
            name = route.action.cluster
            out["cluster_name"] = name
            meta = self.metadata.get(name)
            if meta:
                out.update(tree_properties(("cluster_metadata", "filter_metadata"), meta))
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
            return
        route, authority, path = self.match(scope)
        if route is None:
            await reply(send, 404)
            return
        if route.direct is not None:
            await reply(send, route.direct.status, route.direct.body)
            return
        await self._forward(route, scope, path, authority, receive, send)

    async def _forward(self, route: Route, scope: Scope, path: str, authority: str,
                       receive: Receive, send: Send) -> None:
        action = route.action
        assert action is not None  # a route without a direct_response has one
        cluster = self.clusters[action.cluster]
        m = route.match
        if action.prefix_rewrite is not None:
            if m.prefix is not None:
                path = action.prefix_rewrite + path[len(m.prefix):]
            elif m.path is not None:
                path = action.prefix_rewrite + path[len(m.path):]
        if action.host_rewrite is not None:
            authority = action.host_rewrite
        elif action.auto_host_rewrite:
            authority = cluster.endpoints[0]
        out = [(b":method", scope["method"].encode()), (b":path", path.encode("latin-1")),
               (b":authority", authority.encode("latin-1")), (b":scheme", cluster.scheme.encode())]
        has_body = False
        for k, v in scope["headers"]:
            if k == b"host" or k in _HOP:
                if k == b"transfer-encoding":
                    has_body = True
                continue
            if k == b"content-length" and v.strip() not in (b"", b"0"):
                has_body = True
            out.append((k, v))
        ext = scope.get("extensions", {}).get("pyproxywasm")
        if ext is not None:
            has_body = not ext["end_stream"]
        if not any(k == b"x-forwarded-proto" for k, _ in scope["headers"]):  # the connection manager's, else
            out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if action.timeout is not None:
            out.append((b"x-envoy-expected-rq-timeout-ms", str(int(action.timeout * 1000)).encode()))
        body: bytes | AsyncIterator[bytes] = _body(receive) if has_body else b""
        try:
            resp = await self.upstream.open(cluster, out, body, action.timeout)
        except Exception as e:  # noqa: BLE001 - every upstream failure is an answer here
            status, text = upstream_failure(e)
            log.info("upstream %s: %s", cluster.name, e)
            await reply(send, status, text)
            return
        try:
            rh = [(k, v) for k, v in resp.headers if k not in _HOP and k[:1] != b":"]
            await send({"type": "http.response.start", "status": resp.status, "headers": rh})
            # With a content-length the last chunk carries the end of stream (as Envoy's
            # last data frame does); a chunked body ends with an empty one.
            left = next((int(v) for k, v in rh if k == b"content-length" and v.isdigit()), -1)
            if left == 0 or scope["method"] == "HEAD":
                left = -1
            async for chunk in resp.chunks():
                if left > 0:
                    left -= len(chunk)
                    if left <= 0:
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if left != 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as e:
            log.info("upstream %s failed during the response: %s", cluster.name, e)
            raise  # the server aborts the downstream connection, as Envoy resets the stream
        finally:
            r = resp.release()
            if r is not None:
                await r


def upstream_failure(e: BaseException) -> tuple[int, bytes]:
    """Envoy's local answer for an upstream that failed before its response started: 504
    when the route timeout passed, else 503 (connection failure, or a reset)."""
    reason = getattr(e, "reason", None)  # net.http_client.CalloutError
    if isinstance(e, asyncio.TimeoutError) or reason == "timeout":
        return 504, TIMEOUT
    if isinstance(e, UpstreamConnectError) or (reason or "").startswith(("connect", "connection refused", "tls")):
        return 503, CONNECT_FAILURE
    if isinstance(e, (UpstreamResetError, ConnectionError)) or reason is not None:
        return 503, RESET
    raise e


def tree_properties(prefix: tuple[str, ...], tree: Mapping[str, Any]) -> dict[Any, Any]:
    """Properties for every node of a metadata tree, by segment tuples (filter names hold
    dots, so dotted paths would split them); maps are stored encoded, whole."""
    out: dict[Any, Any] = {prefix: props.encode_value(tree)}
    for k, v in tree.items():
        path = prefix + (str(k),)
        if isinstance(v, Mapping):
            out.update(tree_properties(path, v))
        else:
            out[path] = v if isinstance(v, (str, bytes, int, float, bool)) else json.dumps(v)
    return out


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        chunk = msg.get("body", b"")
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            return
