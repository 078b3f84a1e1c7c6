"""gRPC callouts through grpcio's asyncio API, on raw bytes (no stubs, no codegen).

A guest's proxy_grpc_call / proxy_grpc_stream names a cluster, a service and a method and
hands serialized messages; grpcio frames them (HTTP/2, deadlines, status, metadata).
Channels are made per cluster endpoint on the IoLoop's thread and reused; calls rotate
over the endpoints. TLS comes from cluster.tls: the CA file (or grpcio's bundled roots),
a client certificate, and SNI through "grpc.ssl_target_name_override".

Limits from the cluster: connect_timeout bounds each connection attempt (grpcio's minimum
connect timeout), max_response_bytes is the largest message accepted (a larger one fails
with RESOURCE_EXHAUSTED), request_timeout is the deadline when a call gives none.
grpcio cannot turn certificate verification off, so `TlsSettings(verify=False)` fails
calls with FAILED_PRECONDITION rather than silently verifying.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
from typing import Any, Callable, Sequence

import grpc
import grpc.aio

from .cluster import Cluster
from .loop import IoLoop

log = logging.getLogger(__name__)

Metadata = list[tuple[bytes, bytes]]

OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
FAILED_PRECONDITION, INTERNAL, UNAVAILABLE = 9, 13, 14

_KEY = re.compile(rb"[0-9a-z_.\-]+")
# Keys grpcio writes itself; a guest's copy is dropped rather than failing the call.
_RESERVED = frozenset({b"te", b"content-type", b"grpc-timeout", b"grpc-encoding",
                       b"grpc-accept-encoding", b"user-agent"})


class GrpcCallError(Exception):
    """A call that ended with a non-OK status: `code` (gRPC status number), `message`."""

    def __init__(self, code: int, message: str, trailing_metadata: Metadata | None = None) -> None:
        super().__init__(f"gRPC status {code}: {message}")
        self.code = code
        self.message = message
        self.trailing_metadata = trailing_metadata or []


def to_grpc_metadata(metadata: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    """Guest metadata as grpcio wants it: lowercase str keys, bytes values for `-bin` keys,
    printable ASCII str otherwise. Raises GrpcCallError(INTERNAL) on what HTTP/2 can't carry."""
    out: list[tuple[str, str | bytes]] = []
    for k, v in metadata:
        k = bytes(k).lower()
        v = bytes(v)
        if k.startswith(b":") or k in _RESERVED:
            continue
        if not _KEY.fullmatch(k):
            raise GrpcCallError(INTERNAL, f"invalid metadata key {k!r}")
        if k.endswith(b"-bin"):
            out.append((k.decode(), v))
        else:
            if any(c < 0x20 or c > 0x7E for c in v):
                raise GrpcCallError(INTERNAL, f"metadata {k.decode()!r}: value is not printable ASCII")
            out.append((k.decode(), v.decode("ascii")))
    return out


def method_path(service: str, method: str) -> str:
    """"/service/method"; GrpcCallError(INTERNAL) for names HTTP/2's :path must not carry
    (spaces, controls, non-ASCII): a strict server would reset the whole connection."""
    path = f"/{service}/{method}"
    if not service or not method or any(not 0x20 < ord(ch) < 0x7F for ch in path):
        raise GrpcCallError(INTERNAL, f"invalid gRPC method path {path!r}")
    return path


def from_grpc_metadata(md: Any) -> Metadata:
    if not md:
        return []
    out: Metadata = []
    for k, v in md:
        out.append((k.lower().encode(), v if isinstance(v, bytes) else v.encode("latin-1")))
    return out


def _status(code: grpc.StatusCode | None) -> int:
    return UNKNOWN if code is None else code.value[0]


class _Channels:
    """One cluster's channels, one per endpoint, picked round robin."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.error: GrpcCallError | None = None
        opts: list[tuple[str, object]] = [
            ("grpc.min_reconnect_backoff_ms", max(1, int(cluster.connect_timeout * 1000))),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.max_receive_message_length", min(cluster.max_response_bytes, 2**31 - 1)),
            ("grpc.max_send_message_length", -1),
        ]
        tls = cluster.tls
        creds = None
        if tls is not None:
            if not tls.verify:
                self.error = GrpcCallError(FAILED_PRECONDITION,
                                           f"cluster {cluster.name!r}: gRPC over TLS cannot skip verification")
            else:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(tls.ca_file),
                    private_key=_read(tls.key_file),
                    certificate_chain=_read(tls.cert_file))
                if tls.sni:
                    opts.append(("grpc.ssl_target_name_override", tls.sni))
        self.channels: list[grpc.aio.Channel] = []
        if self.error is None:
            for host, port in cluster.addresses:
                target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                if creds is None:
                    ch = grpc.aio.insecure_channel(target, options=opts)
                else:
                    ch = grpc.aio.secure_channel(target, creds, options=opts)
                self.channels.append(ch)
        self._next = itertools.cycle(self.channels)

    def pick(self) -> grpc.aio.Channel:
        if self.error is not None:
            raise self.error
        return next(self._next)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class GrpcStream:
    """A streaming call in flight. `send`, `close` and `cancel` are for the loop thread
    (the caller is there when its on_event runs; from elsewhere go through IoLoop.call_soon)."""

    def __init__(self, on_event: Callable[[str, object], None],
                 on_written: Callable[[int], None] | None = None) -> None:
        self._on_event = on_event
        self._on_written = on_written  # told the size of each message once it went out
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._cancelled = False
        self._finished = False
        self._half_closed = False

    # -- the caller's side ------------------------------------------------------------------
    def send(self, message: bytes, end_stream: bool = False) -> None:
        if self._half_closed or self._finished:
            return
        self._outbox.put_nowait(bytes(message))
        if end_stream:
            self.close()

    def close(self) -> None:
        """Half-close: no more messages from us; the server's side goes on."""
        if not self._half_closed:
            self._half_closed = True
            self._outbox.put_nowait(None)

    def cancel(self) -> None:
        """Reset the call; nothing more is delivered."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._call is not None:
            # grpcio ends the reading and writing tasks itself (their awaits raise
            # CancelledError); cancelling them from outside as well could leave the call's
            # core object unfinished and its connection open
            self._call.cancel()
        else:
            for t in self._tasks:
                t.cancel()

    # -- the loop's side --------------------------------------------------------------------
    def _emit(self, kind: str, value: object) -> None:
        if self._cancelled or self._finished:
            return
        if kind == "close":
            self._finished = True
        try:
            self._on_event(kind, value)
        except Exception:  # noqa: BLE001 - a callback's bug must not end the loop
            log.exception("gRPC stream event handler failed on %r", kind)

    def _start(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write()), loop.create_task(self._read())]

    def _fail_now(self, err: GrpcCallError) -> None:
        asyncio.get_running_loop().call_soon(self._emit, "close", (err.code, err.message))

    async def _write(self) -> None:
        call = self._call
        assert call is not None  # started by _start
        try:
            while True:
                msg = await self._outbox.get()
                if msg is None:
                    await call.done_writing()
                    return
                await call.write(msg)
                if self._on_written is not None:
                    self._on_written(len(msg))
        except (Exception, asyncio.CancelledError):  # noqa: BLE001
            return  # the call ended (or failed): _read reports how, exactly once

    async def _read(self) -> None:
        call = self._call
        assert call is not None  # started by _start
        got_initial = False
        try:
            md = await call.initial_metadata()
            got_initial = True
            self._emit("initial_metadata", from_grpc_metadata(md))
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                self._emit("message", msg)
            code = await call.code()
            self._emit("trailing_metadata", from_grpc_metadata(await call.trailing_metadata()))
            self._emit("close", (_status(code), await call.details() or ""))
        except grpc.aio.AioRpcError as e:
            if not got_initial and e.initial_metadata():
                self._emit("initial_metadata", from_grpc_metadata(e.initial_metadata()))
            self._emit("trailing_metadata", from_grpc_metadata(e.trailing_metadata()))
            self._emit("close", (_status(e.code()), e.details() or ""))
        except asyncio.CancelledError:
            if not self._cancelled:
                self._emit("close", (CANCELLED, "client closed"))
        except Exception as e:  # noqa: BLE001 - whatever grpcio raised ends this call only
            self._emit("close", (INTERNAL, f"{type(e).__name__}: {e}"))
        finally:
            self._finished = True
            for t in self._tasks:
                if t is not asyncio.current_task():
                    t.cancel()
            # A finished call object still pins its connection (even past the channel's
            # close) while anything references it: let go of it.
            self._call = None


class GrpcClient:
    """gRPC calls to clusters, on one IoLoop; channels per cluster endpoint, reused."""

    def __init__(self, io: IoLoop) -> None:
        self.io = io
        self._clusters: dict[Cluster, _Channels] = {}
        self._streams: set[GrpcStream] = set()
        self._closed = False

    def _channel(self, cluster: Cluster) -> grpc.aio.Channel:
        if self._closed:
            raise GrpcCallError(UNAVAILABLE, "client closed")
        ch = self._clusters.get(cluster)
        if ch is None:
            ch = self._clusters[cluster] = _Channels(cluster)
        return ch.pick()

    @staticmethod
    def _deadline(cluster: Cluster, timeout: float | None) -> float | None:
        t = cluster.request_timeout if timeout is None else timeout
        return None if t is None or t <= 0 else t

    async def unary(self, cluster: Cluster, service: str, method: str,
                    metadata: Sequence[tuple[bytes, bytes]], message: bytes,
                    timeout: float | None) -> bytes:
        """One request, one answer; raises GrpcCallError on any non-OK status (refused:
        UNAVAILABLE, past the deadline: DEADLINE_EXCEEDED)."""
        path = method_path(service, method)
        md = to_grpc_metadata(metadata)
        ch = self._channel(cluster)
        rpc = ch.unary_unary(path)
        try:
            answer: bytes = await rpc(bytes(message), metadata=md, timeout=self._deadline(cluster, timeout))
            return answer
        except grpc.aio.AioRpcError as e:
            raise GrpcCallError(_status(e.code()), e.details() or "",
                                from_grpc_metadata(e.trailing_metadata())) from None

    def stream(self, cluster: Cluster, service: str, method: str,
               metadata: Sequence[tuple[bytes, bytes]], timeout: float | None,
               on_event: Callable[[str, object], None],
               on_written: Callable[[int], None] | None = None) -> GrpcStream:
        """Start a bidirectional stream (call on the loop thread). Events reach `on_event` on
        the loop thread: "initial_metadata" (list of (bytes, bytes); also empty, before any
        message, whenever the server answered), "message" (bytes), "trailing_metadata"
        (list, possibly empty), then "close" ((code, message)) exactly once, including for
        failures (refused: 14, deadline: 4); nothing at all after `cancel()`. on_written(n),
        on the loop thread: a message of n bytes was written to the connection."""
        s = GrpcStream(on_event, on_written)
        try:
            path = method_path(service, method)
            md = to_grpc_metadata(metadata)
            ch = self._channel(cluster)
        except GrpcCallError as e:
            s._fail_now(e)
            return s
        call = ch.stream_stream(path)(metadata=md, timeout=self._deadline(cluster, timeout))
        s._start(call)
        self._streams.add(s)
        for t in s._tasks:
            t.add_done_callback(functools.partial(self._forget_after, s))
        return s

    def _forget_after(self, s: GrpcStream, _task: object) -> None:
        self._forget(s)

    def _forget(self, s: GrpcStream) -> None:
        if all(t.done() for t in s._tasks):
            self._streams.discard(s)

    async def close(self) -> None:
        """Cancel streams in flight (they get "close" CANCELLED) and close every channel."""
        self._closed = True
        for s in list(self._streams):
            if s._call is not None:
                s._call.cancel()
        chans = list(self._clusters.values())
        self._clusters.clear()
        for c in chans:
            await c.close()
        self._streams.clear()
