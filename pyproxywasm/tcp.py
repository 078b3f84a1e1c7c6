"""TCP connections through a network-filter plugin (a TCP stream context)."""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Mapping

from . import properties as props
from .abi import StreamFlags
from .policy import FailureOutcome
from ._binding import ffi, lib, raise_for
from .errors import HostClosedError, StreamClosedError
from .http import Action

if TYPE_CHECKING:
    from .host import RootContext

_DOWN, _UP = lib.PW_DIR_DOWNSTREAM, lib.PW_DIR_UPSTREAM
_STOPPED = (lib.PW_S_REQ_STOPPED | lib.PW_S_RESET | lib.PW_S_FAILED,
            lib.PW_S_RESP_STOPPED | lib.PW_S_RESET | lib.PW_S_FAILED)


class PeerType(enum.IntEnum):
    """Who closed a connection (the ABI's PeerType)."""

    UNKNOWN = 0
    LOCAL = 1
    REMOTE = 2


class TcpStream:
    """One connection. Creating it delivers proxy_on_context_create and on_new_connection."""

    def __init__(self, plugin: "RootContext", properties: Mapping[Any, Any] | None = None) -> None:
        self.plugin = plugin
        vm = plugin.vm
        self._vm, self._vmobj = vm.ptr, vm
        rc = lib.pw_tcp_alloc(self._vm, plugin.context_id, vm.u32)
        if rc != lib.PW_OK:
            raise_for(rc, vm)
        self.context_id = vm.u32[0]
        # The connection's properties (source.address...) before on_new_connection, which
        # reads them (as in Envoy, where the connection is there before the filter).
        if properties:
            for path, value in props.flatten(properties):
                lib.pw_set_host_property(self._vm, self.context_id, path, len(path), value, len(value))
        rc = lib.pw_tcp_open(self._vm, self.context_id)
        if rc not in (lib.PW_OK, lib.PW_ERR_TRAP):
            raise_for(rc, vm)
        self.flags = lib.pw_tcp_flags(self._vm, self.context_id) if rc == lib.PW_OK else lib.PW_S_FAILED | lib.PW_S_RESET

    def _done(self, f: int, direction: int) -> Action:
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags = f
        return Action.PAUSE if f & _STOPPED[direction] else Action.CONTINUE

    def send_downstream(self, data: bytes, end_stream: bool = False) -> Action:
        """Data from the client (proxy_on_downstream_data)."""
        return self._done(lib.pw_tcp_data(self._vm, self.context_id, _DOWN, data, len(data), end_stream), 0)

    def send_upstream(self, data: bytes, end_stream: bool = False) -> Action:
        """Data from the server (proxy_on_upstream_data)."""
        return self._done(lib.pw_tcp_data(self._vm, self.context_id, _UP, data, len(data), end_stream), 1)

    def close_downstream(self, peer: PeerType = PeerType.REMOTE) -> None:
        """The client side closed: on_downstream_connection_close, then teardown
        (on_done, on_log, on_delete) as Envoy runs it."""
        self._close(_DOWN, peer)

    def close_upstream(self, peer: PeerType = PeerType.UNKNOWN) -> None:
        """The server side closed: on_upstream_connection_close (teardown waits for the
        downstream side)."""
        self._close(_UP, peer)

    def _close(self, direction: int, peer: PeerType) -> None:
        if self.flags & lib.PW_S_DONE:
            return
        f = lib.pw_tcp_close(self._vm, self.context_id, direction, int(peer))
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags = f

    def finish(self) -> None:
        """Tears the connection's context down now (on_done, on_log, on_delete)."""
        if self.flags & lib.PW_S_DONE:
            return
        if lib.pw_vm_closed(self._vm):  # the host closed (or FAIL_RELOAD replaced the VM)
            self.flags |= lib.PW_S_DONE
            return
        f = lib.pw_tcp_finish(self._vm, self.context_id)
        if f < 0:
            raise_for(f, self._vmobj)
        self.flags = f

    def refresh(self) -> int:
        if not self.flags & lib.PW_S_DONE:
            f = lib.pw_tcp_flags(self._vm, self.context_id)
            if f < 0:
                raise_for(f, self._vmobj)
            self.flags = f
        return int(self.flags)

    def _current(self) -> int:
        """The stream's flags as they are now: a tick, a queue notification or a call's
        answer may have resumed (or answered) the stream since the last call on it. The
        last known flags once the stream or its host is gone."""
        try:
            return self.refresh()
        except (HostClosedError, StreamClosedError):
            return int(self.flags)

    def _read(self, what: int) -> bytes:
        vm = self._vmobj
        rc = lib.pw_tcp_read(self._vm, self.context_id, what, vm.out, vm.out_len)
        if rc < 0:
            raise_for(rc, vm)
        n = vm.out_len[0]
        return ffi.buffer(vm.out[0], n)[:] if n else b""

    def take_downstream_data(self) -> bytes:
        """Client data the filter let through toward the server, since the last take."""
        return self._read(lib.PW_R_DOWN_DATA)

    def take_upstream_data(self) -> bytes:
        """Server data the filter let through toward the client, since the last take."""
        return self._read(lib.PW_R_UP_DATA)

    @property
    def downstream_paused(self) -> bool:
        return bool(self._current() & lib.PW_S_REQ_STOPPED)

    @property
    def close_requested(self) -> bool:
        """The plugin asked to close the connection (proxy_close_stream), or it failed."""
        return bool(self._current() & lib.PW_S_RESET)

    @property
    def failed(self) -> bool:
        """The VM failed while serving this connection, or before it (the plugin's failure
        policy answered: the connection closed, or FAIL_OPEN let it pass)."""
        return bool(self._current() & (lib.PW_S_FAILED | lib.PW_S_BYPASSED))

    @property
    def failure_outcome(self) -> "FailureOutcome | None":
        """FAILED_CLOSED (closed), FAILED_OPEN (passes without the filter), or None."""
        if self._current() & lib.PW_S_BYPASSED:
            return FailureOutcome.FAILED_OPEN
        if self._current() & lib.PW_S_FAILED:
            return FailureOutcome.FAILED_CLOSED
        return None

    @property
    def done(self) -> bool:
        return bool(self._current() & lib.PW_S_DONE)

    @property
    def stream_flags(self) -> StreamFlags:
        """The connection's state as named flags (the same bits as `flags`)."""
        return StreamFlags(self._current())

    def __enter__(self) -> "TcpStream":
        return self

    def __exit__(self, *exc: object) -> None:
        """Ends the connection (finish: on_log, on_done, on_delete) if it is not done."""
        self.finish()
