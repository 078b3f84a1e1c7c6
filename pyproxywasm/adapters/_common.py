"""What the ASGI and WSGI adapters share: the Host they run, request headers in Envoy's
form, the properties of a stream, and the response-side content-length fix-up."""
from __future__ import annotations

import itertools
import threading
from typing import Any, Iterable, Mapping, MutableMapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, unquote_to_bytes

from .. import http as http_mod
from .. import properties as props
from .. import wasmbin
from .._binding import lib
from ..config import PluginConfig
from ..host import Host, Plugin

# The exchange in C (pyproxywasm/_fast_exchange.c, StreamBase.asgi_* / wsgi_*): a chain of
# one filter takes it when the extension is built; PYPROXYWASM_FAST=0, a build without it
# and every chain of several filters take the general path in Python.
FAST = http_mod._fast is not None


class HostHolder:
    """The Host of a middleware: one it was given, or one it makes from plugin configs on
    the first thread that needs it (an event loop's thread, so that thread is the host's
    main thread and runs the singleton services) and closes at shutdown.

    filters: with a given host, the ones of its plugins this middleware runs, in this order
    (one listener's http_filters, when one Host serves several listeners); all of them in
    the host's order when None."""

    def __init__(self, plugins: Sequence[PluginConfig], host: Host | None,
                 host_options: Mapping[str, Any] | None,
                 filters: Sequence[Plugin] | None = None) -> None:
        if host is None and not plugins:
            raise ValueError("give plugins=[PluginConfig(...)] or host=Host(...)")
        if filters is not None:
            if host is None:
                raise ValueError("filters= picks plugins of a given host=Host(...)")
            foreign = [p for p in filters if p not in host.plugins]
            if foreign:
                raise ValueError(f"filters= holds plugins of another host: {foreign!r}")
        self._configs = list(plugins)
        self._options = dict(host_options or {})
        self.host = host
        self.owned = host is None
        self._lock = threading.Lock()
        self._reads: list[bool] | None = None
        # The one plugin and whether it reads properties, when there is exactly one (the
        # adapters' C exchange); None until the plugins are known (or after close()).
        self.one: tuple[Plugin, bool] | None = None
        self._plugins: list[Plugin] | None = None
        if host is not None:
            self._set_plugins(list(host.plugins if filters is None else filters))

    def _set_plugins(self, plugins: list[Plugin]) -> None:
        self._plugins = plugins
        self.one = (plugins[0], self.reads_properties[0]) if len(plugins) == 1 else None

    def get(self) -> Host:
        h = self.host
        if h is None:
            with self._lock:
                if self.host is None:
                    self.host = Host(self._configs, **self._options)
                    self._set_plugins(list(self.host.plugins))
                h = self.host
        return h

    @property
    def plugins(self) -> list[Plugin]:
        if self._plugins is None:
            self.get()
        return self._plugins  # type: ignore[return-value]

    @property
    def reads_properties(self) -> list[bool]:
        """Per plugin: does its module import proxy_get_property? Streams of one that
        does not are given no per-stream properties (it cannot read them): three C calls
        fewer per request."""
        r = self._reads
        if r is None or len(r) != len(self.plugins):
            r = self._reads = [_imports_get_property(p.config.vm_config.code_bytes())
                               for p in self.plugins]
        return r

    def close(self) -> None:
        if self.owned and self.host is not None:
            h, self.host, self._plugins, self.one = self.host, None, None, None
            h.close()


def _imports_get_property(code: bytes) -> bool:
    try:
        info = wasmbin.parse(code)
    except Exception:  # noqa: BLE001 - unreadable here means: assume it reads them
        return True
    return any(i.name == "proxy_get_property" for i in info.imports)


def request_headers(method: bytes, path: bytes, authority: bytes | None, scheme: bytes,
                    headers: Sequence[tuple[bytes, bytes]], http2: bool
                    ) -> tuple[bytes, int, bool, bool]:
    """Envoy's request headers in the C core's flat form, from an ASGI/WSGI request:
    (data, pairs, end_stream, is_grpc). HTTP/1's Host becomes :authority, as Envoy does;
    `authority` (the server's address) only when there is no Host header. end_stream when
    HTTP/1 framing says there is no body (no content-length, or 0, and no
    transfer-encoding); HTTP/2 always announces a body (ended later, maybe empty)."""
    flat = [b":method", method, b":path", path, b":authority", authority or b"", b":scheme", scheme]
    has_body = http2
    grpc = False
    host = False
    for k, v in headers:
        if k == b"host":
            if not host:
                flat[5], host = v, True
            continue
        if k == b"content-length":
            if v.strip() != b"0":
                has_body = True
        elif k == b"transfer-encoding":
            has_body = True
        elif k == b"content-type" and v.startswith(b"application/grpc"):
            grpc = True
        flat.append(k)
        flat.append(v)
    data = b"\0".join(flat)
    n = len(flat) >> 1
    if data.count(b"\0") != 2 * n - 1:
        from ..pairs import encode_pairs
        return encode_pairs(list(zip(flat[::2], flat[1::2]))), -1, not has_body, grpc
    return data, n, not has_body, grpc


def _enc(path: str, value: Any) -> tuple[bytes, bytes]:
    return next(iter(props.flatten({path: value})))


# A socket address as ASGI's scope and the WSGI environ give it: (host, port); a Unix
# socket's has no port.
Address = Tuple[str, Optional[int]]
_Listener = Union[Address, Tuple[()]]


class StreamProperties:
    """Envoy's source.*, destination.*, request.protocol and connection.* attributes for
    the streams of one thread. What a listener shares (destination, protocol, mtls) is set
    once on the thread's VMs; what a connection has (source, connection.id) is encoded once
    per connection and set per stream (three C calls).

    vm_wide=False keeps the listener's share per stream too: for VMs that serve other
    listeners as well (serve's listeners share one Host), which would overwrite it."""

    def __init__(self, vm_wide: bool = True) -> None:
        self._vm_wide = vm_wide
        self._server: _Listener | None = None
        self._protocol = ""
        self._cache: dict[tuple[Address | None, Address | None, str], list[tuple[bytes, bytes]]] = {}
        self._ids = itertools.count(1)

    def _listener(self, server: Address | None, protocol: str) -> list[tuple[bytes, bytes]]:
        p = [_enc("request.protocol", protocol), _enc("connection.mtls", False)]
        if server:
            if server[1] is not None:
                p.append(_enc("destination.address", f"{server[0]}:{server[1]}"))
                p.append(_enc("destination.port", int(server[1])))
            else:
                p.append(_enc("destination.address", str(server[0])))
        return p

    def for_stream(self, vms: Iterable[Any], client: Address | None, server: Address | None,
                   protocol: str) -> list[tuple[bytes, bytes]]:
        if self._server is None:
            self._server, self._protocol = server or (), protocol
            for vm in vms if self._vm_wide else ():
                for path, value in self._listener(server, protocol):
                    lib.pw_set_host_property(vm.ptr, 0, path, len(path), value, len(value))
        key = (client, server, protocol)
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            p = [_enc("connection.id", next(self._ids))]
            if client:
                p.append(_enc("source.address", f"{client[0]}:{client[1]}"))
                p.append(_enc("source.port", int(client[1] or 0)))
            if not self._vm_wide or (server or ()) != self._server or protocol != self._protocol:
                p.extend(self._listener(server, protocol))
            self._cache[key] = p
        return p


_NO_BODY_STATUS = (b"204", b"304")


def fix_content_length(headers: list[tuple[bytes, bytes]], body_len: int | None, head: bool
                       ) -> list[tuple[bytes, bytes]]:
    """Response headers with content-length made true: the exact length when the whole body
    is known (body_len), none when it is not and may have changed (None); HEAD, 204 and 304
    keep theirs (no body is sent for them)."""
    status = headers[0][1] if headers and headers[0][0] == b":status" else b""
    if head or status in _NO_BODY_STATUS or status.startswith(b"1"):
        return headers
    out = [(k, v) for k, v in headers if k != b"content-length"]
    if body_len is not None:
        out.append((b"content-length", str(body_len).encode()))
    return out


def asgi_path(scope: MutableMapping[str, Any], path: bytes) -> None:
    """A :path the filter rewrote, into the app's ASGI scope."""
    raw, _, qs = path.partition(b"?")
    scope["raw_path"] = raw
    scope["path"] = unquote(raw.decode("latin-1"))
    scope["query_string"] = qs


def wsgi_path(env: MutableMapping[str, Any], path: bytes) -> None:
    """A :path the filter rewrote, into the app's WSGI environ (under its SCRIPT_NAME)."""
    raw, _, qs = path.partition(b"?")
    p = unquote_to_bytes(raw).decode("latin-1")
    script = env.get("SCRIPT_NAME", "")
    env["PATH_INFO"] = p[len(script):] if script and p.startswith(script) else p
    env["QUERY_STRING"] = qs.decode("latin-1")
    env["REQUEST_URI"] = path.decode("latin-1")


if http_mod._fast is not None:
    http_mod._fast.set_helpers(asgi_path, wsgi_path)
