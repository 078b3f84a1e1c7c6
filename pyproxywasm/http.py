"""HTTP streams through a plugin: push request and response events, read what passed.

Each send_* is one call into the C core. What the filter let through is read back with
request_headers / take_request_body (and the response twins) and the *_forwarded and
*_complete flags; what it holds while paused stays held (held_request_body) until the
plugin continues (proxy_continue_stream), as in Envoy.
"""
from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping, MutableMapping, Optional, Sequence

from . import properties as props
from ._binding import ffi, lib, raise_for
from .errors import HostClosedError, StreamClosedError
from .abi import StreamFlags
from .pairs import HeaderItems, Headers, decode_pairs, encode_headers
from .policy import FailureOutcome

if TYPE_CHECKING:
    from .host import RootContext

_REQ, _RESP = lib.PW_DIR_REQUEST, lib.PW_DIR_RESPONSE
# Bound once: attribute lookups on the cffi lib cost more than the calls' own overhead.
_new, _start, _headers = lib.pw_http_new, lib.pw_http_start, lib.pw_http_headers
_data, _trailers = lib.pw_http_data, lib.pw_http_trailers
_finish, _flags, _read, _set_prop = lib.pw_http_finish, lib.pw_http_flags, lib.pw_http_read, lib.pw_set_host_property
_DONE = lib.PW_S_DONE
_ENDED_CHAIN = lib.PW_S_LOCAL_REPLY | lib.PW_S_RESET | lib.PW_S_FAILED
_REQ_STOPPED = lib.PW_S_REQ_STOPPED | _ENDED_CHAIN
_RESP_STOPPED = lib.PW_S_RESP_STOPPED | lib.PW_S_RESET | lib.PW_S_FAILED
_STOPPED = (_REQ_STOPPED, _RESP_STOPPED)


class Action(enum.IntEnum):
    """What a send_* did: CONTINUE when the data went on past the filter, PAUSE when it
    was held (paused, or the stream ended by a local response, reset or failure), DROPPED
    when an upstream response event came after the plugin's local response: Envoy drops
    it (the local response replaced it), the plugin never sees it."""

    CONTINUE = 0
    PAUSE = 1
    DROPPED = 2


_CONTINUE, _PAUSE = Action.CONTINUE, Action.PAUSE  # enum attribute lookups are not free
_LOCAL = lib.PW_S_LOCAL_REPLY


def _load_fast() -> ModuleType | None:
    """The per-event path in C (pyproxywasm/_fast.c): headers encoded from the caller's
    list in C, one call per event. Optional: without it (a build that skipped it, a
    sanitizer's scratch copy of the package, PYPROXYWASM_FAST=0) every event takes the
    cffi path below."""
    if os.environ.get("PYPROXYWASM_FAST") == "0":
        return None
    try:
        from . import _fast
    except ImportError:
        return None
    _fast.init(*(int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
                 for name in ("pw_http_start", "pw_http_headers", "pw_http_data", "pw_http_finish",
                              "pw_http_new", "pw_http_read", "pw_set_host_property",
                              "pw_vm_closed", "pw_set_lock_yield")))
    return _fast


_fast = _load_fast()

# Threads running VMs (thread ident -> live per-thread states on it), kept by
# pyproxywasm.host. While there is at most one, the C event path keeps the GIL across its
# core calls (see CORE_CALL in _fast.h): nobody else could run guest code meanwhile, and
# the core hands the GIL back once a guest call runs for a tick or a hostcall blocks.
_vm_threads: dict[int, int] = {}
_vm_threads_lock = threading.Lock()


def vm_thread(ident: int, delta: int) -> None:
    """Counts a thread's per-thread state in (+1) or out (-1)."""
    with _vm_threads_lock:
        n = _vm_threads.get(ident, 0) + delta
        if n > 0:
            _vm_threads[ident] = n
        else:
            _vm_threads.pop(ident, None)
        if _fast is not None:
            _fast.set_hold_gil(len(_vm_threads) <= 1)
_MALFORMED = -lib.PW_ERR  # the flat form refused (a NUL in a field): retried as pairs
_CLOSED = -lib.PW_ERR_CLOSED
if _fast is not None:
    _fast.set_constants(_CONTINUE, _PAUSE, Action.DROPPED, _REQ_STOPPED, _RESP_STOPPED, _DONE,
                        _LOCAL, _MALFORMED, _CLOSED)
_Props = Optional[Sequence[tuple[bytes, bytes]]]  # encoded (path, value) properties
if TYPE_CHECKING:  # one static base for the type checker; at run time, the C one if built
    _Base = object
else:
    _Base = _fast.StreamBase if _fast is not None else object


@dataclass(frozen=True)
class LocalResponse:
    """The response a plugin sent with proxy_send_local_response (or the host's 503 when
    the VM failed): as the plugin asked for it, before the response callbacks."""

    status: int
    body: bytes
    headers: Headers
    details: str
    grpc_status: int | None


class HttpStream(_Base):
    """One HTTP request/response through one plugin (an HTTP stream context).

    The five hot events (send_request_headers/_body, send_response_headers/_body, finish)
    are C methods of pyproxywasm._fast.StreamBase when it is built: header lists of str or
    bytes pairs go to the core without per-item Python work. Anything else they meet, and
    every event without the extension, takes the general methods below."""

    __slots__ = () if _fast is not None else ("plugin", "_id", "flags", "_vm", "_vmobj", "_vma", "_root")

    if _fast is None:  # (StreamBase's __init__ does the same in C)
        def __init__(self, plugin: "RootContext", properties: Mapping[Any, Any] | None = None) -> None:
            self.plugin = plugin
            vm = self._vmobj = plugin.vm
            self._vm = vm.ptr
            self._vma = vm.addr
            self._root = plugin.context_id
            self.flags = 0
            self._id = 0  # the context is made with the first event (or when asked for)
            if properties:
                self._set_properties(properties)

    if TYPE_CHECKING:
        # The adapters' one-filter exchange: C methods of _fast.StreamBase, present only
        # when the extension is (adapters/_common.FAST); see pyproxywasm/_fast_exchange.c.
        def asgi_start(self, scope: MutableMapping[str, Any], props: _Props,
                       extra: _Props) -> tuple[int, bool, bool] | None: ...
        def asgi_app_scope(self, scope: MutableMapping[str, Any],
                           pending: bytes) -> tuple[dict[str, Any], bytes]: ...
        def asgi_respond(self, status: int, headers: Any, body: bytes, end: bool, head: bool,
                         resp_in: int) -> tuple[Any, ...] | None: ...
        def wsgi_start(self, environ: MutableMapping[str, Any],
                       props: _Props) -> tuple[int, bool, bool] | None: ...
        def wsgi_app_environ(self, environ: MutableMapping[str, Any]
                             ) -> tuple[dict[str, Any], bytes] | None: ...
        def wsgi_respond(self, status: str, headers: Any, body: bytes, end: bool, head: bool,
                         resp_in: int) -> tuple[Any, ...] | None: ...

    def _set_properties(self, properties: Mapping[Any, Any]) -> None:
        """Per-stream host properties (set before the first event)."""
        cid = self.context_id
        for path, value in props.flatten(properties):
            _set_prop(self._vm, cid, path, len(path), value, len(value))

    @property
    def context_id(self) -> int:
        """The stream's context id (allocated now if no event was sent yet)."""
        if not self._id:
            vm = self._vmobj
            rc = _new(self._vm, self._root, vm.u32)
            if rc:
                raise_for(rc, vm)
            self._id = vm.u32[0]
        return self._id

    # ---- events ------------------------------------------------------------------------
    def _done(self, f: int, direction: int) -> Action:
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags = f
        return _PAUSE if f & _STOPPED[direction] else _CONTINUE

    def _dropped(self, f: int) -> Action:
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags = f
        return Action.DROPPED

    @property
    def stream_flags(self) -> StreamFlags:
        """The stream's state as named flags (the same bits as `flags`)."""
        return StreamFlags(self._current())

    def _raise(self, f: int) -> None:
        raise_for(f, self._vmobj)

    def _general_headers(self, direction: int, headers: HeaderItems, end_stream: bool) -> Action:
        """Headers in any form (bytes in the pairs format, a Mapping, any iterable of
        pairs), through the cffi binding."""
        data, n = (headers, -1) if headers.__class__ is bytes else encode_headers(headers)
        if direction == _RESP and self.flags & _LOCAL:  # after a local response: dropped
            return self._dropped(_headers(self._vm, self._id or self.context_id, _RESP, data,
                                          len(data), n, end_stream))
        if direction == _REQ and not self._id:  # create and deliver in one call
            vm = self._vmobj
            f = _start(self._vm, self._root, data, len(data), n, end_stream, vm.u32)
            self._id = vm.u32[0]
        else:
            f = _headers(self._vm, self._id or self.context_id, direction, data, len(data), n, end_stream)
        return self._done(f, direction)

    def _general_data(self, direction: int, data: bytes, end_stream: bool) -> Action:
        if direction == _RESP and self.flags & _LOCAL:
            return self._dropped(_data(self._vm, self._id or self.context_id, _RESP, data,
                                       len(data), end_stream))
        return self._done(_data(self._vm, self._id or self.context_id, direction, data, len(data),
                                end_stream), direction)

    def _general_finish(self) -> None:
        if self.flags & _DONE:
            return
        if not self._id:  # made now (a thread without a loop delivers what is pending)
            vm = self._vmobj
            rc = _new(self._vm, self._root, vm.u32)
            if rc == lib.PW_ERR_CLOSED:
                self.flags |= _DONE
                return
            if rc:
                raise_for(rc, vm)
            self._id = vm.u32[0]
        f = _finish(self._vm, self._id)
        if f < 0 and f != _CLOSED:
            raise_for(f, self._vmobj)
        self.flags |= _DONE

    def _abandoned(self) -> None:
        # Dropped without finish(): end it as Envoy ends a destroyed stream, on the VM's
        # own thread (now, or at that thread's next stream), so its context never leaks.
        try:
            if threading.get_ident() == self.plugin.thread:
                self.finish()
            else:
                self._vmobj.dropped.append(self._id)
        except Exception:  # noqa: BLE001 - a finalizer must not raise
            pass

    if _fast is None:
        def send_request_headers(self, headers: HeaderItems, end_stream: bool = False) -> Action:
            return self._general_headers(_REQ, headers, end_stream)

        def send_request_body(self, data: bytes, end_stream: bool = False) -> Action:
            return self._general_data(_REQ, data, end_stream)

        def send_response_headers(self, headers: HeaderItems, end_stream: bool = False) -> Action:
            return self._general_headers(_RESP, headers, end_stream)

        def send_response_body(self, data: bytes, end_stream: bool = False) -> Action:
            return self._general_data(_RESP, data, end_stream)

        def finish(self) -> None:
            """Ends the stream: proxy_on_log, proxy_on_done, proxy_on_delete (Envoy's
            order). Idempotent; after its VM was closed (the host closed, or FAIL_RELOAD
            replaced the VM) there is nothing left to end and it does nothing."""
            self._general_finish()

        def __del__(self) -> None:
            if self._id and not self.flags & _DONE:
                self._abandoned()

    def send_request_trailers(self, trailers: HeaderItems) -> Action:
        data, n = encode_headers(trailers)
        return self._done(_trailers(self._vm, self.context_id, _REQ, data, len(data), n), 0)

    def send_response_trailers(self, trailers: HeaderItems) -> Action:
        data, n = encode_headers(trailers)
        if self.flags & _LOCAL:
            return self._dropped(_trailers(self._vm, self.context_id, _RESP, data, len(data), n))
        return self._done(_trailers(self._vm, self.context_id, _RESP, data, len(data), n), 1)

    def refresh(self) -> int:
        """Re-reads the stream's state (after the plugin resumed it from a tick, say)."""
        if not self.flags & _DONE:
            f = _flags(self._vm, self.context_id)
            if f < 0:
                raise_for(f, self._vmobj)
            self.flags = f
        return self.flags

    def _current(self) -> int:
        """The stream's flags as they are now: a tick, a queue notification or a call's
        answer may have resumed (or answered) the stream since the last call on it. The
        last known flags once the stream or its host is gone (or before its first event)."""
        if not self._id:
            return int(self.flags)
        try:
            return self.refresh()
        except (HostClosedError, StreamClosedError):
            return int(self.flags)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks this (the stream's) thread, running its dispatcher — ticks, queue
        notifications, outbound call answers — until the plugin no longer holds the stream
        (it continued, answered locally, reset or failed). False if `timeout` seconds pass
        first. This is how a thread without an event loop (a WSGI worker, a test) waits for
        a stream its plugin paused on a callout."""
        held = lib.PW_S_REQ_STOPPED | lib.PW_S_RESP_STOPPED
        return self._vmobj.dispatcher.wait(lambda: not self.refresh() & held, timeout)

    def __enter__(self) -> "HttpStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    # ---- what the filter did --------------------------------------------------------------
    def _read(self, what: int) -> bytes:
        vm = self._vmobj
        rc = _read(self._vm, self.context_id, what, vm.out, vm.out_len)
        if rc < 0:
            raise_for(rc, vm)
        n = vm.out_len[0]
        return ffi.buffer(vm.out[0], n)[:] if n else b""

    @property
    def request_headers(self) -> Headers:
        """The request headers as they are now, with the plugin's edits."""
        return decode_pairs(self._read(lib.PW_R_REQ_HEADERS))

    @property
    def request_trailers(self) -> Headers:
        return decode_pairs(self._read(lib.PW_R_REQ_TRAILERS))

    @property
    def response_headers(self) -> Headers:
        return decode_pairs(self._read(lib.PW_R_RESP_HEADERS))

    @property
    def response_trailers(self) -> Headers:
        return decode_pairs(self._read(lib.PW_R_RESP_TRAILERS))

    def take_request_body(self) -> bytes:
        """Request body the filter let through since the last take."""
        return self._read(lib.PW_R_REQ_BODY)

    def take_response_body(self) -> bytes:
        return self._read(lib.PW_R_RESP_BODY)

    @property
    def held_request_body(self) -> bytes:
        """Request body the filter holds (buffered while paused)."""
        return self._read(lib.PW_R_REQ_HELD)

    @property
    def held_response_body(self) -> bytes:
        return self._read(lib.PW_R_RESP_HELD)

    @property
    def local_response(self) -> LocalResponse | None:
        status, grpc = ffi.new("uint32_t *"), ffi.new("int32_t *")
        rc = lib.pw_http_local_reply(self._vm, self.context_id, status, grpc)
        if rc < 0:
            raise_for(rc, self._vmobj)
        if rc == 0:
            return None
        return LocalResponse(
            status=status[0],
            body=self._read(lib.PW_R_LOCAL_BODY),
            headers=decode_pairs(self._read(lib.PW_R_LOCAL_HEADERS)),
            details=self._read(lib.PW_R_LOCAL_DETAILS).decode(errors="replace"),
            grpc_status=grpc[0] if 0 <= grpc[0] <= 16 else None,
        )

    # ---- flags ---------------------------------------------------------------------------
    @property
    def request_paused(self) -> bool:
        return bool(self._current() & lib.PW_S_REQ_STOPPED)

    @property
    def response_paused(self) -> bool:
        return bool(self._current() & lib.PW_S_RESP_STOPPED)

    @property
    def request_headers_forwarded(self) -> bool:
        return bool(self._current() & lib.PW_S_REQ_HEADERS_OUT)

    @property
    def response_headers_forwarded(self) -> bool:
        return bool(self._current() & lib.PW_S_RESP_HEADERS_OUT)

    @property
    def request_complete(self) -> bool:
        """End of stream went upstream (after the body and any trailers)."""
        return bool(self._current() & lib.PW_S_REQ_ENDED)

    @property
    def response_complete(self) -> bool:
        return bool(self._current() & lib.PW_S_RESP_ENDED)

    @property
    def reset(self) -> bool:
        """The plugin closed the stream (proxy_close_stream), or a late local reply."""
        return bool(self._current() & lib.PW_S_RESET)

    @property
    def failed(self) -> bool:
        """The VM failed while serving this stream, or before it (its failure policy
        answered: a 503 wasm_fail_stream, or FAIL_OPEN's pass-through)."""
        return bool(self._current() & (lib.PW_S_FAILED | lib.PW_S_BYPASSED))

    @property
    def failure_outcome(self) -> FailureOutcome | None:
        """What the plugin's failure policy did for this stream: FAILED_CLOSED (503),
        FAILED_OPEN (passed without the filter), RELOADED (served by a VM that FAIL_RELOAD
        made after a failure), or None (no failure involved)."""
        if self._current() & lib.PW_S_BYPASSED:
            return FailureOutcome.FAILED_OPEN
        if self._current() & lib.PW_S_FAILED:
            return FailureOutcome.FAILED_CLOSED
        if self._vmobj.generation:
            return FailureOutcome.RELOADED
        return None
