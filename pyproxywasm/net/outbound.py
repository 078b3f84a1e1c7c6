"""What a guest's outbound call becomes: a cluster, a client call on the I/O loop, and the
answer posted back to the thread whose VM asked.

The C core checks a call (Envoy's argument rules), gives it a token and calls `VmCalls.start`
on the VM's thread with the guest suspended (the one Python step of a callout, on a cold
path). Here the cluster is looked up (unknown: BAD_ARGUMENT for HTTP, PARSE_FAILURE for gRPC,
as Envoy answers) and the call is handed to the I/O loop; its answer is posted, from the
loop thread, to the VM thread's dispatcher (a lock-free inbox), which delivers
proxy_on_http_call_response / proxy_on_grpc_* there, never re-entrantly. The core is the
authority on which calls are alive: it drops answers for calls it cancelled.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from .. import protobuf
from .._binding import ffi, lib
from ..pairs import decode_pairs_bytes, encode_pairs
from .cluster import Cluster, ClusterError

if TYPE_CHECKING:
    from ..dispatch import Dispatcher
    from .loop import IoLoop

_log = logging.getLogger("pyproxywasm.outbound")

ST_OK, ST_BAD_ARGUMENT, ST_PARSE_FAILURE, ST_INTERNAL_FAILURE = 0, 2, 4, 10
ST_BROKEN_CONNECTION = 11  # what Envoy's proxy_get_status reports after a failed HTTP call
GRPC_UNAVAILABLE, GRPC_CANCELLED = 14, 1
# allow_any_host: distinct "host:port" upstreams a host keeps (each has a connection pool);
# past it a new address is an unknown cluster.
MAX_DIRECT_HOSTS = 256


class Recorder(Protocol):
    """Where calls to clusters that are not real go (the testing harness records them)."""

    def knows(self, name: str) -> bool: ...

    def http(self, calls: "VmCalls", token: int, cluster: str, headers: list[tuple[bytes, bytes]],
             body: bytes, trailers: list[tuple[bytes, bytes]], timeout_ms: int) -> Any: ...

    def grpc(self, calls: "VmCalls", token: int, stream: bool, cluster: str, service: str,
             method: str, metadata: list[tuple[bytes, bytes]], message: bytes,
             timeout_ms: int) -> Any: ...


class Outbound:
    """One per Host: the clusters its plugins may call and the clients that reach them.

    clusters: the configured upstreams. recorder: in the testing harness, where calls to
    names that are not real clusters go. io: the I/O loop (default: the process's, started
    on first use)."""

    def __init__(self, clusters: Iterable[Cluster] = (), *, recorder: Recorder | None = None,
                 io: "IoLoop | None" = None) -> None:
        self.clusters: dict[str, Cluster] = {}
        for c in clusters:
            if c.name in self.clusters:
                raise ClusterError(f"cluster {c.name!r} is defined twice")
            self.clusters[c.name] = c
        self.recorder = recorder
        self._io = io
        self._http: Any = None
        self._grpc: Any = None
        self._direct: dict[str, Cluster] = {}
        if self.clusters:
            # Import the clients now, on the host's thread: importing aiohttp and grpcio
            # takes a good part of a second, which the first call would otherwise wait.
            from . import grpc_client, http_client  # noqa: F401

    # ---- clients, made on first use so a host without clusters starts no thread -----------
    @property
    def io(self) -> "IoLoop":
        if self._io is None:
            from .loop import IoLoop
            self._io = IoLoop.shared()
        return self._io

    @property
    def http(self) -> Any:
        if self._http is None:
            from .http_client import HttpClient
            self._http = HttpClient(self.io)
        return self._http

    @property
    def grpc(self) -> Any:
        if self._grpc is None:
            from .grpc_client import GrpcClient
            self._grpc = GrpcClient(self.io)
        return self._grpc

    def resolve(self, name: str, allow_any_host: bool) -> Cluster | None:
        """The cluster a plugin names; with allow_any_host, a "host:port" that names no
        cluster is called directly (plain HTTP)."""
        cluster = self.clusters.get(name)
        if cluster is not None or not allow_any_host:
            return cluster
        cluster = self._direct.get(name)
        if cluster is None:
            if len(self._direct) >= MAX_DIRECT_HOSTS:
                return None  # a guest naming endless addresses gets no endless pools
            try:
                cluster = Cluster(name=name, endpoints=(name,))
            except ClusterError:
                return None
            self._direct[name] = cluster
        return cluster

    def close(self, timeout: float = 2.0) -> None:
        """Closes the clients' connections (calls still running are cancelled), waiting at
        most `timeout` seconds."""
        clients = [c for c in (self._http, self._grpc) if c is not None]
        self._http = self._grpc = None
        if not clients or self._io is None:
            return
        try:
            self._io.submit(_close_all(clients)).result(max(timeout, 0.1))
        except Exception:  # noqa: BLE001 - closing must not fail the host's close
            _log.debug("closing outbound clients failed", exc_info=True)


async def _close_all(clients: list[Any]) -> None:
    for c in clients:
        await c.close()


class _Call:
    """One call in flight, as Python sees it: its task or stream on the loop."""

    __slots__ = ("task", "stream", "cancelled", "record", "queued")

    def __init__(self) -> None:
        self.task: asyncio.Future[Any] | None = None
        self.stream: Any = None
        self.cancelled = False
        self.record: Any = None  # the harness's record, for calls to recorded clusters
        self.queued = 0  # a stream's message bytes the guest sent, not yet written out


class VmCalls:
    """The C core's handle for one VM's outbound calls (so, one thread's)."""

    def __init__(self, outbound: Outbound, vm_ptr: Any, dispatcher: "Dispatcher",
                 allow_any_host: Callable[[int], bool],
                 buffer_limit: int = lib.PW_DEFAULT_BUFFER_LIMIT) -> None:
        """buffer_limit: bytes of messages one gRPC stream may hold that are sent by the
        guest but not yet written to the connection (a server that does not read, a slow
        link); past it proxy_grpc_send answers BAD_ARGUMENT and sends nothing, where
        Envoy's buffers would stop at its buffer limit too."""
        self._buffer_limit = buffer_limit
        self._queued_lock = threading.Lock()  # _Call.queued: the VM's thread and the loop's
        self.outbound = outbound
        self.dispatcher = dispatcher
        self.vm_key = lib.pw_vm_key(vm_ptr)
        self._allow_any_host = allow_any_host
        self._live: dict[int, _Call] = {}
        self.handle = ffi.new_handle(self)

    # ---- from the C core, on the VM's thread --------------------------------------------
    def start(self, call: Any) -> int:
        kind, token = call.kind, call.token
        name = _text(call.upstream, call.upstream_len)
        headers = decode_pairs_bytes(_bytes(call.headers, call.headers_len))
        body = _bytes(call.body, call.body_len)
        if kind == lib.PW_CALL_HTTP:
            return self._start_http(token, call.root, name, headers, body,
                                    decode_pairs_bytes(_bytes(call.trailers, call.trailers_len)),
                                    call.timeout_ms)
        service = _text(call.service, call.service_len)
        method = _text(call.method, call.method_len)
        name, extra = grpc_service(_bytes(call.upstream, call.upstream_len), name)
        return self._start_grpc(token, call.root, kind == lib.PW_CALL_GRPC_STREAM, name, service,
                                method, extra + headers, body, call.timeout_ms)

    def op(self, token: int, op: int, data: bytes, end_stream: bool) -> int:
        """A guest's operation on a call in flight: OK, or BAD_ARGUMENT for a message that
        would take its stream past the buffer limit of unwritten messages."""
        c = self._live.get(token)
        if c is None:
            return ST_OK
        if op == lib.PW_OP_CANCEL:
            del self._live[token]
            c.cancelled = True
            if c.record is not None:
                c.record.cancelled = True
            else:
                self.outbound.io.call_soon(_cancel_on_loop, c)
        elif c.record is not None:
            c.record._guest_op(op, data, end_stream)
        elif op == lib.PW_OP_SEND:
            with self._queued_lock:
                if c.queued + len(data) > self._buffer_limit:
                    return ST_BAD_ARGUMENT
                c.queued += len(data)
            self.outbound.io.call_soon(_stream_send, c, data, end_stream)
        elif op == lib.PW_OP_CLOSE:
            self.outbound.io.call_soon(_stream_close, c)
        return ST_OK

    def _written(self, c: _Call, n: int) -> None:
        """On the loop thread: n bytes of a stream's messages went out."""
        with self._queued_lock:
            c.queued -= n

    # ---- starting calls ------------------------------------------------------------------------
    def _start_http(self, token: int, root: int, name: str, headers: list[Any], body: bytes,
                    trailers: list[Any], timeout_ms: int) -> int:
        out = self.outbound
        cluster = out.resolve(name, self._allow_any_host(root))
        if cluster is None:
            if out.recorder is None or not out.recorder.knows(name):
                return ST_BAD_ARGUMENT  # Envoy: unknown cluster
            c = self._live[token] = _Call()
            c.record = out.recorder.http(self, token, name, headers, body, trailers, timeout_ms)
            return ST_OK
        c = self._live[token] = _Call()
        timeout = timeout_ms / 1000 if timeout_ms else None
        out.io.call_soon(self._spawn, c, token,
                         lambda: self._http(token, cluster, headers, body, trailers, timeout))
        return ST_OK

    def _start_grpc(self, token: int, root: int, stream: bool, name: str, service: str,
                    method: str, metadata: list[Any], message: bytes, timeout_ms: int) -> int:
        out = self.outbound
        cluster = out.resolve(name, self._allow_any_host(root))
        if cluster is None:
            if out.recorder is None or not out.recorder.knows(name):
                return ST_PARSE_FAILURE  # Envoy: neither a GrpcService nor a known cluster
            c = self._live[token] = _Call()
            c.record = out.recorder.grpc(self, token, stream, name, service, method, metadata,
                                         message, timeout_ms)
            return ST_OK
        c = self._live[token] = _Call()
        timeout = timeout_ms / 1000 if timeout_ms else None
        if stream:
            out.io.call_soon(self._open_stream, c, token, cluster, service, method, metadata, timeout)
        else:
            out.io.call_soon(self._spawn, c, token,
                             lambda: self._unary(token, cluster, service, method, metadata, message,
                                                 timeout))
        return ST_OK

    # ---- on the I/O loop ----------------------------------------------------------------------
    def _spawn(self, c: _Call, token: int, make: Callable[[], Any]) -> None:
        if not c.cancelled:
            c.task = asyncio.ensure_future(make())

    async def _http(self, token: int, cluster: Cluster, headers: list[Any], body: bytes, trailers: list[Any],
                    timeout: float | None) -> None:
        from .http_client import CalloutError
        try:
            r = await self.outbound.http.request(cluster, headers, body, trailers, timeout)
        except CalloutError as e:
            self.fail_http(token, e.reason)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any client failure is a failed call
            _log.warning("http call to %s failed: %r", cluster.name, e)
            self.fail_http(token, "reset")
        else:
            self.respond_http(token, r.headers, r.body, r.trailers)

    async def _unary(self, token: int, cluster: Cluster, service: str, method: str, metadata: list[Any],
                     message: bytes, timeout: float | None) -> None:
        from .grpc_client import GrpcCallError
        try:
            answer = await self.outbound.grpc.unary(cluster, service, method, metadata, message, timeout)
        except GrpcCallError as e:
            self.grpc_close(token, e.code, e.message)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            _log.warning("grpc call to %s failed: %r", cluster.name, e)
            self.grpc_close(token, GRPC_UNAVAILABLE, str(e))
        else:
            self.grpc_message(token, answer, final=True)

    def _open_stream(self, c: _Call, token: int, cluster: Cluster, service: str, method: str,
                     metadata: list[Any], timeout: float | None) -> None:
        if c.cancelled:
            return

        def on_event(kind: str, payload: Any) -> None:
            if kind == "initial_metadata":
                self.grpc_metadata(token, payload, trailing=False)
            elif kind == "message":
                self.grpc_message(token, payload)
            elif kind == "trailing_metadata":
                self.grpc_metadata(token, payload, trailing=True)
            elif kind == "close":
                self._live.pop(token, None)
                self.grpc_close(token, *payload)

        try:
            c.stream = self.outbound.grpc.stream(cluster, service, method, metadata, timeout, on_event,
                                                 functools.partial(self._written, c))
        except Exception as e:  # noqa: BLE001
            self._live.pop(token, None)
            self.grpc_close(token, GRPC_UNAVAILABLE, str(e))

    # ---- answers: from any thread, posted to the VM's dispatcher ---------------------------------
    def _post(self, token: int, ev: int, status: int = 0, headers: bytes = b"", body: bytes = b"",
              trailers: bytes = b"") -> None:
        d = self.dispatcher.ptr
        if d is not None:
            lib.pw_dispatcher_post_call(d, self.vm_key, token, ev, status, headers, len(headers), -1,
                                        body, len(body), trailers, len(trailers), -1)

    def _finish(self, token: int) -> None:
        self._live.pop(token, None)

    def respond_http(self, token: int, headers: Iterable[tuple[Any, Any]], body: bytes,
                     trailers: Iterable[tuple[Any, Any]] = ()) -> None:
        self._finish(token)
        self._post(token, lib.PW_EV_HTTP_RESPONSE, 0, encode_pairs(list(headers)), bytes(body),
                   encode_pairs(list(trailers)))

    def fail_http(self, token: int, reason: str) -> None:
        self._finish(token)
        self._post(token, lib.PW_EV_HTTP_FAILURE, ST_BROKEN_CONNECTION, body=reason.encode())

    def grpc_metadata(self, token: int, metadata: Iterable[tuple[Any, Any]], trailing: bool) -> None:
        ev = lib.PW_EV_GRPC_TRAILING if trailing else lib.PW_EV_GRPC_INITIAL
        self._post(token, ev, headers=encode_pairs(list(metadata)))

    def grpc_message(self, token: int, message: bytes, final: bool = False) -> None:
        """A message; final for a unary call's answer, which ends it."""
        if final:
            self._finish(token)
        self._post(token, lib.PW_EV_GRPC_MESSAGE, body=bytes(message))

    def grpc_close(self, token: int, code: int, message: str = "") -> None:
        self._finish(token)
        self._post(token, lib.PW_EV_GRPC_CLOSE, code, body=message.encode())

    @property
    def in_flight(self) -> int:
        return len(self._live)


def _cancel_on_loop(c: _Call) -> None:
    if c.task is not None:
        c.task.cancel()
    if c.stream is not None:
        c.stream.cancel()


def _stream_send(c: _Call, data: bytes, end_stream: bool) -> None:
    if c.stream is not None and not c.cancelled:
        c.stream.send(data, end_stream)


def _stream_close(c: _Call) -> None:
    if c.stream is not None and not c.cancelled:
        c.stream.close()


def _bytes(ptr: Any, n: int) -> bytes:
    return ffi.buffer(ptr, n)[:] if n else b""


def _text(ptr: Any, n: int) -> str:
    return _bytes(ptr, n).decode("utf-8", "replace")


# ---- Envoy's GrpcService, which plugins may send instead of a cluster name ------------------
def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a message (its sub-messages and strings)."""
    return [(f, v) for f, v in protobuf.fields(data) if isinstance(v, bytes)]


def grpc_service(raw: bytes, name: str) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The cluster a gRPC call targets, and the initial metadata its GrpcService adds.
    Envoy reads `upstream` as a serialized envoy.config.core.v3.GrpcService when it parses
    as one (envoy_grpc.cluster_name = field 1.1, initial_metadata = field 5), else as a
    cluster name."""
    try:
        fields = _messages(raw)
        envoy = [v for f, v in fields if f == 1]
        if not envoy:
            return name, []
        cluster = [v for f, v in _messages(envoy[-1]) if f == 1]
        if not cluster or not cluster[-1]:
            return name, []
        metadata = []
        for f, v in fields:
            if f == 5:
                kv = dict(_messages(v))
                metadata.append((kv.get(1, b"").lower(), kv.get(2, b"")))
        return cluster[-1].decode("utf-8", "replace"), metadata
    except (ValueError, UnicodeDecodeError):
        return name, []
