"""What Envoy's http_connection_manager does to every response after the encoder filters:
the `server` header (its `server_name`, "envoy" unless configured, per
`server_header_transformation`) and a `date` header when none is there.

These run after the Wasm filters, as in Envoy, so a filter on one listener sees what the
upstream sent (the Go SDK's http_headers example logs the `server: envoy` that the
upstream listener's connection manager set), and the client sees the listener's own."""
from __future__ import annotations

import email.utils
import time
from typing import Any

from .filters import ASGIApp, Receive, Scope, Send

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


def response_headers(app: ASGIApp, server_name: str = "envoy",
                     transformation: str = OVERWRITE) -> ASGIApp:
    """`app` whose responses get the connection manager's `server` and `date` headers."""
    server = server_name.encode("latin-1")

    async def hcm(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_headers(msg: dict[str, Any]) -> None:
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
