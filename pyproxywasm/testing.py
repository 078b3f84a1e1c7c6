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

import itertools
import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from ._binding import lib
from .config import DEFAULT_DEADLINE_MS, PluginConfig, VmConfig
from .host import Host, Plugin, Vm
from .limits import Limits
from .policy import FailurePolicy, ReloadPolicy
from .http import HttpStream
from .logs import LEVEL_NAMES, LogCapture, LogRecord, level_name
from .metrics import Metric, StatsTag
from .net.cluster import Cluster
from .net.recorded import CallRecorder, RecordedCall, RecordedGrpcCall, RecordedHttpCall
from .abi import Status
from .backends import Backend
from .state import Histogram, SharedValue
from .tcp import TcpStream
from .trace import DEFAULT_CAPACITY, TraceRecord, format_records
from .trace import enable as enable_trace
from .trace import read as read_trace

__all__ = ["PluginHarness", "LogRecord", "LogCapture", "Histogram", "SharedValue", "Status",
           "LEVEL_NAMES", "DEFAULT_START_NS"]

DEFAULT_START_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z

_harness_ids = itertools.count(1)  # numbers each harness's own namespace (any thread)


class PluginHarness:
    """A Host with one plugin (more can be added), a virtual clock and captured logs.

    Each harness is isolated: its shared data, shared queues and metrics live in a
    namespace of its own ("harness-<n>"), so tests that run one after another in a process
    never see each other's state. To share, give harnesses the same `namespace` (e.g.
    `PluginHarness(code, namespace=other.namespace)`); namespace="" is the process-wide
    one a plain Host uses."""

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
        namespace: str | None = None,
        singleton: bool = False,
        runtime: str = "envoy.wasm.runtime.wasmtime",
        plugins: Sequence[Mapping[str, Any]] | None = None,
        filter_state_keys: Iterable[str] = (),
        trace: bool | int = False,
        shared_state: Backend | Mapping[str, Backend] | None = None,
    ) -> None:
        """clusters: what the plugin's outbound calls reach. None (the default): every
        cluster name is accepted and calls are recorded for the test to answer
        (`http_calls`, `grpc_calls`), with their timeouts on the virtual clock. Otherwise
        a list of names (recorded) and `Cluster` objects (real upstreams, real time);
        any other name is an unknown cluster, as in Envoy.
        namespace: where shared data, queues and metrics live (None: the harness's own).
        shared_state: the backend of that namespace's shared data and queues
        (pyproxywasm.backends; Host's argument of the same name).
        singleton: the plugin is a Wasm service (Envoy's singleton). runtime: Envoy's
        runtime name (all run on wasmtime; it is part of the VM's identity).
        plugins: several plugins in the one VM, each a mapping of name, root_id,
        configuration, singleton (instead of the name/root_id/configuration arguments);
        `h.plugins` holds them, `h.plugin` is the first.
        filter_state_keys: keys set_envoy_filter_state accepts beyond Envoy's own.
        trace: record the ABI call trace of the harness's VMs (True: the last 4096
        records per VM; an int: that many); `h.trace()`, `h.format_trace()`. It starts
        after the VM's start-up (WASI _start/_initialize), before the first root.
        failure_policy, deadline_ms, reload: the plugin's (PluginConfig); limits: the
        host's caps (pyproxywasm.limits). What a policy did shows on each stream
        (HttpStream.failure_outcome) and in failure_stats."""
        self._policy: dict[str, Any] = dict(failure_policy=failure_policy, deadline_ms=deadline_ms,
                                            reload=reload or ReloadPolicy())
        self.now_ns = start_time_ns
        self.capture = LogCapture()
        self._logger = logging.getLogger("pyproxywasm")
        self._saved_level = self._logger.level
        self._logger.setLevel(1)
        self._logger.addHandler(self.capture)
        self.vm_config = VmConfig(code=code, vm_id=vm_id, configuration=vm_configuration,
                                  runtime=runtime,
                                  environment_variables=dict(environment_variables or {}))
        self.namespace = f"harness-{next(_harness_ids)}" if namespace is None else namespace
        self._singleton = singleton
        caps: dict[str, Any] = {} if buffer_limit is None else {"buffer_limit": buffer_limit}
        real = [c for c in clusters or () if isinstance(c, Cluster)]
        names = None if clusters is None else [c for c in clusters if isinstance(c, str)]
        self.recorder = CallRecorder(names, lambda: self.now_ns)
        self._allow_any_host = allow_any_host
        self._trace = DEFAULT_CAPACITY if trace is True else int(trace)
        self.host = Host(properties=properties, foreign_functions=foreign_functions,
                         clock_ns=start_time_ns, manual_dispatch=True, clusters=real,
                         call_recorder=self.recorder, namespace=self.namespace,
                         filter_state_keys=filter_state_keys,
                         on_vm=self._on_vm if self._trace else None, limits=limits,
                         shared_state=shared_state, **caps)
        self.state = self.host.state
        self.plugins: list[Plugin] = []
        try:
            for spec in plugins or [dict(configuration=configuration, root_id=root_id, name=name)]:
                self.plugins.append(self.add_plugin(**spec))
            self.plugin = self.plugins[0]
        except BaseException:
            self.close()
            raise

    # ---- plugins and streams -------------------------------------------------------------
    def add_plugin(self, *, configuration: bytes | str = b"", root_id: str = "", name: str = "",
                   vm_config: VmConfig | None = None, singleton: bool | None = None) -> Plugin:
        """Another plugin; with the same vm_config it shares the VM (its own root context)."""
        cfg = PluginConfig(vm_config or self.vm_config, name=name, root_id=root_id,
                           configuration=configuration, allow_any_host=self._allow_any_host,
                           singleton=self._singleton if singleton is None else singleton,
                           **self._policy)
        return self.host.add_plugin(cfg)

    @property
    def failure_stats(self) -> dict[str, dict[str, int]]:
        """Per plugin: how often its VM failed and how often FAIL_RELOAD replaced it."""
        return self.host.failure_stats

    def http_stream(self, plugin: Plugin | None = None,
                    properties: Mapping[Any, Any] | None = None) -> HttpStream:
        """A new HTTP stream through a plugin (the first by default): the host's verb."""
        return (plugin or self.plugin).http_stream(properties)

    def tcp_stream(self, plugin: Plugin | None = None,
                   properties: Mapping[Any, Any] | None = None) -> TcpStream:
        """A new TCP connection through a plugin (the first by default)."""
        return (plugin or self.plugin).tcp_stream(properties)

    http = http_stream  # the short names
    tcp = tcp_stream

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
        def settled() -> bool:
            return self.calls_in_flight() <= len(self.recorder.pending())

        return bool(self.host.dispatcher.wait(settled, timeout))

    # ---- what the plugin did -------------------------------------------------------------
    def log_records(self, level: str | None = None, *, stream: HttpStream | TcpStream | int | None = None,
                    plugin: Plugin | str | None = None) -> list[LogRecord]:
        """The records the plugins logged since the start (or the last clear_logs), filtered
        by level ("warn" is "warning"), by stream (a stream object or context id: what its
        callbacks logged) and by plugin (a Plugin, or its name / root_id)."""
        want = level_name(level) if level is not None else None
        cid = stream if isinstance(stream, int) or stream is None else stream.context_id
        if isinstance(plugin, Plugin):
            plugin = plugin.config.name or plugin.config.root_id
        return [r for r in self.capture.records
                if (want is None or r.level == want) and (cid is None or r.context_id == cid)
                and (plugin is None or plugin in (r.plugin, r.root_id))]

    def logs(self, level: str | None = None, *, stream: HttpStream | TcpStream | int | None = None,
             plugin: Plugin | str | None = None) -> list[str]:
        """The messages of log_records(...)."""
        return [r.message for r in self.log_records(level, stream=stream, plugin=plugin)]

    def clear_logs(self) -> None:
        """Forgets the records captured so far (logs() then shows only what comes next)."""
        self.capture.clear()

    def _stream_key(self, stream: HttpStream | TcpStream) -> tuple[int, int]:
        return int(lib.pw_vm_key(stream.plugin.vm.ptr)), stream.context_id

    def filter_state(self, stream: HttpStream | TcpStream) -> dict[str, bytes]:
        """What the stream's plugin set with the set_envoy_filter_state built-in."""
        return dict(self.host.builtins.filter_state.get(self._stream_key(stream), {}))

    def route_cache_clears(self, stream: HttpStream | TcpStream) -> int:
        """How often the stream's plugin called the clear_route_cache built-in."""
        return self.host.builtins.route_cache_clears.get(self._stream_key(stream), 0)

    def metric(self, name: str) -> int | Histogram | None:
        """A metric the plugins defined: the value of a counter or gauge, or a Histogram."""
        return self.state.metric(name)

    def metrics(self) -> list[Metric]:
        return self.state.metrics()

    def prometheus(self, stats_tags: Sequence[StatsTag] = ()) -> str:
        """The harness's metrics as Envoy's /stats/prometheus writes them."""
        return self.state.prometheus(list(stats_tags))

    def _vid(self, vm_id: str | None) -> str:
        return self.vm_config.vm_id if vm_id is None else vm_id

    def shared_data(self, key: str | bytes, vm_id: str | None = None) -> SharedValue | None:
        """A shared-data key of a vm_id (the plugin's by default), or None."""
        return self.state.shared_data(key, self._vid(vm_id))

    def set_shared_data(self, key: str | bytes, value: bytes, cas: int = 0,
                        vm_id: str | None = None) -> Status:
        """Writes shared data as a plugin would: Status.OK, or CAS_MISMATCH."""
        return self.state.set_shared_data(key, value, cas, self._vid(vm_id))

    def delete_shared_data(self, key: str | bytes, cas: int = 0,
                           vm_id: str | None = None) -> Status:
        """Deletes a key (beyond the ABI): OK, NOT_FOUND or CAS_MISMATCH."""
        return self.state.delete(key, self._vid(vm_id), cas)

    def expire_shared_data(self, key: str | bytes, ttl_seconds: float,
                           vm_id: str | None = None) -> Status:
        """Gives a key a time to live from now, in real seconds (0: forever): OK or
        NOT_FOUND. TTLs count on the machine's monotonic clock, not the harness's."""
        return self.state.expire(key, ttl_seconds, self._vid(vm_id))

    def queue_id(self, name: str, vm_id: str | None = None) -> int | None:
        return self.state.queue_id(name, self._vid(vm_id))

    def queue_size(self, name: str, vm_id: str | None = None) -> int | None:
        return self.state.queue_size(name, self._vid(vm_id))

    def enqueue(self, name: str, data: bytes, vm_id: str | None = None) -> Status:
        """Enqueues on a plugin's queue as another VM would; the owner is notified later."""
        return self.state.enqueue(name, data, self._vid(vm_id))

    # ---- the ABI call trace ---------------------------------------------------------------------
    def _on_vm(self, vm: Vm) -> None:
        enable_trace(vm, self._trace)

    @property
    def tracing(self) -> bool:
        """Whether the ABI call trace is recorded (PluginHarness(trace=...))."""
        return bool(self._trace)

    def trace(self) -> list[TraceRecord]:
        """Every traced hostcall and callback of this thread's VMs (PluginHarness(trace=True)),
        VM by VM, oldest first."""
        return [r for vm in self.host.vms for r in read_trace(vm)[0]]

    def format_trace(self) -> str:
        """The trace as text, one line per record, for a failing test to print."""
        parts = []
        for vm in self.host.vms:
            records, dropped = read_trace(vm)
            parts.append(f"VM {vm.vm_config.vm_id!r}:\n" + format_records(records, dropped))
        return "\n".join(parts)

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

    def __exit__(self, *exc: object) -> None:
        self.close()
