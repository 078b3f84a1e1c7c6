"""HTTP streams through a plugin: push request and response events, read what passed.

Each send_* is one call into the C core. What the filter let through is read back with
the forwarded_* / take_* members; what it holds while paused stays held until the plugin
continues (proxy_continue_stream), as in Envoy.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from . import properties as props
from ._binding import ffi, lib
from .host import raise_for
from .pairs import HeaderItems, Headers, decode_pairs, encode_pairs

if TYPE_CHECKING:
    from .host import Plugin

_REQ, _RESP = lib.PW_DIR_REQUEST, lib.PW_DIR_RESPONSE
_ENDED_CHAIN = lib.PW_S_LOCAL_REPLY | lib.PW_S_RESET | lib.PW_S_FAILED
_STOPPED = (lib.PW_S_REQ_STOPPED | _ENDED_CHAIN, lib.PW_S_RESP_STOPPED | lib.PW_S_RESET | lib.PW_S_FAILED)


class Action(enum.IntEnum):
    """What a send_* did: CONTINUE when the data went on past the filter, PAUSE when it
    was held (paused, or the stream ended by a local response, reset or failure)."""

    CONTINUE = 0
    PAUSE = 1


@dataclass(frozen=True)
class LocalResponse:
    """The response a plugin sent with proxy_send_local_response (or the host's 503 when
    the VM failed): as the plugin asked for it, before the response callbacks."""

    status: int
    body: bytes
    headers: Headers
    details: str
    grpc_status: int | None


class HttpStream:
    """One HTTP request/response through one plugin (an HTTP stream context)."""

    def __init__(self, plugin: "Plugin", properties: Mapping[Any, Any] | None = None) -> None:
        self.plugin = plugin
        vm = plugin.vm
        self._vm = vm.ptr
        self._vmobj = vm
        rc = lib.pw_http_new(self._vm, plugin.context_id, vm.u32)
        if rc != lib.PW_OK:
            raise_for(rc, vm)
        self.context_id = vm.u32[0]
        self.flags = 0
        self._out = ffi.new("const uint8_t **")
        self._len = ffi.new("size_t *")
        if properties:
            for path, value in props.flatten(properties):
                lib.pw_set_host_property(self._vm, self.context_id, path, len(path), value, len(value))

    # ---- events ------------------------------------------------------------------------
    def _done(self, f: int, direction: int) -> Action:
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags = f
        return Action.PAUSE if f & _STOPPED[direction] else Action.CONTINUE

    def send_request_headers(self, headers: HeaderItems, end_stream: bool = False) -> Action:
        data = encode_pairs(headers)
        return self._done(lib.pw_http_headers(self._vm, self.context_id, _REQ, data, len(data), end_stream), 0)

    def send_request_body(self, data: bytes, end_stream: bool = False) -> Action:
        return self._done(lib.pw_http_data(self._vm, self.context_id, _REQ, data, len(data), end_stream), 0)

    def send_request_trailers(self, trailers: HeaderItems) -> Action:
        data = encode_pairs(trailers)
        return self._done(lib.pw_http_trailers(self._vm, self.context_id, _REQ, data, len(data)), 0)

    def send_response_headers(self, headers: HeaderItems, end_stream: bool = False) -> Action:
        data = encode_pairs(headers)
        return self._done(lib.pw_http_headers(self._vm, self.context_id, _RESP, data, len(data), end_stream), 1)

    def send_response_body(self, data: bytes, end_stream: bool = False) -> Action:
        return self._done(lib.pw_http_data(self._vm, self.context_id, _RESP, data, len(data), end_stream), 1)

    def send_response_trailers(self, trailers: HeaderItems) -> Action:
        data = encode_pairs(trailers)
        return self._done(lib.pw_http_trailers(self._vm, self.context_id, _RESP, data, len(data)), 1)

    def finish(self) -> None:
        """Ends the stream: proxy_on_log, proxy_on_done, proxy_on_delete (Envoy's order)."""
        if self.flags & lib.PW_S_DONE:
            return
        f = lib.pw_http_finish(self._vm, self.context_id)
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags |= lib.PW_S_DONE

    def refresh(self) -> int:
        """Re-reads the stream's state (after the plugin resumed it from a tick, say)."""
        if not self.flags & lib.PW_S_DONE:
            f = lib.pw_http_flags(self._vm, self.context_id)
            if f < 0:
                raise_for(f, self._vmobj)
            self.flags = f
        return self.flags

    def __enter__(self) -> "HttpStream":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    # ---- what the filter did --------------------------------------------------------------
    def _read(self, what: int) -> bytes:
        rc = lib.pw_http_read(self._vm, self.context_id, what, self._out, self._len)
        if rc < 0:
            raise_for(rc, self._vmobj)
        return ffi.buffer(self._out[0], self._len[0])[:] if self._len[0] else b""

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
        return bool(self.flags & lib.PW_S_REQ_STOPPED)

    @property
    def response_paused(self) -> bool:
        return bool(self.flags & lib.PW_S_RESP_STOPPED)

    @property
    def request_headers_forwarded(self) -> bool:
        return bool(self.flags & lib.PW_S_REQ_HEADERS_OUT)

    @property
    def response_headers_forwarded(self) -> bool:
        return bool(self.flags & lib.PW_S_RESP_HEADERS_OUT)

    @property
    def request_complete(self) -> bool:
        """End of stream went upstream (after the body and any trailers)."""
        return bool(self.flags & lib.PW_S_REQ_ENDED)

    @property
    def response_complete(self) -> bool:
        return bool(self.flags & lib.PW_S_RESP_ENDED)

    @property
    def reset(self) -> bool:
        """The plugin closed the stream (proxy_close_stream), or a late local reply."""
        return bool(self.flags & lib.PW_S_RESET)

    @property
    def failed(self) -> bool:
        """The VM trapped while serving this stream (it got a 503 wasm_fail_stream)."""
        return bool(self.flags & lib.PW_S_FAILED)
