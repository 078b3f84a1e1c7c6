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

With workers=N the harness runs Envoy's threads: N worker threads, each with its own VMs,
and the main thread that runs singleton services, all on the harness's virtual clock and
all deterministic: a worker runs only what the test hands it (streams made with
`h.http(worker=i)`, `h.run_on(i, fn)`); ticks fire only in advance(); queue notifications
and call answers posted to a thread wait there until dispatch(), advance() or settle().

    with PluginHarness(code, workers=2, plugins=[
            dict(name="consumer", configuration="c", singleton=True),
            dict(name="producer", configuration="p")]) as h:
        with h.http(h.plugins[1], worker=0) as s:     # runs on worker 0
            s.send_request_headers(...)
        h.dispatch()                                  # the consumer's on_queue_ready, on main
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar, cast

from ._binding import lib
from .config import DEFAULT_DEADLINE_MS, PluginConfig, VmConfig
from .dispatch import Worker
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
from .errors import ProxyWasmError
from .state import Histogram, SharedValue
from .tcp import TcpStream
from .trace import DEFAULT_CAPACITY, TraceRecord, format_records
from .trace import enable as enable_trace
from .trace import read as read_trace

__all__ = ["PluginHarness", "WorkerStream", "LogRecord", "LogCapture", "Histogram",
           "SharedValue", "Status", "LEVEL_NAMES", "DEFAULT_START_NS"]

DEFAULT_START_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z

_harness_ids = itertools.count(1)  # numbers each harness's own namespace (any thread)
T = TypeVar("T")


class WorkerStream:
    """A stream that lives on one of the harness's workers (`h.http(worker=i)`). Its VM may
    only be touched by that thread, so every method call and attribute read is handed to
    the worker and waited for: `s.send_request_headers(...)`, `s.request_headers` read as
    on an HttpStream / TcpStream, in the test's order, on the worker's thread."""

    __slots__ = ("_worker", "_stream", "worker")

    def __init__(self, worker: Worker, index: int | str, stream: HttpStream | TcpStream) -> None:
        self._worker = worker
        self._stream = stream
        self.worker = index  # the worker's index ("main": the main thread)

    def run(self, fn: Callable[[Any], T]) -> T:
        """fn(stream) on the stream's thread."""
        stream = self._stream
        return cast(T, self._worker.call(lambda: fn(stream)).result())

    def __getattr__(self, name: str) -> Any:
        value = self.run(lambda s: getattr(s, name))
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._worker.call(lambda: value(*args, **kwargs)).result()
        return call

    def __enter__(self) -> "WorkerStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(lambda s: s.finish())

    def __repr__(self) -> str:
        return f"<WorkerStream on worker {self.worker}: {self._stream!r}>"


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
        workers: int = 0,
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
        (HttpStream.failure_outcome) and in failure_stats.
        workers: worker threads, each with its own VMs (Host(concurrency=workers)), plus
        the main thread that runs singletons; all on the virtual clock, and each runs only
        what the test hands it (`h.http(worker=i)`, `h.run_on(i, fn)`), its events only in
        dispatch() / advance() / settle(). 0 (the default): everything runs on the test's
        thread. With workers, `h.plugin.vm` and `h.http()` without a worker use VMs of the
        test's own thread (made on first use)."""
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
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, not {workers!r}")
        self.workers = workers
        self.host = Host(properties=properties, foreign_functions=foreign_functions,
                         concurrency=workers,
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
                    properties: Mapping[Any, Any] | None = None, *,
                    worker: int | None = None) -> Any:
        """A new HTTP stream through a plugin (the first by default): the host's verb.
        worker=i: the stream runs on worker i (a WorkerStream, used the same way)."""
        p = plugin or self.plugin
        if worker is None:
            return p.http_stream(properties)
        w = self._worker(worker)
        return WorkerStream(w, worker, w.call(p.http_stream, properties).result())

    def tcp_stream(self, plugin: Plugin | None = None,
                   properties: Mapping[Any, Any] | None = None, *,
                   worker: int | None = None) -> Any:
        """A new TCP connection through a plugin (the first by default); worker=i: on
        worker i."""
        p = plugin or self.plugin
        if worker is None:
            return p.tcp_stream(properties)
        w = self._worker(worker)
        return WorkerStream(w, worker, w.call(p.tcp_stream, properties).result())

    def _worker(self, index: int | str) -> Worker:
        if index == "main" and self.host.main_worker is not None:
            return self.host.main_worker
        if isinstance(index, int) and 0 <= index < len(self.host.workers):
            return self.host.workers[index]
        raise ValueError(f"no worker {index!r}: the harness has {self.workers} "
                         "(PluginHarness(workers=N); \"main\" is the singletons' thread)")

    def run_on(self, worker: int | str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on worker `worker` (an index, or "main": the singletons' thread), for
        what the harness has no verb for (`h.run_on(0, plugin.tick)`); its result."""
        return cast(T, self._worker(worker).call(fn, *args).result())

    http = http_stream  # the short names
    tcp = tcp_stream

    # ---- time and asynchronous events --------------------------------------------------------
    def dispatch(self) -> int:
        """Delivers queued on_queue_ready notifications, call answers (and ticks already
        due): with workers, on the main thread, then each worker in order, then the test's
        thread, one run each (an event one of them posts to a thread already run waits for
        the next dispatch)."""
        return sum(self.host.on_threads(self.host.dispatch))

    def _next_tick_in_ns(self) -> int | None:
        def here() -> int | None:
            due = [n for n in (vm.next_tick_in_ns() for vm in self.host.vms) if n is not None]
            return min(due) if due else None
        due = [n for n in self.host.on_threads(here) if n is not None]
        return min(due) if due else None

    def _set_clock(self, now_ns: int) -> None:
        self.host.on_threads(lambda: self.host.set_clock(now_ns))

    def advance(self, ms: float) -> int:
        """Moves the virtual clock forward, firing each tick and timing out each recorded
        call at its due time, in order."""
        target = self.now_ns + int(ms * 1_000_000)
        calls = self.dispatch()
        while True:
            tick = self._next_tick_in_ns()
            due = [] if tick is None else [self.now_ns + tick]
            deadline = self.recorder.next_deadline_ns()
            if deadline is not None:
                due.append(max(deadline, self.now_ns))
            if not due or min(due) > target:
                break
            self.now_ns = min(due)
            self._set_clock(self.now_ns)
            calls += self.recorder.expire(self.now_ns)
            calls += self.dispatch()
        self.now_ns = target
        self._set_clock(self.now_ns)
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

    def _calls_here(self) -> int:
        return sum(int(lib.pw_vm_calls_in_flight(vm.ptr)) for vm in self.host.vms)

    def calls_in_flight(self) -> int:
        """Calls of the harness's VMs (every thread's) not answered yet (recorded and real)."""
        return sum(self.host.on_threads(self._calls_here))

    def settle(self, timeout: float = 5.0) -> bool:
        """Waits, in real time, until every call to a real cluster has been answered and
        delivered (recorded calls wait for the test). False on timeout. With workers, each
        thread's answers are delivered there as they come, thread by thread."""
        def settled() -> bool:
            return self.calls_in_flight() <= len(self.recorder.pending())

        if not self.workers:
            return bool(self.host.dispatcher.wait(settled, timeout))
        deadline = time.monotonic() + timeout
        while True:
            self.dispatch()
            if settled():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    # ---- what the plugin did -------------------------------------------------------------
    def log_records(self, level: str | None = None, *,
                    stream: HttpStream | TcpStream | WorkerStream | int | None = None,
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

    def logs(self, level: str | None = None, *,
             stream: HttpStream | TcpStream | WorkerStream | int | None = None,
             plugin: Plugin | str | None = None) -> list[str]:
        """The messages of log_records(...)."""
        return [r.message for r in self.log_records(level, stream=stream, plugin=plugin)]

    def clear_logs(self) -> None:
        """Forgets the records captured so far (logs() then shows only what comes next)."""
        self.capture.clear()

    def _stream_key(self, stream: HttpStream | TcpStream | WorkerStream) -> tuple[int, int]:
        if isinstance(stream, WorkerStream):
            return stream.run(self._stream_key)
        return int(lib.pw_vm_key(stream.plugin.vm.ptr)), stream.context_id

    def filter_state(self, stream: HttpStream | TcpStream | WorkerStream) -> dict[str, bytes]:
        """What the stream's plugin set with the set_envoy_filter_state built-in."""
        return dict(self.host.builtins.filter_state.get(self._stream_key(stream), {}))

    def route_cache_clears(self, stream: HttpStream | TcpStream | WorkerStream) -> int:
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
        """Every traced hostcall and callback of the harness's VMs (PluginHarness(trace=True)),
        VM by VM (with workers: thread by thread, as dispatch() orders them), oldest first."""
        def here() -> list[TraceRecord]:
            return [r for vm in self.host.vms for r in read_trace(vm)[0]]
        return [r for records in self.host.on_threads(here) for r in records]

    def format_trace(self) -> str:
        """The trace as text, one line per record, for a failing test to print."""
        def here() -> list[str]:
            parts = []
            for vm in self.host.vms:
                records, dropped = read_trace(vm)
                parts.append(f"VM {vm.vm_config.vm_id!r}:\n" + format_records(records, dropped))
            return parts
        return "\n".join(p for parts in self.host.on_threads(here) for p in parts)

    # ---- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        host = getattr(self, "host", None)
        if host is not None:
            # No waiting for roots that defer with proxy_done: the virtual clock stands still.
            # Workers shut their VMs down first (then the main thread), as Host.close does.
            for w in host.workers + ([host.main_worker] if host.main_worker else []):
                try:
                    w.call(host.release_thread, 0.0).result()
                except ProxyWasmError:
                    pass  # the worker has stopped already
            host.release_thread(0.0)
            host.close(timeout=5.0 if host.workers else 0)
        self._logger.removeHandler(self.capture)
        self._logger.setLevel(self._saved_level)

    def __enter__(self) -> "PluginHarness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
