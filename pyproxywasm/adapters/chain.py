"""One HTTP exchange through a chain of plugins, as Envoy runs its http_filters; no I/O.

The request goes through filter 0, then 1, ...; the response through them in reverse (Envoy's
encoder chain). Each filter is one HttpStream: what filter i lets through is fed to the next
one, and what the last lets through is the chain's output, which the ASGI/WSGI adapters hand
to the app or the client. A filter that stops keeps what it holds until it continues (from
a tick, a queue notification, a callout answer); `pump()` after `refresh()` moves on
whatever it released.

A local reply from filter i (or the host's fail-closed 503 when its VM failed) becomes the
response: it runs through filter i's own response callbacks in the C core, then through
filters i-1..0, the ones that saw the request. The app is then not called (or its response
is dropped, if it was already running).
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Callable, Sequence, Union

from .._binding import ffi, lib, raise_for
from ..errors import ProxyWasmError
from ..host import Plugin
from ..http import HttpStream
from ..pairs import encode_pairs

log = logging.getLogger("pyproxywasm.adapters")

_REQ_HDR_OUT, _RESP_HDR_OUT = lib.PW_S_REQ_HEADERS_OUT, lib.PW_S_RESP_HEADERS_OUT
_REQ_ENDED, _RESP_ENDED = lib.PW_S_REQ_ENDED, lib.PW_S_RESP_ENDED
_REQ_TR_OUT, _RESP_TR_OUT = lib.PW_S_REQ_TRAILERS_OUT, lib.PW_S_RESP_TRAILERS_OUT
_LOCAL, _RESET, _FAILED = lib.PW_S_LOCAL_REPLY, lib.PW_S_RESET, lib.PW_S_FAILED
_OVER = _LOCAL | _RESET | _FAILED
_R_REQ_HDR, _R_RESP_HDR = lib.PW_R_REQ_HEADERS, lib.PW_R_RESP_HEADERS
_R_REQ_TR, _R_RESP_TR = lib.PW_R_REQ_TRAILERS, lib.PW_R_RESP_TRAILERS
_R_REQ_BODY, _R_RESP_BODY = lib.PW_R_REQ_BODY, lib.PW_R_RESP_BODY
_read = lib.pw_http_read

# What has been fed into a filter, per direction.
_HDR, _END = 1, 2

FAIL_CLOSED, FAIL_OPEN = "FAIL_CLOSED", "FAIL_OPEN"


def failure_policy(plugin: Plugin) -> str:
    """The plugin's failure policy (Envoy's failure_policy) by name. The core applies it
    to each stream (FAIL_CLOSED: a 503 local reply; FAIL_OPEN: the stream passes without
    the filter, flag BYPASSED; FAIL_RELOAD: a new VM for later streams), so the chain
    just follows the stream's flags; this is the one place the adapters read it."""
    policy = getattr(plugin.config, "failure_policy", FAIL_CLOSED)
    return getattr(policy, "value", policy)


def fail_closed_response(is_grpc: bool) -> list[tuple[bytes, bytes]]:
    """The fail-closed reply's headers (Envoy's 503, details wasm_fail_stream)."""
    if is_grpc:
        return [(b":status", b"503"), (b"grpc-status", b"14"), (b"content-type", b"application/grpc")]
    return [(b":status", b"503")]


_lens: dict[int, struct.Struct] = {}

# Headers as a list of (name, value), or already in the pairs wire format (read from a filter).
Headers = Union[list[tuple[bytes, bytes]], bytes]


def decode_raw(data: bytes) -> list[tuple[bytes, bytes]]:
    """The pairs wire format as a list of (name, value) bytes, ASGI's header form."""
    if len(data) < 4:
        return []
    n = int.from_bytes(data[:4], "little")
    # Names and values are NUL-terminated after the length table: when none holds a NUL
    # itself (HTTP's never do), one split finds them all.
    parts = data[4 + 8 * n:].split(b"\0")
    if len(parts) == 2 * n + 1:
        return list(zip(parts[0:-1:2], parts[1:-1:2]))
    st = _lens.get(n)
    if st is None:
        st = _lens[n] = struct.Struct(f"<{2 * n}I")
    lens = st.unpack_from(data, 4)
    out: list[tuple[bytes, bytes]] = []
    off = 4 + 8 * n
    for i in range(0, 2 * n, 2):
        kl = lens[i]
        vend = off + kl + 1 + lens[i + 1]
        out.append((data[off:off + kl], data[off + kl + 1:vend]))
        off = vend + 1
    return out


class FilterChain:
    """The HttpStreams of one exchange, and the plumbing between them."""

    __slots__ = ("streams", "n", "is_grpc", "_fed_req", "_fed_resp", "dead", "synthetic",
                 "_closed")

    def __init__(self, plugins: Sequence[Plugin], properties: Sequence[tuple[bytes, bytes]] = (),
                 is_grpc: bool = False, reads_properties: Sequence[bool] | None = None,
                 extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """plugins: the filters, in order (any of a Host's plugins). properties: the
        stream's encoded (path, value) properties (connection attributes), extra: more of
        them for this request only (its route's and cluster's metadata); both are set on
        every filter whose module can read properties (reads_properties[i])."""
        self.is_grpc = is_grpc
        self.streams: list[HttpStream] = []
        self.dead = -1          # a filter whose VM could not serve the stream at all
        self.synthetic: list[tuple[bytes, bytes]] | None = None  # its 503, when it is filter 0
        self._closed = False
        set_prop = lib.pw_set_host_property
        failed_at = -1
        failure: BaseException | None = None
        for i, p in enumerate(plugins):
            try:
                s = p.http_stream()
                if (properties or extra) and (reads_properties is None or reads_properties[i]):
                    vm, cid = s._vm, s.context_id
                    for path, value in properties:
                        set_prop(vm, cid, path, len(path), value, len(value))
                    for path, value in extra:
                        set_prop(vm, cid, path, len(path), value, len(value))
            except ProxyWasmError as e:  # the VM failed earlier (or cannot make a context)
                failed_at, failure = len(self.streams), e
                break
            self.streams.append(s)
        self.n = len(self.streams)
        self._fed_req = [0] * self.n
        self._fed_resp = [0] * self.n
        if failure is not None:
            self._die(failed_at, failure)

    @classmethod
    def of_one(cls, stream: HttpStream, is_grpc: bool, f: int, end_stream: bool) -> "FilterChain":
        """The common chain of one filter, whose stream the adapter started itself with the
        exchange in C (StreamBase.asgi_start / wsgi_start): f is the core's flags after its
        request headers, or its error (the stream then fails closed, as
        push_request_headers does)."""
        c = cls.__new__(cls)
        c.streams = [stream]
        c.n = 1
        c.is_grpc = is_grpc
        c.dead = -1
        c.synthetic = None
        c._closed = False
        c._fed_req = [_HDR | _END if end_stream else _HDR]
        c._fed_resp = [0]
        if f < 0:
            try:
                raise_for(f, stream._vmobj)
            except ProxyWasmError as e:
                c._die(0, e)
        return c

    # ---- failure --------------------------------------------------------------------------
    def _die(self, i: int, err: BaseException) -> None:
        log.debug("filter %d cannot serve the stream (fail closed): %s", i, err)
        if self.dead < 0 or i < self.dead:
            self.dead = i
        # Filters before i see the 503 through their response callbacks.
        hdrs = fail_closed_response(self.is_grpc)
        if i == 0:
            self.synthetic = hdrs
        else:
            self._send_resp(i - 1, hdrs, None, True)

    def _call(self, i: int, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except ProxyWasmError as e:
            self._die(i, e)

    # ---- where the response comes from ---------------------------------------------------
    def origin(self) -> int:
        """The filter whose local reply is the response (or n: the app's response)."""
        o = self.dead if self.dead >= 0 else self.n
        if o == 1 and not self.streams[0].flags & _OVER:
            return 1  # the common case: one filter, no answer
        for i in range(o):
            if self.streams[i].flags & _OVER:
                return i
        return o

    @property
    def empty(self) -> bool:
        """No filter runs for this exchange (all skipped by FAIL_OPEN): pass it through."""
        return self.n == 0 and self.dead < 0

    @property
    def answered(self) -> bool:
        """A filter answered (local reply, failure) or reset: the app's part is over.
        (origin() < n, without finding which: asked several times per request.)"""
        if self.dead >= 0:
            return True
        for s in self.streams:
            if s.flags & _OVER:
                return True
        return False

    @property
    def failed(self) -> bool:
        """The response is a failure's 503 (a trap, or a VM that had failed before)."""
        o = self.origin()
        return o == self.dead or (o < self.n and bool(self.streams[o].flags & _FAILED))

    @property
    def reset(self) -> bool:
        """A filter reset the stream (proxy_close_stream, or a local reply or buffer overflow
        after its response headers went on): Envoy resets the downstream stream."""
        for s in self.streams:
            if s.flags & _RESET and s._id:
                return True
        return False

    # ---- input ---------------------------------------------------------------------------
    def push_request_headers(self, data: bytes, nflat: int, end_stream: bool) -> None:
        s = self.streams[0] if self.dead != 0 else None
        if s is not None:
            try:
                if nflat < 0:
                    s.send_request_headers(data, end_stream)
                else:  # the flat form: one C call with no encoding in Python
                    vm = s._vmobj
                    f = lib.pw_http_start(s._vm, s.plugin.context_id, data, len(data), nflat,
                                          end_stream, vm.u32) if not s._id else \
                        lib.pw_http_headers(s._vm, s._id, lib.PW_DIR_REQUEST, data, len(data), nflat, end_stream)
                    if not s._id:
                        s._id = vm.u32[0]
                    if f < 0:
                        raise_for(f, vm)
                    s.flags = f
            except ProxyWasmError as e:
                self._die(0, e)
            self._fed_req[0] = _HDR | (_END if end_stream else 0)
        self.pump()

    def push_request_body(self, data: bytes, end_stream: bool) -> None:
        if self.dead != 0 and not self._fed_req[0] & _END and not self.streams[0].flags & _OVER:
            self._call(0, self.streams[0].send_request_body, data, end_stream)
            if end_stream:
                self._fed_req[0] |= _END
        self.pump()

    def push_response_headers(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        """The app's response headers (":status" first), into the last filter."""
        if self.origin() == self.n:
            self._send_resp(self.n - 1, headers, None, end_stream)
        self.pump()

    def push_response_body(self, data: bytes, end_stream: bool) -> None:
        if self.origin() == self.n:
            self._send_resp(self.n - 1, None, data, end_stream)
        self.pump()

    def push_response_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.origin() == self.n:
            i = self.n - 1
            if not self._fed_resp[i] & _END:
                self._fed_resp[i] |= _END
                self._call(i, self.streams[i].send_response_trailers, trailers)
        self.pump()

    def _send_resp(self, i: int, headers: Headers | None, body: bytes | None, end: bool) -> None:
        s, fed = self.streams[i], self._fed_resp[i]
        if fed & _END:
            return
        if headers is not None and not fed & _HDR:
            eos = end and not body
            self._fed_resp[i] = fed = _HDR | (_END if eos else 0)
            self._call(i, _resp_headers, s, headers, eos)
            if eos:
                return
        if body is not None and fed & _HDR and (body or end):
            if end:
                self._fed_resp[i] |= _END
            self._call(i, s.send_response_body, body, end)

    # ---- between filters -----------------------------------------------------------------
    def pump(self) -> None:
        """Feeds every filter what the one before it let through, both ways."""
        if self.n <= 1:
            return  # one filter: nothing between filters (the common case)
        st = self.streams
        limit = self.dead if self.dead >= 0 else self.n
        # Request: 0 -> 1 -> ... -> n-1, stopping after a filter that answered.
        for i in range(1, limit):
            prev = st[i - 1]
            f = prev.flags
            if f & _OVER or not f & _REQ_HDR_OUT:
                break
            fed = self._fed_req[i]
            if fed & _END:
                continue
            s = st[i]
            body = _take(prev, _R_REQ_BODY)
            ended = bool(f & _REQ_ENDED)
            trailers = bool(f & _REQ_TR_OUT)
            if not fed & _HDR:
                eos = ended and not body and not trailers
                self._fed_req[i] = fed = _HDR | (_END if eos else 0)
                self._call(i, s.send_request_headers, _raw(prev, _R_REQ_HDR), eos)
                if eos or self.dead >= 0:
                    continue
            if body or (ended and not trailers):
                if ended and not trailers:
                    self._fed_req[i] |= _END
                self._call(i, s.send_request_body, body, ended and not trailers)
            if trailers and not self._fed_req[i] & _END:
                self._fed_req[i] |= _END
                self._call(i, s.send_request_trailers, decode_raw(_raw(prev, _R_REQ_TR)))
        # Response: origin -> origin-1 -> ... -> 0.
        o = self.origin()
        if o < self.n and self.dead == o:
            return  # its 503 went into filter o-1 already (or is `synthetic` for o == 0)
        # The app's response goes into filter n-1 directly; a local reply from filter o
        # comes out of o (after its own response callbacks) into o-1.
        for j in range(min(o, self.n - 1) - 1, -1, -1):
            src = st[j + 1]
            f = src.flags
            if not f & _RESP_HDR_OUT:
                break
            if f & _RESET and not f & _LOCAL:
                break
            fed = self._fed_resp[j]
            if fed & _END:
                continue
            s = st[j]
            body = _take(src, _R_RESP_BODY)
            ended = bool(f & _RESP_ENDED)
            trailers = bool(f & _RESP_TR_OUT)
            if not fed & _HDR:
                eos = ended and not body and not trailers
                self._fed_resp[j] = fed = _HDR | (_END if eos else 0)
                self._call(j, s.send_response_headers, _raw(src, _R_RESP_HDR), eos)
                if eos:
                    continue
            if body or (ended and not trailers):
                if ended and not trailers:
                    self._fed_resp[j] |= _END
                self._call(j, s.send_response_body, body, ended and not trailers)
            if trailers and not self._fed_resp[j] & _END:
                self._fed_resp[j] |= _END
                self._call(j, s.send_response_trailers, decode_raw(_raw(src, _R_RESP_TR)))

    def refresh(self) -> bool:
        """Re-reads every filter's state (a tick or notification may have resumed one);
        True when something changed."""
        changed = False
        for s in self.streams:
            if s._id:
                before = s.flags
                try:
                    if s.refresh() != before:
                        changed = True
                except ProxyWasmError:
                    pass
        return changed

    # ---- output --------------------------------------------------------------------------
    def request_out(self) -> HttpStream | None:
        """The last filter, whose forwarded request goes to the app (None: none reaches it)."""
        if self.dead >= 0:
            return None
        return self.streams[-1]

    def finish(self) -> None:
        """on_log, on_done, on_delete for every filter that saw the stream (once)."""
        if self._closed:
            return
        self._closed = True
        for s in self.streams:
            if s._id:
                try:
                    s.finish()
                except ProxyWasmError as e:
                    log.debug("finishing a stream: %s", e)


class LazyChain:
    """For an adapter's exchange: its FilterChain, made only when something asks for it
    when the exchange's one filter was started by the C exchange (asgi_start /
    wsgi_start). Making it costs about 4,000 instructions (the chain object, its lists,
    their freeing), a tenth of the common request, which never needs it: its response goes
    through with one C call."""

    one: HttpStream  # (the C exchange's) the one filter's stream
    made_with: tuple[bool, int, bool]  # is_grpc, the flags after its request headers, end_stream
    _chain: FilterChain | None = None
    hdr_pushed: bool
    end_pushed: bool

    @property
    def chain(self) -> FilterChain:
        c = self._chain
        if c is None:
            grpc, f, eos = self.made_with
            c = self._chain = FilterChain.of_one(self.one, grpc, f, eos)
            if self.hdr_pushed:  # what the C exchange has fed the filter of the response
                c._fed_resp[0] = _HDR | _END if self.end_pushed else _HDR
        return c

    def finish(self) -> None:
        """The chain's finish, without making it for this."""
        c = self._chain
        if c is not None:
            c.finish()
        elif self.one._id:
            try:
                self.one.finish()  # once: a finished stream's finish does nothing
            except ProxyWasmError as e:
                log.debug("finishing a stream: %s", e)


def encode_flat(items: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    """(name, value) bytes in the C core's flat form ("k\\0v\\0..."), or the pairs form when
    a name or value holds a NUL."""
    n = len(items)
    data = b"\0".join([x for kv in items for x in kv])
    if data.count(b"\0") != 2 * n - 1:
        return encode_pairs(items), -1
    return data, n


def _resp_headers(s: HttpStream, headers: Headers, eos: bool) -> None:
    if isinstance(headers, bytes):
        s.send_response_headers(headers, eos)
        return
    s.send_response_headers(headers, eos)  # the C fast path: encodes the list itself


def _raw(s: HttpStream, what: int) -> bytes:
    vm = s._vmobj
    rc = _read(s._vm, s._id, what, vm.out, vm.out_len)
    if rc < 0:
        return b"\0\0\0\0"
    n = vm.out_len[0]
    return ffi.buffer(vm.out[0], n)[:] if n else b"\0\0\0\0"


def _take(s: HttpStream, what: int) -> bytes:
    vm = s._vmobj
    rc = _read(s._vm, s._id, what, vm.out, vm.out_len)
    if rc < 0:
        return b""
    n = vm.out_len[0]
    return ffi.buffer(vm.out[0], n)[:] if n else b""


def headers_of(s: HttpStream, response: bool) -> list[tuple[bytes, bytes]]:
    return decode_raw(_raw(s, _R_RESP_HDR if response else _R_REQ_HDR))


def trailers_of(s: HttpStream, response: bool) -> list[tuple[bytes, bytes]]:
    return decode_raw(_raw(s, _R_RESP_TR if response else _R_REQ_TR))


def take_body(s: HttpStream, response: bool) -> bytes:
    return _take(s, _R_RESP_BODY if response else _R_REQ_BODY)


__all__ = ["FilterChain", "failure_policy", "fail_closed_response", "decode_raw", "headers_of",
           "trailers_of", "take_body", "FAIL_CLOSED", "FAIL_OPEN"]
