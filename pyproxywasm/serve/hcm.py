"""What Envoy's http_connection_manager does around the filters.

Before the decoder filters, to every request: `x-forwarded-proto` set to the downstream
connection's scheme (Envoy overwrites a client's value when it trusts no hops, its
default), and an `x-request-id` (a random UUID) when the request has none and
`generate_request_id` is on (the default); plugins see both (the Rust SDK's http_headers
example logs them).

After the encoder filters, to every response: the `server` header (its `server_name`,
"envoy" unless configured, per `server_header_transformation`) and a `date` header when
none is there. A filter on one listener therefore sees what the upstream sent (the Go SDK's
http_headers example logs the `server: envoy` that the upstream listener's connection
manager set), and the client sees the listener's own."""
from __future__ import annotations

import email.utils
import os
import time
from typing import Any

from ..adapters.asgi import ASGIApp, Message, Receive, Scope, Send

OVERWRITE = "OVERWRITE"
APPEND_IF_ABSENT = "APPEND_IF_ABSENT"
PASS_THROUGH = "PASS_THROUGH"
TRANSFORMATIONS = (OVERWRITE, APPEND_IF_ABSENT, PASS_THROUGH)

_date_cache: list[Any] = [0, b""]  # [second, value]; any loop thread may refresh it (a race writes the same value)


def http_date() -> bytes:
    """The current time as an HTTP date, computed once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode()
        _date_cache[0] = now
    return _date_cache[1]  # type: ignore[no-any-return]


class RequestIds:
    """Random (version 4) UUIDs for x-request-id, from 4 KiB of os.urandom at a time: one
    uuid.uuid4() costs a getrandom call each (about 20 µs on a loaded machine here). One
    per listener and worker thread; not thread-safe."""

    def __init__(self) -> None:
        self._hex = ""
        self._off = 0

    def next(self) -> bytes:
        if self._off >= len(self._hex):
            self._hex, self._off = os.urandom(4096).hex(), 0
        h = self._hex[self._off:self._off + 32]
        self._off += 32
        # version 4 in the 13th digit; the RFC 4122 variant (8, 9, a or b) in the 17th
        return (f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}").encode()


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def connection_manager(app: ASGIApp, server_name: str = "envoy", transformation: str = OVERWRITE,
                       generate_request_id: bool = True) -> ASGIApp:
    """`app` (the listener's filters and router) with the connection manager's request
    headers (x-forwarded-proto, x-request-id) and response headers (server, date)."""
    server = server_name.encode("latin-1")
    ids = RequestIds()

    async def hcm(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        proto = scope.get("scheme", "http").encode()
        headers = list(scope["headers"])
        has_id = False
        xfp = -1
        for i, (k, _) in enumerate(headers):
            if k == b"x-forwarded-proto":
                xfp = i
            elif k == b"x-request-id":
                has_id = True
        if xfp >= 0:
            headers[xfp] = (b"x-forwarded-proto", proto)
            headers = [h for i, h in enumerate(headers) if h[0] != b"x-forwarded-proto" or i == xfp]
        else:
            headers.append((b"x-forwarded-proto", proto))
        if generate_request_id and not has_id:
            headers.append((b"x-request-id", ids.next()))
        scope = {**scope, "headers": headers}

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers") or ())
                has_server = has_date = False
                for k, _ in headers:
                    if k == b"server":
                        has_server = True
                    elif k == b"date":
                        has_date = True
                if transformation == OVERWRITE:
                    if has_server:
                        headers = [(k, v) for k, v in headers if k != b"server"]
                    headers.append((b"server", server))
                elif transformation == APPEND_IF_ABSENT and not has_server:
                    headers.append((b"server", server))
                if not has_date:
                    headers.append((b"date", http_date()))
                msg = {**msg, "headers": headers}
            await send(msg)
        await app(scope, receive, send_with_headers)
    return hcm
