"""WSGI middleware: Envoy HTTP filters (Proxy-Wasm plugins) in front of a WSGI app.

    app.wsgi_app = ProxyWasmWSGIMiddleware(app.wsgi_app, plugins=[PluginConfig(...)])

The same contract as the ASGI middleware, for a threaded WSGI server (waitress, cheroot,
gunicorn's gthread, Django's runserver): each server thread gets its own VMs on first use
(the per-thread model of host.py). A request a plugin holds blocks only its own thread,
which meanwhile runs its dispatcher (ticks, queue notifications, callout answers for its
VMs): it waits on the dispatcher's fd with the next tick as timeout, runs it, and re-checks
the stream. The request body streams to the app through `wsgi.input` as the plugins let it
through, and the response through the returned iterable, chunk by chunk.

WSGI gives no notice of a client that goes away while a request is held: the request goes
on when the plugin continues it, and on_log/on_done run when the server closes the response
(as it does for a dead client). Singleton plugins (Envoy's Wasm services) need a Host with
a main thread of its own: pass host=Host(plugins, concurrency=1).
"""
from __future__ import annotations

import select
import threading
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Type
from urllib.parse import quote

from .._binding import lib
from ..config import PluginConfig
from ..errors import ProxyWasmError
from ..host import Host
from ..http import HttpStream
from ._common import (FAST, HostHolder, StreamProperties, fix_content_length, request_headers,
                      wsgi_path)
from .asgi import StreamReset
from .chain import FilterChain, LazyChain, _END, _HDR, _R_REQ_HDR, _raw, decode_raw, headers_of, take_body

_REQ_HDR_OUT, _REQ_ENDED = lib.PW_S_REQ_HEADERS_OUT, lib.PW_S_REQ_ENDED
_RESP_HDR_OUT, _RESP_ENDED, _FAILED = lib.PW_S_RESP_HEADERS_OUT, lib.PW_S_RESP_ENDED, lib.PW_S_FAILED
_OVER = lib.PW_S_LOCAL_REPLY | lib.PW_S_RESET | _FAILED
_REQ_CHANGED = lib.PW_S_REQ_HEADERS_CHANGED
_POLL = 0.25
Environ = dict[str, Any]
ExcInfo = Tuple[Type[BaseException], BaseException, Optional[TracebackType]]
Write = Callable[[bytes], object]
StartResponse = Callable[..., Write]  # (status, headers[, exc_info]) -> write
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_CHUNK = 65536
_REASONS = {200: "OK", 403: "Forbidden", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _reason(status: int) -> str:
    from http import HTTPStatus
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} {_REASONS.get(status, 'Unknown')}"


class ProxyWasmWSGIMiddleware:
    """Runs Proxy-Wasm HTTP filters in front of a WSGI app (plugins in Envoy's
    http_filters order; or host= an existing Host, then its plugins)."""

    def __init__(self, app: WSGIApp, plugins: Sequence[PluginConfig] = (), *,
                 host: Host | None = None, host_options: Mapping[str, Any] | None = None) -> None:
        self.app = app
        self._holder = HostHolder(plugins, host, host_options)
        self._local = threading.local()  # per server thread: its StreamProperties

    @property
    def host(self) -> Host:
        return self._holder.get()

    def close(self) -> None:
        """Closes the Host if this middleware made it (each server thread's VMs also go
        when that thread ends)."""
        self._holder.close()

    def _props(self, host: Host, environ: Environ) -> list[tuple[bytes, bytes]]:
        """The stream's encoded properties (StreamProperties, one per server thread); a
        thread's next request from the same connection reuses the last ones."""
        local = self._local
        sp: StreamProperties | None = getattr(local, "props", None)
        if sp is None:
            sp = local.props = StreamProperties()
            local.last = None
        key = (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"), environ.get("SERVER_NAME", ""),
               environ.get("SERVER_PORT"), environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        last = local.last
        if last is not None and last[0] == key:
            props: list[tuple[bytes, bytes]] = last[1]
            return props
        client = (key[0], int(key[1] or 0)) if key[0] else None
        server = (key[2], int(key[3] or 0))
        props = sp.for_stream(host.vms if sp._server is None else (), client, server, key[4])
        local.last = (key, props)
        return props

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        holder = self._holder
        host = holder.host or holder.get()
        one = holder.one
        if not FAST or one is None:
            return self._general(host, environ, start_response)
        # The common case, one filter, here with as few Python calls as it takes: the
        # request headers and properties go in with one C call (StreamBase.wsgi_start),
        # None when the environ is not what it takes; the properties only for a plugin
        # that can read them (and once per thread for the VM-wide ones).
        reads = one[1]
        props = self._props(host, environ) if reads or getattr(self._local, "props", None) is None \
            else None
        try:
            s: HttpStream | None = one[0].http_stream()
        except ProxyWasmError:
            s = None  # the general path fails the stream closed
        r = s.wsgi_start(environ, props if reads else None) if s is not None else None
        if r is None:
            return self._general(host, environ, start_response)
        assert s is not None
        f, eos, grpc = r
        # _Exchange(self.app, host, chain, environ, start_response, eos, b"") without the
        # class call's own cost, and without its chain until asked (LazyChain); the
        # client's body source only when there is a body.
        ex = _new(_Exchange)
        ex.app, ex.one, ex.environ, ex.host, ex.start_response = (
            self.app, s, environ, host, start_response)
        ex.made_with = (grpc, f, eos)
        ex.down_ended = eos
        ex.fast = True
        try:
            if not eos:
                ex._body_source()
            if f < 0 or f & (_OVER | _REQ_HDR_OUT) != _REQ_HDR_OUT:
                return ex.run()  # held, answered or failed: the general exchange
            return ex.answer(self.app(ex._app_environ(s), ex._start_response))
        except BaseException:
            ex.finish()
            raise

    def _general(self, host: Host, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The general path: any chain, or an environ the C exchange does not take."""
        props = self._props(host, environ)
        protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        plugins = self._holder.plugins
        method = environ["REQUEST_METHOD"]
        path = _request_uri(environ)
        headers: list[tuple[bytes, bytes]] = []
        for k, v in environ.items():
            if k[0] == "H" and k.startswith("HTTP_"):
                headers.append((k[5:].lower().replace("_", "-").encode("latin-1"), v.encode("latin-1")))
            elif k[0] == "C" and k in ("CONTENT_TYPE", "CONTENT_LENGTH") and v:
                headers.append((k.lower().replace("_", "-").encode("latin-1"), v.encode("latin-1")))
        authority = None if "HTTP_HOST" in environ else \
            f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}".encode("latin-1")
        scheme = environ.get("wsgi.url_scheme", "http")
        data, nflat, eos, grpc = request_headers(method.encode("latin-1"), path, authority,
                                                 scheme.encode(), headers, protocol.startswith("HTTP/2"))
        chain = FilterChain(plugins, props, grpc, self._holder.reads_properties)
        if chain.empty:
            return self.app(environ, start_response)
        ex = _Exchange(self.app, host, chain, environ, start_response, eos, path)
        ex._body_source()
        try:
            chain.push_request_headers(data, nflat, eos)
            return ex.run()
        except BaseException:
            chain.finish()
            raise


def _request_uri(environ: Environ) -> bytes:
    """The request's target as the client sent it (REQUEST_URI / RAW_URI when the server
    gives it, else rebuilt from SCRIPT_NAME, PATH_INFO and QUERY_STRING)."""
    uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not uri:
        raw = quote((environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1"),
                    safe="/;=,:@!$&'()*+~")
        qs = environ.get("QUERY_STRING", "")
        uri = raw + "?" + qs if qs else raw
    return uri.encode("latin-1")


class _Exchange(LazyChain):
    """One request through the chain and the app on one server thread."""

    # What an exchange starts with, as class attributes: the common path sets only what
    # differs per request (and makes the exchange with _new: keep the two in step).
    input: Any = None
    remaining = 0
    unbounded = False
    path = b""
    pending = b""
    resp_started = resp_done = False
    resp_in = 0
    status: str | None = None
    app_headers: list[tuple[str, str]] | None = None
    hdr_pushed = end_pushed = False
    server_write: Write | None = None
    fast = False  # one filter, started by wsgi_start: the exchange in C (and then `one`
    # and `made_with` instead of a chain: LazyChain makes it if asked)
    ready: bytes | None = None  # the first body the C exchange made ready to send
    app: WSGIApp
    environ: Environ
    host: Host
    start_response: StartResponse
    down_ended: bool

    def __init__(self, app: WSGIApp, host: Host, chain: FilterChain, environ: Environ,
                 start_response: StartResponse, eos: bool, path: bytes) -> None:
        self.app, self._chain, self.environ = app, chain, environ
        self.host = host  # its dispatcher is run while a plugin holds the stream
        self.start_response = start_response
        self.down_ended = eos
        self.path = path

    def _body_source(self) -> None:
        """Where the client's body comes from (read_client): the server's input, and how
        much of it there is."""
        environ = self.environ
        self.input = environ.get("wsgi.input")
        try:
            self.remaining = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            self.remaining = 0
        self.unbounded = environ.get("wsgi.input_terminated", False) and not self.remaining

    @property
    def head(self) -> bool:
        return bool(self.environ["REQUEST_METHOD"] == "HEAD")

    # ---- waiting and reading ------------------------------------------------------------
    def wait(self) -> None:
        """Runs this thread's dispatcher until something may have changed, then re-checks."""
        d = self.host.dispatcher
        t = d.next_timeout()
        p = select.poll()  # not select(): a busy server's fds pass 1024
        p.register(d.fileno(), select.POLLIN)
        p.poll(1000 * (_POLL if t is None else min(t, _POLL)))
        d.run()
        self.chain.refresh()
        self.chain.pump()

    def read_client(self) -> None:
        """One chunk of the client's body into the chain."""
        if self.down_ended:
            return
        n = _CHUNK if self.unbounded else min(_CHUNK, self.remaining)
        data = self.input.read(n) if n > 0 and self.input is not None else b""
        self.remaining -= len(data)
        end = not data or (not self.unbounded and self.remaining <= 0)
        if end:
            self.down_ended = True
        self.chain.push_request_body(data, end)

    # ---- the exchange -------------------------------------------------------------------
    def run(self) -> Iterable[bytes]:
        chain = self.chain
        last = chain.request_out()
        # (No last filter means one could not serve the stream: the chain has answered.)
        while last is not None and not chain.answered and not (last.flags & _REQ_HDR_OUT):
            if not self.down_ended:
                self.read_client()  # held as Envoy buffers, up to the buffer limit
            else:
                self.wait()
        if last is None or chain.answered:
            return self._respond(iter(()))
        return self.answer(self.app(self._app_environ(last), self._start_response))

    def answer(self, app_iter: Iterable[bytes]) -> Iterable[bytes]:
        """What the server gets for the app's response."""
        if self.fast and app_iter.__class__ is list and len(app_iter) == 1 and app_iter[0] \
                and not self.hdr_pushed and self._fast_start(app_iter[0], True):
            # The common case, a whole body in one chunk, through in one C call.
            ready = self.ready
            if ready is not None and self.resp_done:
                self.ready = None
                sent = _Sent((ready,))
                sent._ex = self
                return sent
            return self._respond(app_iter, True)
        return self._respond(app_iter)

    def _app_environ(self, last: HttpStream) -> Environ:
        if self.fast:
            # In C: the server's environ when the filter left the headers alone, and the
            # body's keys (CONTENT_LENGTH or wsgi.input_terminated).
            r = last.wsgi_app_environ(self.environ)
            if r is not None:
                env: Environ
                env, self.pending = r
                env["wsgi.input"] = _chain_input(self)
                return env
            self.path = _request_uri(self.environ)
        if "HTTP_HOST" in self.environ and not any(f.flags & _REQ_CHANGED for f in self.chain.streams):
            # No filter changed the request headers (the core's flags): the server's
            # environ holds them already, with no per-header work in Python.
            env = dict(self.environ)
            for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if name in env and not env[name]:
                    del env[name]  # empty ones are not headers (the general path drops them)
            return self._app_body(env, last)
        hdrs = decode_raw(_raw(last, _R_REQ_HDR))
        env = {k: v for k, v in self.environ.items()
               if not k.startswith("HTTP_") and k not in ("CONTENT_TYPE", "CONTENT_LENGTH")}
        for k, v in hdrs:
            if k[:1] == b":":
                if k == b":method":
                    env["REQUEST_METHOD"] = v.decode("latin-1")
                elif k == b":authority":
                    env["HTTP_HOST"] = v.decode("latin-1")
                elif k == b":scheme":
                    env["wsgi.url_scheme"] = v.decode("latin-1")
                elif k == b":path" and v != self.path:
                    wsgi_path(env, v)
                continue
            name = k.decode("latin-1").upper().replace("-", "_")
            value = v.decode("latin-1")
            if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[name] = value
            else:
                key = "HTTP_" + name
                env[key] = env[key] + "," + value if key in env else value
        return self._app_body(env, last)

    def _app_body(self, env: Environ, last: HttpStream) -> Environ:
        """The app's environ given the body: its true length when known, else read to EOF."""
        if last.flags & _REQ_ENDED:
            self.pending = take_body(last, False)
            if self.pending or "CONTENT_LENGTH" in env:
                env["CONTENT_LENGTH"] = str(len(self.pending))
        else:
            # The body's length is known only at its end: read to EOF (PEP 3333's
            # wsgi.input_terminated, which Werkzeug and Django honour).
            env.pop("CONTENT_LENGTH", None)
            env["wsgi.input_terminated"] = True
        env["wsgi.input"] = _chain_input(self)
        return env

    def next_request_chunk(self) -> bytes:
        """The next body bytes the plugins let through for the app (b"" at the end)."""
        chain = self.chain
        while True:
            if chain.answered:
                return b""
            last = chain.streams[-1]
            body = take_body(last, False)
            if self.pending:
                body, self.pending = self.pending + body, b""
            if body:
                return body
            if last.flags & _REQ_ENDED:
                return b""
            if not self.down_ended:
                self.read_client()
            else:
                self.wait()

    # ---- response -----------------------------------------------------------------------
    def _start_response(self, status: str, headers: list[tuple[str, str]],
                        exc_info: ExcInfo | None = None) -> Write:
        if exc_info is not None and self.resp_started:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.app_headers = status, headers
        return self._write

    def _push_start(self, end: bool) -> None:
        if self.status is None or self.app_headers is None:
            raise RuntimeError("response body before start_response")
        self.hdr_pushed = True
        self.end_pushed = end
        hdrs = [(b":status", self.status.split(" ", 1)[0].encode("latin-1"))]
        hdrs.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.app_headers)
        self.chain.push_response_headers(hdrs, end)

    def _fast_start(self, data: bytes, end: bool) -> bool:
        """The app's response start and first body through the filter and, when it lets
        them through, the server's start_response: one C call (StreamBase.wsgi_respond);
        the body is then `ready` for _outputs. False when the response is not what it
        takes (the general path then does all)."""
        if self.status is None or self.app_headers is None:
            return False
        resp_in = self.resp_in + len(data)
        r: Any
        try:
            r = self.one.wsgi_respond(self.status, self.app_headers, data, end,
                                      self.environ["REQUEST_METHOD"] == "HEAD", resp_in)
        except ProxyWasmError as e:
            r = e
        if r is None:
            return False
        self.hdr_pushed = True
        self.end_pushed = end
        self.resp_in = resp_in
        made = self._chain
        if made is not None:  # (else the chain learns it when made)
            made._fed_resp[0] = _HDR | _END if end else _HDR  # fed to filter 0 by the C exchange
        if r.__class__ is not tuple:
            self.chain._die(0, r)
        elif r[2] is not None:
            _, status, headers, out, ended = r
            self.resp_started = True
            self.resp_done = ended
            self.ready = out
            self.server_write = self.start_response(
                status if status.__class__ is str else _reason(status), headers)
        return True

    def _push(self, data: bytes, end: bool) -> None:
        if self.chain.answered or self.end_pushed:
            return
        if not self.hdr_pushed:
            if self.fast and self._fast_start(data, end):
                return
            self._push_start(end and not data)
            if end and not data:
                return
        self.resp_in += len(data)
        if data or end:
            self.end_pushed = end
            self.chain.push_response_body(data, end)

    def _write(self, data: bytes) -> None:
        """PEP 3333's write() callable, for apps that use it."""
        self._push(data, False)
        for out in self._outputs():
            if out and self.server_write is not None:  # set by _outputs as it starts
                self.server_write(out)

    def _respond(self, app_iter: Iterable[bytes], pushed: bool = False) -> Iterator[bytes]:
        """The response as the server iterates it; `pushed`: the app's whole body already
        went into the chain (_fast_start)."""
        try:
            if pushed:
                pass
            elif isinstance(app_iter, (list, tuple)):
                # The whole body is known: the last chunk carries the end (one call fewer).
                chunks = [c for c in app_iter if c]
                for i, chunk in enumerate(chunks):
                    self._push(chunk, i == len(chunks) - 1)
                    yield from self._outputs()
                if self.status is not None and not chunks:
                    self._push(b"", True)
            else:
                for chunk in app_iter:
                    if chunk:
                        self._push(chunk, False)
                        yield from self._outputs()
                if self.status is not None:
                    self._push(b"", True)
            yield from self._outputs()
            while not self.resp_done and (self.chain.answered or self.end_pushed):
                self.wait()
                yield from self._outputs()
        finally:
            close = getattr(app_iter, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self.finish()

    def _outputs(self) -> Iterator[bytes]:
        """What the first filter let through, for the server (starting the response)."""
        ready = self.ready
        if ready is not None:  # the response the C exchange started
            self.ready = None
            yield ready
            return
        if self.resp_done:
            return
        chain = self.chain
        if chain.synthetic is not None:
            self._server_start(chain.synthetic, b"", True)
            yield b""
            return
        if chain.reset:
            self.resp_done = True
            raise StreamReset("a plugin reset the stream")
        s0 = chain.streams[0]
        f = s0.flags
        if not self.resp_started:
            if not f & _RESP_HDR_OUT:
                return
            body = take_body(s0, True)
            ended = bool(f & _RESP_ENDED)
            if not body and not ended:
                return
            self._server_start(headers_of(s0, True), body, ended)
            yield body
            return
        body = take_body(s0, True)
        if f & _RESP_ENDED:
            self.resp_done = True
        if body:
            yield body

    def _server_start(self, hdrs: list[tuple[bytes, bytes]], body: bytes, ended: bool) -> None:
        chain = self.chain
        failed = chain.failed
        if ended:
            hdrs = fix_content_length(hdrs, len(body), self.head)
        elif self.resp_in != len(body) or chain.answered:
            hdrs = fix_content_length(hdrs, None, self.head)
        status = 200
        out = []
        for k, v in hdrs:
            if k[:1] == b":":
                if k == b":status":
                    status = int(v)
            elif failed and k == b"grpc-status" and not chain.is_grpc:
                continue
            else:
                out.append((k.decode("latin-1"), v.decode("latin-1")))
        app_status = self.status if (self.status and not chain.answered and
                                     self.status.split(" ", 1)[0] == str(status)) else None
        self.resp_started = True
        self.resp_done = ended
        self.server_write = self.start_response(app_status or _reason(status), out)


class _Sent(list):  # type: ignore[type-arg]
    """A response the C exchange sent whole: its one body chunk, for the server to iterate
    (a list, so servers that size a one-item list see one); close() ends the stream.
    Made as _Sent((body,)) with _ex set after (no __init__ of its own: a Python __init__
    calling list's costs more than the rest of making it)."""

    __slots__ = ("_ex",)
    _ex: _Exchange

    def close(self) -> None:
        self._ex.finish()


class _ChainInput:
    """wsgi.input for the app: the body as the plugins let it through. (Made with
    chain_input: no __init__ call per request.)"""

    _buf = b""
    _eof = False
    _ex: _Exchange

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._ex.next_request_chunk()
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            out, self._buf = self._buf, b""
            return out
        while len(self._buf) < size and self._fill():
            pass
        out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def readline(self, size: int | None = -1) -> bytes:
        while b"\n" not in self._buf and (size is None or size < 0 or len(self._buf) < size) and self._fill():
            pass
        i = self._buf.find(b"\n")
        end = len(self._buf) if i < 0 else i + 1
        if size is not None and size >= 0:
            end = min(end, size)
        out, self._buf = self._buf[:end], self._buf[end:]
        return out

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        pass


def _chain_input(ex: _Exchange) -> _ChainInput:
    ci = _new(_ChainInput)
    ci._ex = ex
    return ci


_new = object.__new__

__all__ = ["ProxyWasmWSGIMiddleware"]
