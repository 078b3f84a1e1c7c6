"""The host: plugins, the VMs they run in on each thread, and the streams through them.

As in Envoy, every thread that runs streams owns its own VM per vm_config (the VM key),
instantiated from one compiled module, with every plugin's root context started in it:
- Host(concurrency=N) starts N worker threads (Envoy's --concurrency), each with its VMs;
  hand them work with host.workers[i].call(fn).
- Any other thread that uses a plugin (a WSGI server thread, say) gets its VMs on first use.
- Plugins configured as singletons (Envoy's Wasm services) run once, on the host's main
  dispatcher thread: a thread of their own when there are workers, else the thread that
  created the Host.
Plugins whose vm_config is identical share one VM per thread, each with its own root
context. A store is only ever touched by its own thread; the C core refuses anything else.
"""
from __future__ import annotations

import collections
import functools
import logging
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar

from . import properties as props
from ._binding import ERRORS, ForeignFunction, LogTarget, error_for, ffi, lib, proxy_level, raise_for
from .config import PluginConfig, VmConfig, as_bytes
from .dispatch import Dispatcher, Worker
from .errors import ConfigError, HostClosedError, PluginStartError, ProxyWasmError
from .limits import Limits
from .policy import FailurePolicy, ReloadState
from .http import HttpStream, _fast, vm_thread
from .module import CompiledModule, compile_module
from .net.cluster import Cluster
from .net.outbound import Outbound, Recorder, VmCalls
from .builtins import Builtins
from .envoy_properties import with_defaults
from .backends import Backend, attach_all
from .state import SharedState
from .tcp import TcpStream

# Plugin.http_stream's shortcut in C: Opener(HttpStream, root, ...)() makes a stream.
_Opener: Callable[..., Callable[[], HttpStream | None]] | None = _fast.Opener if _fast is not None else None

T = TypeVar("T")


class Vm:
    """One instance of a module, owned by the thread that created it."""

    def __init__(self, compiled: CompiledModule, vm_config: VmConfig, dispatcher: Dispatcher,
                 host_properties: Iterable[tuple[bytes, bytes]], clock_ns: int = 0,
                 buffer_limit: int | None = None, limits: Limits | None = None,
                 namespace: str = "") -> None:
        self.compiled = compiled
        self.vm_config = vm_config
        self.abi_version = compiled.spec.abi_version
        self._log = LogTarget(logging.getLogger(f"pyproxywasm.vm.{vm_config.vm_id or 'default'}"),
                              vm_id=vm_config.vm_id)
        self._foreign: list[ForeignFunction] = []
        vm_id = vm_config.vm_id.encode()
        cfg = as_bytes(vm_config.configuration)
        env = vm_config.environ()
        err = ffi.new("char[1024]")
        lim = limits or Limits()
        c_limits = ffi.new("pw_limits *", {
            "memory_bytes": lim.memory_bytes, "body_bytes": lim.body_bytes,
            "deadline_ms": lim.startup_ms, "log_bytes": lim.log_bytes})
        start = time.perf_counter()
        ns = namespace.encode()
        ptr = lib.pw_vm_new(compiled.ptr, dispatcher.ptr, c_limits, ns, len(ns), vm_id, len(vm_id),
                            cfg, len(cfg), env, len(env), self._log.handle, err, 1024)
        self.start_seconds = time.perf_counter() - start
        if ptr == ffi.NULL:
            raise PluginStartError("cannot start the VM: " + ffi.string(err).decode(errors="replace"))
        # The C struct outlives close(): a stale stream or root then gets HostClosedError
        # instead of reading freed memory. It is freed when the last Python handle goes.
        self.ptr = ffi.gc(ptr, lib.pw_vm_free)
        self.addr = int(ffi.cast("uintptr_t", ptr))  # for pyproxywasm._fast (lives as long)
        self._log.vm = ptr
        self.failure_recorded = False  # FAIL_RELOAD counted this VM's failure
        self.generation = 0  # how many VMs FAIL_RELOAD replaced before this one
        self.streams = 0  # streams started on it (counted for FAIL_RELOAD plugins only)
        # Ids of streams dropped on another thread without finish(): ended by the owner.
        self.dropped: collections.deque[int] = collections.deque()

        self.dispatcher = dispatcher
        self.calls: VmCalls | None = None  # its outbound calls, when the host routes any
        # Out-parameters reused by every call on this VM (all from its owner thread).
        self.u32 = ffi.new("uint32_t *")
        self.out = ffi.new("const uint8_t **")
        self.out_len = ffi.new("size_t *")
        if clock_ns:
            self.set_clock(clock_ns)
        if buffer_limit is not None:
            lib.pw_vm_set_buffer_limit(ptr, buffer_limit)
        for path, value in host_properties:
            lib.pw_set_host_property(ptr, 0, path, len(path), value, len(value))

    @property
    def failed(self) -> bool:
        return bool(lib.pw_vm_failed(self.ptr))

    @property
    def error(self) -> str:
        return str(ffi.string(lib.pw_vm_error(self.ptr)).decode(errors="replace"))

    def register_foreign(self, ff: ForeignFunction) -> None:
        name = ff.name.encode()
        if lib.pw_vm_register_foreign(self.ptr, name, len(name), ff.handle) != lib.PW_OK:
            raise ProxyWasmError(f"cannot register foreign function {ff.name!r}")
        self._foreign.append(ff)

    def set_clock(self, now_ns: int) -> None:
        lib.pw_vm_set_clock(self.ptr, now_ns)

    def next_tick_in_ns(self) -> int | None:
        n = lib.pw_vm_next_tick_in(self.ptr)
        return None if n == 2**64 - 1 else n

    def finish_dropped(self) -> None:
        """Owner thread: ends the streams other threads dropped without finish()."""
        while self.dropped:
            lib.pw_http_finish(self.ptr, self.dropped.popleft())

    @property
    def closed(self) -> bool:
        return bool(lib.pw_vm_closed(self.ptr))

    def interrupt(self) -> None:
        """From any thread: the running (or next) guest call traps at once."""
        lib.pw_vm_interrupt(self.ptr)

    def close(self) -> None:
        """Frees the store and contexts (owner thread, outside the VM's callbacks)."""
        rc = lib.pw_vm_close(self.ptr)
        if rc != lib.PW_OK:
            raise error_for(rc)


class RootContext:
    """One plugin's root context in one VM (so, on one thread)."""

    def __init__(self, config: PluginConfig, vm: Vm) -> None:
        self.config = config
        self.vm = vm
        self.thread = threading.get_ident()
        self.logger = logging.getLogger(f"pyproxywasm.plugin.{config.display_name}")
        self._log = LogTarget(self.logger, config.name, config.root_id, config.vm_config.vm_id)
        self._log.vm = vm.ptr
        name, root_id = config.name.encode(), config.root_id.encode()
        cfg = as_bytes(config.configuration)
        lib.pw_vm_set_deadline(vm.ptr, config.deadline_ms or 0)
        rc = lib.pw_root_new(vm.ptr, name, len(name), root_id, len(root_id), cfg, len(cfg),
                             self._log.handle, proxy_level(self.logger), vm.u32)
        self.context_id: int = int(vm.u32[0])
        self._sync_marker()
        self.closing = self.closed = False
        if config.failure_policy is FailurePolicy.FAIL_OPEN:
            lib.pw_root_set_fail_open(vm.ptr, self.context_id, 1)
        if rc in (lib.PW_ERR_THREAD, lib.PW_ERR_REENTRANT, lib.PW_ERR_CLOSED):
            raise_for(rc, vm)
        if rc != lib.PW_OK:
            what = {
                lib.PW_ERR_VM_REJECTED: "proxy_on_vm_start returned false",
                lib.PW_ERR_REJECTED: "proxy_on_configure returned false",
            }.get(rc) or (vm.error if rc in (lib.PW_ERR_TRAP, lib.PW_ERR_FAILED) else ERRORS.get(rc, str(rc)))
            raise PluginStartError(f"plugin {config.display_name!r} failed to start: {what}")

    def _sync_marker(self) -> None:
        # logging clears every logger's level cache whenever any level changes; a filled
        # cache therefore means the level the C core holds is still the logger's.
        self.logger.isEnabledFor(5)

    def sync_log_level(self) -> None:
        """Hands the logger's current level to the C core if logging was reconfigured."""
        if not self.logger._cache:  # type: ignore[attr-defined]  # the level cache
            lib.pw_root_set_log_level(self.vm.ptr, self.context_id, proxy_level(self.logger))
            self._sync_marker()

    @property
    def tick_period_ms(self) -> int:
        return int(lib.pw_root_tick_period(self.vm.ptr, self.context_id))

    def tick(self) -> None:
        """Calls proxy_on_tick now, whatever the period."""
        rc = lib.pw_root_tick(self.vm.ptr, self.context_id)
        if rc != lib.PW_OK:
            raise_for(rc, self.vm)

    def call_foreign(self, function_id: int, args: bytes = b"") -> None:
        """Delivers proxy_on_foreign_function(root, function_id, args) to the plugin."""
        rc = lib.pw_root_foreign_call(self.vm.ptr, self.context_id, function_id, args, len(args))
        if rc != lib.PW_OK:
            raise_for(rc, self.vm)

    def http_stream(self, properties: Mapping[Any, Any] | None = None) -> HttpStream:
        if not self.logger._cache:  # type: ignore[attr-defined]  # the level cache
            self.sync_log_level()
        return HttpStream(self, properties)

    def opener(self) -> Callable[[], HttpStream | None] | None:
        """A C callable making this root's streams (pyproxywasm._fast.Opener), or None
        without the extension. It answers None when the general path has work to do."""
        if _Opener is None:
            return None
        vm = self.vm
        return _Opener(HttpStream, self, vm, vm.ptr, vm.addr, self.context_id, vm.dropped,
                       self.logger._cache)  # type: ignore[attr-defined]  # the level cache

    def tcp_stream(self, properties: Mapping[Any, Any] | None = None) -> TcpStream:
        self.sync_log_level()
        return TcpStream(self, properties)

    def property(self, path: props.Path, context_id: int | None = None) -> bytes | None:
        """Reads a property as the plugin would see it (None when NOT_FOUND)."""
        p = props.encode_path(path)
        out, n = ffi.new("const uint8_t **"), ffi.new("size_t *")
        st = lib.pw_get_property(self.vm.ptr, context_id or self.context_id, p, len(p), out, n)
        if st < 0:
            raise_for(st, self.vm)
        return ffi.buffer(out[0], n[0])[:] if st == 0 else None

    def close(self) -> bool:
        """Shuts the root context down: on_done, then on_delete unless the plugin defers
        it with a false on_done (it then ends with proxy_done). True once deleted."""
        if self.closing:
            self.closed = self.closed or not lib.pw_context_alive(self.vm.ptr, self.context_id)
            return self.closed
        self.closing = True
        r = lib.pw_root_done(self.vm.ptr, self.context_id)
        if r < 0:
            raise_for(r, self.vm)
        self.closed = r == 1
        return self.closed


class _ThreadState:
    """What one thread owns for one Host: its dispatcher, VMs and root contexts."""

    def __init__(self, dispatcher: Dispatcher, owns_dispatcher: bool) -> None:
        self.dispatcher = dispatcher
        self.owns_dispatcher = owns_dispatcher
        self.vms: dict[tuple[object, ...], Vm] = {}
        self.roots: dict[int, RootContext] = {}
        # Plugin.http_stream's shortcut: plugin index -> the root's Opener. Filled by the
        # general path, emptied wherever roots are replaced, removed or torn down.
        self.openers: dict[int, Callable[[], HttpStream | None]] = {}
        self.reload: dict[tuple[object, ...], ReloadState] = {}  # FAIL_RELOAD bookkeeping per VM key

    def drop_openers(self, index: int | None = None) -> None:
        """Forgets this thread's Openers (every plugin's, or one); the ones Plugin.http_stream
        keeps in C go with them."""
        if index is None:
            self.openers.clear()
        else:
            self.openers.pop(index, None)
        if _fast is not None:
            _fast.openers_changed()


class _Local(threading.local):
    """The host's per-thread state (None until the thread's VMs start)."""

    state: _ThreadState | None = None


class _Releaser:
    """Frees a thread's VMs when the thread ends: thread-local values are released on their
    own thread, the only one allowed to touch its stores."""

    def __init__(self, host: "Host", state: _ThreadState) -> None:
        self._host = weakref.ref(host)
        self._state = state

    def __del__(self) -> None:
        host = self._host()
        if host is None or sys.is_finalizing():
            return
        try:
            host._teardown_state(self._state, 0.0)
        except Exception:  # noqa: BLE001 - a finalizer must not raise
            logging.getLogger("pyproxywasm").exception("releasing a thread's VMs failed")


if TYPE_CHECKING:  # one static base for the type checker; at run time, the C one if built
    _PluginBase = object
else:
    _PluginBase = _fast.PluginBase if _fast is not None else object


class Plugin(_PluginBase):
    """A configured plugin, host-wide. Its root context on the calling thread is
    `instance()`; the members below act on that instance.

    http_stream() is a C method of pyproxywasm._fast.PluginBase when the extension is
    built: the calling thread's Opener makes the stream with no Python frame; whatever it
    does not take goes to _http_stream, the general path."""

    def __init__(self, host: "Host", config: PluginConfig, index: int) -> None:
        self.host = host
        self.config = config
        self.index = index
        self._local = host._local  # (PluginBase's http_stream reads the state from it)
        self._reload = config.failure_policy is FailurePolicy.FAIL_RELOAD

    def instance(self) -> RootContext:
        return self.host._instance(self)

    # The calling thread's root context, for the common case of one thread.
    @property
    def vm(self) -> Vm:
        return self.instance().vm

    @property
    def context_id(self) -> int:
        return self.instance().context_id

    @property
    def logger(self) -> logging.Logger:
        return self.instance().logger

    @property
    def tick_period_ms(self) -> int:
        return self.instance().tick_period_ms

    if _fast is None or TYPE_CHECKING:
        def http_stream(self, properties: Mapping[Any, Any] | None = None) -> HttpStream:
            """A new HTTP stream through this plugin on the calling thread."""
            # The hot path of a host: this thread's Opener for the plugin makes the stream;
            # anything it does not take (properties, a FAIL_RELOAD plugin, dropped streams
            # to end, logging reconfigured, no opener yet) takes the general path.
            st = self._local.state
            if st is not None and properties is None:
                opener = st.openers.get(self.index)
                if opener is not None:
                    stream = opener()
                    if stream is not None:
                        return stream
            return self._http_stream(st, properties)

    def _http_stream(self, st: _ThreadState | None, properties: Mapping[Any, Any] | None) -> HttpStream:
        root: RootContext | None = st.roots.get(self.index) if st is not None else None
        if root is None:
            root = self.instance()
            st = self.host._local.state
        if self._reload:
            if lib.pw_vm_failed(root.vm.ptr):
                root = self.host._reload_vm(self, root)
            root.vm.streams += 1
        elif st is not None and root is st.roots.get(self.index) and self.index not in st.openers:
            opener = root.opener()
            if opener is not None:
                st.openers[self.index] = opener
        if root.vm.dropped:
            root.vm.finish_dropped()
        if not root.logger._cache:  # type: ignore[attr-defined]  # the level cache
            root.sync_log_level()
        return HttpStream(root, properties)

    def tcp_stream(self, properties: Mapping[Any, Any] | None = None) -> TcpStream:
        root = self.instance()
        if self._reload:
            if lib.pw_vm_failed(root.vm.ptr):
                root = self.host._reload_vm(self, root)
            root.vm.streams += 1
        return root.tcp_stream(properties)

    def tick(self) -> None:
        self.instance().tick()

    def call_foreign(self, function_id: int, args: bytes = b"") -> None:
        self.instance().call_foreign(function_id, args)

    def property(self, path: props.Path, context_id: int | None = None) -> bytes | None:
        return self.instance().property(path, context_id)

    def sync_log_level(self) -> None:
        self.instance().sync_log_level()

    def close(self) -> bool:
        return self.instance().close()


class Host:
    """Plugins, and the VMs that run them on each thread."""

    def __init__(
        self,
        plugins: Iterable[PluginConfig] = (),
        *,
        concurrency: int = 0,
        properties: Mapping[Any, Any] | None = None,
        foreign_functions: Mapping[str, Callable[[bytes], bytes | None]] | None = None,
        clock_ns: int = 0,
        cache_dir: str | None = "default",
        buffer_limit: int = lib.PW_DEFAULT_BUFFER_LIMIT,
        manual_dispatch: bool = False,
        clusters: Iterable[Cluster] = (),
        max_calls_in_flight: int = lib.PW_DEFAULT_MAX_CALLS,
        io_loop: Any = None,
        call_recorder: Recorder | None = None,
        limits: Limits | None = None,
        namespace: str = "",
        filter_state_keys: Iterable[str] = (),
        on_vm: Callable[["Vm"], None] | None = None,
        shared_state: Backend | Mapping[str, Backend] | None = None,
    ) -> None:
        """concurrency: worker threads to start (0: streams run on the callers' threads).
        clock_ns: a virtual clock for every VM (0: real time). cache_dir: where compiled
        modules are kept ("default": the user cache directory; None: no cache).
        buffer_limit: body bytes a stream may hold per direction while its plugin pauses
        (Envoy's default, 1 MiB); past it the stream ends with 413 (request) or 500. It also
        bounds an outbound call's request body (BAD_ARGUMENT past it).
        manual_dispatch: events are delivered only by dispatch() (the testing harness); with
        workers, each worker's only when a job runs host.dispatch() there (on_threads).
        clusters: the upstreams plugins may call (proxy_http_call, proxy_grpc_*); a name
        that is none of them is an unknown cluster, as in Envoy. max_calls_in_flight: per
        VM; past it a call answers INTERNAL_FAILURE. io_loop: the pyproxywasm.net.IoLoop
        the calls run on (default: the process's, started on first use). call_recorder:
        where calls to clusters that are not real go (the testing harness).
        limits: caps on what a plugin can make the host hold (pyproxywasm.limits.Limits).
        namespace: whose shared data, shared queues and metrics the VMs use. Hosts with
        the same namespace share them; the default "" is the process-wide one (as in
        Envoy, where every VM of a process shares them). `host.state` reads them.
        properties: what plugins read with proxy_get_property, over Envoy's defaults
        (pyproxywasm.envoy_properties). filter_state_keys: keys set_envoy_filter_state
        accepts beyond Envoy's own (pyproxywasm.builtins). on_vm: called with each new
        VM, on its thread, before any plugin starts in it (to turn its trace on, say).
        shared_state: where the namespace's shared data and queues live
        (pyproxywasm.backends: InProcess, the default; SharedMemory for several processes
        of one machine; Redis for several machines), or a mapping vm_id → backend with
        "*" for the other vm_ids. A backend's max_bytes defaults to
        limits.shared_data_bytes."""
        self._on_vm = on_vm
        self.namespace = namespace
        self.state = SharedState(namespace)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 0:
            raise ConfigError(f"concurrency must be an int >= 0, not {concurrency!r}")
        if not isinstance(buffer_limit, int) or buffer_limit < 0:
            raise ConfigError(f"buffer_limit must be an int >= 0, not {buffer_limit!r}")
        self._limits = limits or Limits()
        lib.pw_queue_set_max_bytes(self._limits.queue_bytes)
        self._log = logging.getLogger("pyproxywasm.host")
        # FAIL_RELOAD and failure counters per plugin name: vm_failures, vm_reloads.
        self.failure_stats: dict[str, dict[str, int]] = {}
        self.outbound = Outbound(clusters, recorder=call_recorder, io=io_loop)
        self._max_calls = max_calls_in_flight
        self._buffer_limit = buffer_limit
        self._clock_ns = clock_ns
        self._cache_dir = cache_dir
        self._manual = manual_dispatch
        self._host_properties = list(props.flatten(with_defaults(properties)))
        self.builtins = Builtins(filter_state_keys)
        self._foreign = [ForeignFunction(n, f) for n, f in (foreign_functions or {}).items()]
        self._local = _Local()
        self._states: list[tuple[int, _ThreadState]] = []
        self._lock = threading.Lock()  # guards _states and plugins across threads
        self._closed = False
        self.plugins: list[Plugin] = []
        self.workers: list[Worker] = []
        self._main: Worker | None = None
        self._main_thread = threading.get_ident()
        for p in plugins:
            self._add(p)
        # Last before the VMs, so that a bad argument above attaches nothing (close() lets
        # go of what is attached here); a VM looks its scope's backend up once, when made.
        self.backends = attach_all(namespace, shared_state, self._limits.shared_data_bytes)
        lib.pw_namespace_acquire(namespace.encode(), len(namespace.encode()))
        try:
            if concurrency > 0:
                # Services first, so they are up before workers take traffic.
                self._main = Worker("pyproxywasm-main", self._setup_main, self._teardown,
                                    manual=manual_dispatch)
                self._main.start()
                for i in range(concurrency):
                    w = Worker(f"pyproxywasm-worker-{i}", self._setup_worker, self._teardown,
                               manual=manual_dispatch)
                    w.start()
                    self.workers.append(w)
            else:
                self._state()  # the calling thread is the main thread: start everything here
        except BaseException:
            self.close()
            raise

    # ---- threads and their VMs ----------------------------------------------------------
    def _is_main(self) -> bool:
        return threading.get_ident() == self._main_thread

    def _state(self, dispatcher: Dispatcher | None = None) -> _ThreadState:
        """The calling thread's VMs and roots, created (and every plugin started) on first use."""
        st = self._local.state
        if st is None:
            if self._closed:
                raise HostClosedError("the host is closed")
            owns = dispatcher is None
            if dispatcher is None:
                if self._closed:
                    raise HostClosedError("the host is closed")
                dispatcher = Dispatcher(autorun=not self._manual)
            st = self._local.state = _ThreadState(dispatcher, owns)
            if owns:  # a thread of the caller's: its VMs go when it ends, if not before
                self._local.releaser = _Releaser(self, st)
            with self._lock:
                self._states.append((threading.get_ident(), st))
            vm_thread(threading.get_ident(), 1)
            try:
                for plugin in list(self.plugins):
                    self._start(plugin, st)
            except BaseException:
                self._teardown_state(st, 0.0)
                raise
        return st

    def _setup_worker(self, dispatcher: Dispatcher) -> None:
        self._state(dispatcher)

    def _setup_main(self, dispatcher: Dispatcher) -> None:
        self._main_thread = threading.get_ident()
        self._state(dispatcher)

    def _runs_here(self, plugin: Plugin) -> bool:
        return self._is_main() if plugin.config.singleton else not (self._main and self._is_main())

    def _start(self, plugin: Plugin, st: _ThreadState) -> RootContext | None:
        if not self._runs_here(plugin):
            return None
        root = RootContext(plugin.config, self._vm_for(plugin.config.vm_config, st))
        st.roots[plugin.index] = root
        return root

    def _vm_for(self, vm_config: VmConfig, st: _ThreadState) -> Vm:
        code = vm_config.code_bytes()
        key = vm_config.key(code)
        vm = st.vms.get(key)
        if vm is None:
            compiled = compile_module(code, self._cache_dir)
            vm = self._new_vm(compiled, vm_config, st)
            st.vms[key] = vm
        return vm

    def _new_vm(self, compiled: CompiledModule, vm_config: VmConfig, st: _ThreadState) -> Vm:
        vm = Vm(compiled, vm_config, st.dispatcher, self._host_properties, self._clock_ns,
                self._buffer_limit, self._limits, self.namespace)
        for ff in self.builtins.for_vm(vm) + self._foreign:  # the host's own win
            vm.register_foreign(ff)
        if self._on_vm is not None:
            self._on_vm(vm)
        if self.outbound.clusters or self.outbound.recorder is not None or self._any_host():
            vm.calls = VmCalls(self.outbound, vm.ptr, st.dispatcher,
                               functools.partial(self._allows_any_host, st), self._buffer_limit)
            lib.pw_vm_set_callouts(vm.ptr, vm.calls.handle, self._max_calls)
        return vm

    def _reload_vm(self, plugin: Plugin, root: RootContext) -> RootContext:
        """FAIL_RELOAD, on the calling thread: once per failed VM, count and log the
        failure and choose the backoff; once the backoff has passed (and the budget
        allows), replace the VM with a new one from the compiled module and start every
        root it had. Until then the failed VM answers (503 wasm_fail_stream)."""
        st = self._state()
        old = root.vm
        key = next((k for k, v in st.vms.items() if v is old), None)
        if key is None:
            return root
        state = st.reload.get(key)
        if state is None:
            state = st.reload[key] = ReloadState(plugin.config.reload)
        name = plugin.config.display_name
        stats = self.failure_stats.setdefault(name, {"vm_failures": 0, "vm_reloads": 0})
        if not old.failure_recorded:
            old.failure_recorded = True
            backoff = state.record_failure(old.streams)
            stats["vm_failures"] += 1
            self._log.warning("plugin %r: VM failed (%s); FAIL_RELOAD in %.3f s (failure %d "
                              "in a row, %d reloads so far)", name, old.error, backoff,
                              state.failures, state.reloads)
        if not state.may_reload():
            return root
        state.reloaded()
        try:
            new = self._new_vm(old.compiled, old.vm_config, st)
            new.generation = old.generation + 1
        except ProxyWasmError as e:
            state.record_failure()
            self._log.warning("plugin %r: FAIL_RELOAD could not start a new VM: %s", name, e)
            return root
        roots: dict[int, RootContext] = {}
        try:
            for i, r in st.roots.items():
                if r.vm is old:
                    roots[i] = RootContext(self.plugins[i].config, new)
        except ProxyWasmError as e:
            new.close()
            state.record_failure()
            self._log.warning("plugin %r: FAIL_RELOAD could not start the plugins: %s", name, e)
            return root
        st.roots.update(roots)
        st.drop_openers()
        st.vms[key] = new
        stats["vm_reloads"] += 1
        self._log.warning("plugin %r: reloaded its VM (reload %d)", name, state.reloads)
        old.close()
        return st.roots[plugin.index]

    def _any_host(self) -> bool:
        return any(p.config.allow_any_host for p in self.plugins)

    @staticmethod
    def _allows_any_host(st: _ThreadState, root_id: int) -> bool:
        return any(r.context_id == root_id and r.config.allow_any_host for r in st.roots.values())

    def _instance(self, plugin: Plugin) -> RootContext:
        st = self._state()
        root = st.roots.get(plugin.index)
        if root is None and plugin in self.plugins and self._runs_here(plugin):
            root = self._start(plugin, st)  # added after this thread's VMs started
        if root is None:
            if plugin.config.singleton:
                raise ProxyWasmError(f"plugin {plugin.config.display_name!r} is a singleton "
                                     "service: it runs on the host's main thread only")
            raise ProxyWasmError(f"plugin {plugin.config.display_name!r} does not run on this thread")
        return root

    def _teardown_state(self, st: _ThreadState, timeout: float) -> None:
        """On the owner thread: on_done for every root (waiting up to `timeout` for those
        that defer with proxy_done, while their ticks and notifications still run), then
        the VMs go."""
        pending = []
        for r in st.roots.values():
            try:
                if not r.vm.failed and not r.close():
                    pending.append(r)
            except ProxyWasmError:
                pass  # a root whose VM fails in on_done is done
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            wait = st.dispatcher.next_timeout()
            time.sleep(min(wait if wait is not None else 0.01, 0.01, max(0.0, deadline - time.monotonic())))
            st.dispatcher.run()
            pending = [r for r in pending if not r.close()]
        for vm in st.vms.values():
            if vm.ptr is not None:
                self.builtins.forget_vm(lib.pw_vm_key(vm.ptr))
            vm.close()
        for r in st.roots.values():  # VMs replaced by FAIL_RELOAD are closed already
            r.vm.close()
        st.vms.clear()
        st.roots.clear()
        st.drop_openers()
        if st.owns_dispatcher:
            st.dispatcher.close()
        with self._lock:
            gone = [t for t, s in self._states if s is st]
            self._states = [(t, s) for t, s in self._states if s is not st]
        for t in gone:
            vm_thread(t, -1)

    def _teardown(self, dispatcher: Dispatcher, timeout: float) -> None:
        st = self._local.state
        if st is not None:
            self._teardown_state(st, timeout)
            self._local.state = None

    # ---- plugins ---------------------------------------------------------------------------
    def _add(self, config: PluginConfig) -> Plugin:
        plugin = Plugin(self, config, len(self.plugins))
        with self._lock:
            self.plugins.append(plugin)
        return plugin

    def add_plugin(self, config: PluginConfig) -> Plugin:
        """Adds a plugin: started now on the workers, the main thread and the calling
        thread, and on first use on any other thread that has VMs of this host. If it
        fails to start anywhere now, it is removed again (and the error raised), so no
        later thread trips over it."""
        if self._closed:
            raise HostClosedError("the host is closed")
        plugin = self._add(config)
        started: list[Worker | None] = []
        try:
            for w in ([self._main] if self._main else []) + self.workers:
                w.call(self._start_here, plugin).result()
                started.append(w)
            st = self._local.state
            if st is not None:
                self._start(plugin, st)
                started.append(None)
        except BaseException:
            with self._lock:
                self.plugins.remove(plugin)
            for started_on in started:
                try:
                    if started_on is None:
                        self._stop_here(plugin)
                    else:
                        started_on.call(self._stop_here, plugin).result()
                except Exception:  # noqa: BLE001 - the start error is the one to raise
                    pass
            raise
        return plugin

    def _stop_here(self, plugin: Plugin) -> None:
        st = self._local.state
        root = st.roots.pop(plugin.index, None) if st is not None else None
        if st is not None:
            st.drop_openers(plugin.index)  # (the root's Opener goes with it)
        if root is not None and not root.vm.failed:
            root.close()

    def _start_here(self, plugin: Plugin) -> None:
        self._start(plugin, self._state())

    def register_foreign_function(self, name: str, fn: Callable[[bytes], bytes | None]) -> None:
        """Makes fn callable by plugins on VMs created from now on (and this thread's)."""
        ff = ForeignFunction(name, fn)
        self._foreign.append(ff)
        st = self._local.state
        for vm in st.vms.values() if st else ():
            vm.register_foreign(ff)

    def plugin(self, name: str) -> Plugin:
        for p in self.plugins:
            if name in (p.config.name, p.config.root_id):
                return p
        raise KeyError(name)

    @property
    def main_worker(self) -> Worker | None:
        """The thread that runs the singleton services when concurrency > 0."""
        return self._main

    def on_threads(self, fn: Callable[[], T]) -> list[T]:
        """Runs fn on every thread that has this host's VMs, one after the other, and
        returns its results in that order: the main worker, the workers, then the calling
        thread (when it has VMs of its own, or there are no workers)."""
        out = [w.call(fn).result() for w in ([self._main] if self._main else []) + self.workers]
        if self._local.state is not None or not out:
            out.append(fn())
        return out

    @property
    def vms(self) -> list[Vm]:
        """The calling thread's VMs."""
        return list(self._state().vms.values())

    @property
    def dispatcher(self) -> Dispatcher:
        """The calling thread's dispatcher (for an event loop: add_reader on its fileno)."""
        return self._state().dispatcher

    def set_clock(self, now_ns: int) -> None:
        """Puts the calling thread's VMs on a virtual clock at now_ns (0: real clocks)."""
        self._clock_ns = now_ns
        for vm in self._state().vms.values():
            vm.set_clock(now_ns)

    def dispatch(self) -> int:
        """Delivers, on the calling thread, its pending queue notifications and due ticks."""
        return self._state().dispatcher.run()

    def release_thread(self, timeout: float = 5.0) -> None:
        """Shuts down the calling thread's VMs now (otherwise they go when it ends)."""
        st = self._local.state
        if st is not None:
            self._teardown_state(st, timeout)
            self._local.state = None
            self._local.releaser = None

    def close(self, timeout: float = 5.0) -> None:
        """Stops the workers (they finish their jobs and events, then shut their plugins
        down), then the main thread's services, then this thread's VMs — all within
        `timeout` seconds: a guest still running then is interrupted (it traps), and a
        thread that still does not end is left behind (daemon) rather than waited for.
        Called from inside a worker job, that worker ends once the job returns."""
        if self._closed:
            return
        self._closed = True
        end = time.monotonic() + max(0.0, timeout)
        for w in self.workers + ([self._main] if self._main is not None else []):
            w.stop(max(0.0, end - time.monotonic()), self._interrupt_thread)
        self.release_thread(max(0.0, end - time.monotonic()))
        # Outbound clients: what is left of the timeout (their calls are cancelled).
        self.outbound.close(min(max(end - time.monotonic(), 0.0), 5.0))
        # VMs left behind (threads stuck outside Wasm) keep their own references.
        self.backends.close()
        ns = self.namespace.encode()
        lib.pw_namespace_release(ns, len(ns))

    def _interrupt_thread(self, ident: int | None) -> None:
        """Interrupts every VM of one thread (from any thread)."""
        with self._lock:
            states = [s for t, s in self._states if t == ident]
        for s in states:
            for vm in list(s.vms.values()) + [r.vm for r in list(s.roots.values())]:
                vm.interrupt()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
