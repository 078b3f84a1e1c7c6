"""Testing real plugins: drive a .wasm (any SDK) as Envoy would and assert on the result.

    from pyproxywasm.testing import PluginHarness

    with PluginHarness("filter.wasm", configuration='{"header": "x-a"}') as h:
        s = h.http()
        s.send_request_headers({":method": "GET", ":path": "/"}, end_stream=True)
        assert s.request_headers.get("x-a") == "1"
        h.advance(1000)                 # virtual clock: fires the ticks that fall due
        assert "tick" in h.logs("info")
        assert h.metric("requests_total") == 1

Unlike the Go SDK's proxytest, which fakes the host around native Go code, this runs the
compiled module in the real host with Envoy's semantics: lazy context creation, teardown
order, map availability, deferred local replies and continues, and asynchronous queue
notifications (delivered by dispatch() or advance(), never inside the enqueue).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ._binding import PY_LEVELS, ffi, lib
from .config import DEFAULT_DEADLINE_MS, PluginConfig, VmConfig
from .host import Host, Plugin
from .limits import Limits
from .policy import FailurePolicy, ReloadPolicy
from .http import HttpStream
from .net.cluster import Cluster
from .net.recorded import CallRecorder, RecordedCall, RecordedGrpcCall, RecordedHttpCall
from .tcp import TcpStream

LEVEL_NAMES = ("trace", "debug", "info", "warn", "error", "critical")
_PY_TO_NAME = dict(zip(PY_LEVELS, LEVEL_NAMES))
_KINDS = ("counter", "gauge", "histogram")

DEFAULT_START_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z


@dataclass(frozen=True)
class LogRecord:
    logger: str
    level: str
    message: str


class LogCapture(logging.Handler):
    """Keeps every record of the pyproxywasm loggers, at every level."""

    def __init__(self) -> None:
        super().__init__(level=1)
        self.records: list[LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        level = _PY_TO_NAME.get(record.levelno, record.levelname.lower())
        self.records.append(LogRecord(record.name, level, record.getMessage()))


@dataclass(frozen=True)
class Histogram:
    count: int
    sum: int


class PluginHarness:
    """A Host with one plugin (more can be added), a virtual clock and captured logs."""

    def __init__(
        self,
        code: bytes | str | os.PathLike[str],
        *,
        configuration: bytes | str = b"",
        vm_configuration: bytes | str = b"",
        vm_id: str = "",
        root_id: str = "",
        name: str = "",
        environment_variables: Mapping[str, str] | None = None,
        properties: Mapping[Any, Any] | None = None,
        foreign_functions: Mapping[str, Callable[[bytes], bytes | None]] | None = None,
        start_time_ns: int = DEFAULT_START_NS,
        buffer_limit: int | None = None,
        clusters: Iterable[Cluster | str] | None = None,
        allow_any_host: bool = False,
        failure_policy: FailurePolicy | str = FailurePolicy.FAIL_CLOSED,
        deadline_ms: int | None = DEFAULT_DEADLINE_MS,
        reload: ReloadPolicy | None = None,
        limits: Limits | None = None,
    ) -> None:
        """clusters: what the plugin's outbound calls reach. None (the default): every
        cluster name is accepted and calls are recorded for the test to answer
        (`http_calls`, `grpc_calls`), with their timeouts on the virtual clock. Otherwise
        a list of names (recorded) and `Cluster` objects (real upstreams, real time);
        any other name is an unknown cluster, as in Envoy.
        failure_policy, deadline_ms, reload: the plugin's (PluginConfig); limits: the
        host's caps (pyproxywasm.limits). What a policy did shows on each stream
        (HttpStream.failure_outcome) and in failure_stats."""
        self._policy = dict(failure_policy=failure_policy, deadline_ms=deadline_ms,
                            reload=reload or ReloadPolicy())
        self.now_ns = start_time_ns
        self.capture = LogCapture()
        self._logger = logging.getLogger("pyproxywasm")
        self._saved_level = self._logger.level
        self._logger.setLevel(1)
        self._logger.addHandler(self.capture)
        self.vm_config = VmConfig(code=code, vm_id=vm_id, configuration=vm_configuration,
                                  environment_variables=dict(environment_variables or {}))
        caps: dict[str, Any] = {} if buffer_limit is None else {"buffer_limit": buffer_limit}
        real = [c for c in clusters or () if isinstance(c, Cluster)]
        names = None if clusters is None else [c for c in clusters if isinstance(c, str)]
        self.recorder = CallRecorder(names, lambda: self.now_ns)
        self._allow_any_host = allow_any_host
        self.host = Host(properties=properties, foreign_functions=foreign_functions,
                         clock_ns=start_time_ns, manual_dispatch=True, clusters=real,
                         call_recorder=self.recorder, limits=limits, **caps)
        try:
            self.plugin = self.add_plugin(configuration=configuration, root_id=root_id, name=name)
        except BaseException:
            self.close()
            raise

    # ---- plugins and streams -------------------------------------------------------------
    def add_plugin(self, *, configuration: bytes | str = b"", root_id: str = "", name: str = "",
                   vm_config: VmConfig | None = None) -> Plugin:
        """Another plugin; with the same vm_config it shares the VM (its own root context)."""
        cfg = PluginConfig(vm_config or self.vm_config, name=name, root_id=root_id,
                           configuration=configuration, allow_any_host=self._allow_any_host,
                           **self._policy)
        return self.host.add_plugin(cfg)

    @property
    def failure_stats(self) -> dict[str, dict[str, int]]:
        """Per plugin: how often its VM failed and how often FAIL_RELOAD replaced it."""
        return self.host.failure_stats

    def http(self, plugin: Plugin | None = None, properties: Mapping[Any, Any] | None = None) -> HttpStream:
        return (plugin or self.plugin).http_stream(properties)

    def tcp(self, plugin: Plugin | None = None, properties: Mapping[Any, Any] | None = None) -> TcpStream:
        return (plugin or self.plugin).tcp_stream(properties)

    # ---- time and asynchronous events --------------------------------------------------------
    def dispatch(self) -> int:
        """Delivers queued on_queue_ready notifications (and ticks already due)."""
        return self.host.dispatch()

    def advance(self, ms: float) -> int:
        """Moves the virtual clock forward, firing each tick and timing out each recorded
        call at its due time, in order."""
        target = self.now_ns + int(ms * 1_000_000)
        calls = self.dispatch()
        while True:
            due = [self.now_ns + n for n in (vm.next_tick_in_ns() for vm in self.host.vms)
                   if n is not None]
            deadline = self.recorder.next_deadline_ns()
            if deadline is not None:
                due.append(max(deadline, self.now_ns))
            if not due or min(due) > target:
                break
            self.now_ns = min(due)
            self.host.set_clock(self.now_ns)
            calls += self.recorder.expire(self.now_ns)
            calls += self.dispatch()
        self.now_ns = target
        self.host.set_clock(self.now_ns)
        return calls + self.dispatch()

    # ---- outbound calls ----------------------------------------------------------------------
    @property
    def http_calls(self) -> list[RecordedHttpCall]:
        """The plugin's HTTP calls to recorded clusters that are still waiting for an answer,
        in the order they were made."""
        return [c for c in self.recorder.pending() if isinstance(c, RecordedHttpCall)]

    @property
    def grpc_calls(self) -> list[RecordedGrpcCall]:
        """The plugin's gRPC calls and streams to recorded clusters still open."""
        return [c for c in self.recorder.pending() if isinstance(c, RecordedGrpcCall)]

    @property
    def calls(self) -> list[RecordedCall]:
        """Every recorded call still pending, HTTP and gRPC, in order."""
        return self.recorder.pending()

    def calls_in_flight(self) -> int:
        """Calls of this thread's VMs not answered yet (recorded and real)."""
        return sum(lib.pw_vm_calls_in_flight(vm.ptr) for vm in self.host.vms)

    def settle(self, timeout: float = 5.0) -> bool:
        """Waits, in real time, until every call to a real cluster has been answered and
        delivered (recorded calls wait for the test). False on timeout."""
        recorded = lambda: sum(1 for c in self.recorder.pending())  # noqa: E731
        return self.host.dispatcher.wait(lambda: self.calls_in_flight() <= recorded(), timeout)

    # ---- what the plugin did -------------------------------------------------------------------
    def logs(self, level: str | None = None) -> list[str]:
        """Messages the plugins logged, optionally only those at one level."""
        return [r.message for r in self.capture.records if level is None or r.level == level]

    def metric(self, name: str) -> int | Histogram | None:
        """A metric the plugins defined: the value of a counter or gauge, or a Histogram."""
        raw = name.encode()
        kind, value, total = ffi.new("int *"), ffi.new("int64_t *"), ffi.new("uint64_t *")
        if lib.pw_metric_get(raw, len(raw), kind, value, total) != 0:
            return None
        if _KINDS[kind[0]] == "histogram":
            return Histogram(value[0], total[0])
        return value[0]

    def shared_data(self, key: str | bytes, vm_id: str | None = None) -> tuple[bytes, int] | None:
        """(value, cas) of a shared-data key in a vm_id's namespace, or None."""
        vid = (self.vm_config.vm_id if vm_id is None else vm_id).encode()
        k = key.encode() if isinstance(key, str) else key
        out, n, cas = ffi.new("uint8_t **"), ffi.new("size_t *"), ffi.new("uint32_t *")
        if lib.pw_shared_get(vid, len(vid), k, len(k), out, n, cas) != 0:
            return None
        try:
            return ffi.buffer(out[0], n[0])[:], cas[0]
        finally:
            lib.pw_bytes_free(out[0])

    def set_shared_data(self, key: str | bytes, value: bytes, cas: int = 0,
                        vm_id: str | None = None) -> int:
        """Writes shared data as a plugin would; returns the ABI status (0 OK, 8 mismatch)."""
        vid = (self.vm_config.vm_id if vm_id is None else vm_id).encode()
        k = key.encode() if isinstance(key, str) else key
        return lib.pw_shared_set(vid, len(vid), k, len(k), value, len(value), cas)

    def queue_id(self, name: str, vm_id: str | None = None) -> int | None:
        vid = (self.vm_config.vm_id if vm_id is None else vm_id).encode()
        raw, out = name.encode(), ffi.new("uint32_t *")
        return out[0] if lib.pw_queue_resolve(vid, len(vid), raw, len(raw), out) == 0 else None

    def queue_size(self, name: str, vm_id: str | None = None) -> int | None:
        qid = self.queue_id(name, vm_id)
        return None if qid is None else lib.pw_queue_size(qid)

    def enqueue(self, name: str, data: bytes, vm_id: str | None = None) -> None:
        """Enqueues on a plugin's queue as another VM would; the owner is notified later."""
        qid = self.queue_id(name, vm_id)
        if qid is None:
            raise KeyError(f"no queue {name!r} registered")
        lib.pw_queue_enqueue(qid, data, len(data))

    # ---- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        host = getattr(self, "host", None)
        if host is not None:
            # No waiting for roots that defer with proxy_done: the virtual clock stands still.
            host.close(timeout=0)
        self._logger.removeHandler(self.capture)
        self._logger.setLevel(self._saved_level)

    def __enter__(self) -> "PluginHarness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
