"""Outbound calls without a network, for plugin authors' tests.

The testing harness routes calls to clusters that are not real here: each becomes a record
the test inspects and answers (`respond`, `fail`, gRPC `close`, stream messages) or lets time
out on the virtual clock. Answers take the same path as real ones: posted to the calling VM
thread's dispatcher and delivered there as proxy_on_http_call_response / proxy_on_grpc_*.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar

from .._binding import lib
from ..pairs import HeaderItems, Headers

if TYPE_CHECKING:
    from .outbound import VmCalls

GRPC_DEADLINE_EXCEEDED = 4


def _headers(items: Iterable[tuple[bytes, bytes]]) -> Headers:
    return Headers((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                   for k, v in items)


def _pairs(items: HeaderItems) -> list[tuple[Any, Any]]:
    if isinstance(items, bytes):
        from ..pairs import decode_pairs
        return list(decode_pairs(items))
    if isinstance(items, Mapping):
        return list(items.items())
    return list(items)


class RecordedCall:
    """What every recorded call shares: where its answer goes and when it times out."""

    def __init__(self, recorder: "CallRecorder", calls: "VmCalls", token: int, cluster: str,
                 timeout_ms: int) -> None:
        self._recorder = recorder
        self._calls = calls
        self.token = token
        self.cluster = cluster
        self.timeout_ms = timeout_ms
        self.deadline_ns = recorder.now_ns() + timeout_ms * 1_000_000 if timeout_ms else None
        self.done = False       # answered, failed or closed
        self.cancelled = False  # the plugin cancelled it, or its root context went away

    @property
    def pending(self) -> bool:
        return not (self.done or self.cancelled)

    def _check(self) -> None:
        if not self.pending:
            raise RuntimeError(f"call {self.token} to {self.cluster!r} is no longer pending")

    def _deliver(self) -> None:
        self._recorder.deliver(self._calls)

    def _time_out(self) -> None:
        raise NotImplementedError


class RecordedHttpCall(RecordedCall):
    """A proxy_http_call the plugin made: answer it with respond() or fail()."""

    def __init__(self, recorder: "CallRecorder", calls: "VmCalls", token: int, cluster: str,
                 headers: list[tuple[bytes, bytes]], body: bytes,
                 trailers: list[tuple[bytes, bytes]], timeout_ms: int) -> None:
        super().__init__(recorder, calls, token, cluster, timeout_ms)
        self.headers = _headers(headers)
        self.body = body
        self.trailers = _headers(trailers)

    @property
    def method(self) -> str | None:
        return self.headers.get(":method")

    @property
    def path(self) -> str | None:
        return self.headers.get(":path")

    @property
    def authority(self) -> str | None:
        return self.headers.get(":authority")

    def respond(self, status: int = 200, headers: HeaderItems = (), body: bytes = b"",
                trailers: HeaderItems = ()) -> None:
        """Answers the call: the plugin's proxy_on_http_call_response runs (now, when the
        call was made on this thread; on its worker's thread otherwise)."""
        self._check()
        self.done = True
        all_headers = [(":status", str(status))] + _pairs(headers)
        self._calls.respond_http(self.token, all_headers, body, _pairs(trailers))
        self._deliver()

    def fail(self, reason: str = "reset") -> None:
        """Fails the call as a refused or reset connection does: the callback gets no
        headers, body or trailers; proxy_get_status gives 11 and `reason`."""
        self._check()
        self.done = True
        self._calls.fail_http(self.token, reason)
        self._deliver()

    def _time_out(self) -> None:
        self.fail("timeout")

    def __repr__(self) -> str:
        return f"<RecordedHttpCall {self.token} {self.method} {self.cluster}{self.path}>"


class RecordedGrpcCall(RecordedCall):
    """A proxy_grpc_call (unary) or proxy_grpc_stream the plugin made."""

    def __init__(self, recorder: "CallRecorder", calls: "VmCalls", token: int, stream: bool,
                 cluster: str, service: str, method: str, metadata: list[tuple[bytes, bytes]],
                 message: bytes, timeout_ms: int) -> None:
        super().__init__(recorder, calls, token, cluster, timeout_ms)
        self.stream = stream
        self.service = service
        self.method = method
        self.metadata = _headers(metadata)
        self.message = message          # a unary call's request
        self.messages: list[bytes] = []  # what the plugin sent on a stream
        self.half_closed = False         # the plugin ended its side of the stream

    def _guest_op(self, op: int, data: bytes, end_stream: bool) -> None:
        if op == lib.PW_OP_SEND:
            self.messages.append(data)
        if end_stream or op == lib.PW_OP_CLOSE:
            self.half_closed = True

    def respond(self, message: bytes) -> None:
        """A unary call's answer: proxy_on_grpc_receive, and the call is over."""
        self._check()
        if self.stream:
            raise RuntimeError("respond() answers unary calls; streams use send() and close()")
        self.done = True
        self._calls.grpc_message(self.token, message, final=True)
        self._deliver()

    def send_initial_metadata(self, metadata: HeaderItems) -> None:
        self._stream_only()
        self._calls.grpc_metadata(self.token, _pairs(metadata), trailing=False)
        self._deliver()

    def send(self, message: bytes) -> None:
        """A message from the server on a stream: proxy_on_grpc_receive."""
        self._stream_only()
        self._calls.grpc_message(self.token, message)
        self._deliver()

    def send_trailing_metadata(self, metadata: HeaderItems) -> None:
        self._stream_only()
        self._calls.grpc_metadata(self.token, _pairs(metadata), trailing=True)
        self._deliver()

    def close(self, status: int = 0, message: str = "") -> None:
        """Ends the call with a gRPC status: proxy_on_grpc_close(status); proxy_get_status
        then gives (status, message)."""
        self._check()
        self.done = True
        self._calls.grpc_close(self.token, status, message)
        self._deliver()

    def _stream_only(self) -> None:
        self._check()
        if not self.stream:
            raise RuntimeError("a unary call is answered with respond() or close()")

    def _time_out(self) -> None:
        self.close(GRPC_DEADLINE_EXCEEDED, "timeout")

    def __repr__(self) -> str:
        kind = "stream" if self.stream else "call"
        return f"<RecordedGrpcCall {self.token} {kind} {self.cluster} /{self.service}/{self.method}>"


_C = TypeVar("_C", bound="RecordedCall")

class CallRecorder:
    """Records calls to clusters that are not real. names: the cluster names it answers for
    (None: every name, so no call fails as an unknown cluster)."""

    def __init__(self, names: Iterable[str] | None, now_ns: Callable[[], int]) -> None:
        self.names = None if names is None else set(names)
        self.now_ns = now_ns
        self.calls: list[RecordedCall] = []
        self._lock = threading.Lock()  # workers record from their threads

    def knows(self, name: str) -> bool:
        return self.names is None or name in self.names

    def http(self, calls: "VmCalls", token: int, cluster: str, headers: list[Any], body: bytes,
             trailers: list[Any], timeout_ms: int) -> RecordedHttpCall:
        return self._add(RecordedHttpCall(self, calls, token, cluster, headers, body, trailers,
                                          timeout_ms))

    def grpc(self, calls: "VmCalls", token: int, stream: bool, cluster: str, service: str,
             method: str, metadata: list[Any], message: bytes, timeout_ms: int) -> RecordedGrpcCall:
        return self._add(RecordedGrpcCall(self, calls, token, stream, cluster, service, method,
                                          metadata, message, timeout_ms))

    def _add(self, call: _C) -> _C:
        with self._lock:
            self.calls.append(call)
        return call

    def pending(self) -> list[RecordedCall]:
        with self._lock:
            self.calls = [c for c in self.calls if c.pending]
            return list(self.calls)

    def next_deadline_ns(self) -> int | None:
        deadlines = [c.deadline_ns for c in self.pending() if c.deadline_ns is not None]
        return min(deadlines) if deadlines else None

    def expire(self, now_ns: int) -> int:
        """Times out, in deadline order, every pending call due by now_ns."""
        due = sorted((c for c in self.pending() if c.deadline_ns is not None and c.deadline_ns <= now_ns),
                     key=lambda c: c.deadline_ns or 0)
        for c in due:
            if c.pending:
                c._time_out()
        return len(due)

    @staticmethod
    def deliver(calls: "VmCalls") -> None:
        """Runs the calling thread's dispatcher now when the call was made on this thread
        (the harness's own); a worker's dispatcher delivers on its own."""
        d = calls.dispatcher
        if d.ptr is not None and d.thread == threading.get_ident():
            d.run()
