"""The host: plugins, the VMs they run in, and the streams pushed through them.

A Host owns VMs keyed by vm_config (Envoy's sharing rule) and the plugins (root contexts)
started in them. Every call into the C core is one cffi call per ABI event, made with the
GIL released. The VMs of a Host belong to the thread that created it (a store is only
ever touched by its own thread); calls from another thread raise WrongThreadError.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

from . import properties as props
from ._binding import ERRORS, ForeignFunction, LogTarget, ffi, lib, proxy_level, raise_for
from .config import PluginConfig, VmConfig, as_bytes
from .errors import PluginStartError, ProxyWasmError
from .http import HttpStream
from .module import CompiledModule, compile_module
from .tcp import TcpStream

class Vm:
    """One instance of a module, owned by the thread that created it."""

    def __init__(self, compiled: CompiledModule, vm_config: VmConfig, host_properties) -> None:
        self.compiled = compiled
        self.vm_config = vm_config
        self.abi_version = compiled.spec.abi_version
        self._log = LogTarget(logging.getLogger(f"pyproxywasm.vm.{vm_config.vm_id or 'default'}"))
        self._foreign: list[ForeignFunction] = []
        vm_id = vm_config.vm_id.encode()
        cfg = as_bytes(vm_config.configuration)
        env = vm_config.environ()
        err = ffi.new("char[1024]")
        ptr = lib.pw_vm_new(compiled.ptr, vm_id, len(vm_id), cfg, len(cfg), env, len(env),
                            self._log.handle, err, 1024)
        if ptr == ffi.NULL:
            raise PluginStartError("cannot start the VM: " + ffi.string(err).decode(errors="replace"))
        self.ptr = ptr
        # Out-parameters reused by every call on this VM (all from its owner thread).
        self.u32 = ffi.new("uint32_t *")
        self.out = ffi.new("const uint8_t **")
        self.out_len = ffi.new("size_t *")
        for path, value in host_properties:
            lib.pw_set_host_property(ptr, 0, path, len(path), value, len(value))

    @property
    def failed(self) -> bool:
        return bool(lib.pw_vm_failed(self.ptr))

    @property
    def error(self) -> str:
        return ffi.string(lib.pw_vm_error(self.ptr)).decode(errors="replace")

    def register_foreign(self, ff: ForeignFunction) -> None:
        name = ff.name.encode()
        if lib.pw_vm_register_foreign(self.ptr, name, len(name), ff.handle) != lib.PW_OK:
            raise ProxyWasmError(f"cannot register foreign function {ff.name!r}")
        self._foreign.append(ff)

    def dispatch(self) -> int:
        """Runs what is due on this VM: queue notifications, then due ticks."""
        n = lib.pw_vm_dispatch(self.ptr)
        if n < 0:
            raise_for(n, self)
        return n

    def set_clock(self, now_ns: int) -> None:
        lib.pw_vm_set_clock(self.ptr, now_ns)

    def next_tick_in_ns(self) -> int | None:
        n = lib.pw_vm_next_tick_in(self.ptr)
        return None if n == 2**64 - 1 else n

    def close(self) -> None:
        if self.ptr is not None:
            lib.pw_vm_free(self.ptr)
            self.ptr = None


class Plugin:
    """A plugin: one root context in a VM, and the streams opened through it."""

    def __init__(self, config: PluginConfig, vm: Vm) -> None:
        self.config = config
        self.vm = vm
        self.logger = logging.getLogger(f"pyproxywasm.plugin.{config.display_name}")
        self._log = LogTarget(self.logger)
        name, root_id = config.name.encode(), config.root_id.encode()
        cfg = as_bytes(config.configuration)
        rc = lib.pw_root_new(vm.ptr, name, len(name), root_id, len(root_id), cfg, len(cfg),
                             self._log.handle, proxy_level(self.logger), vm.u32)
        self.context_id = vm.u32[0]
        self._sync_marker()
        self.closing = self.closed = False
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
        if not self.logger._cache:
            lib.pw_root_set_log_level(self.vm.ptr, self.context_id, proxy_level(self.logger))
            self._sync_marker()

    @property
    def tick_period_ms(self) -> int:
        return lib.pw_root_tick_period(self.vm.ptr, self.context_id)

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
        if not self.logger._cache:
            self.sync_log_level()
        return HttpStream(self, properties)

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


class Host:
    """Plugins and their VMs. Plugins with identical vm_config share one VM."""

    def __init__(
        self,
        plugins: Iterable[PluginConfig] = (),
        *,
        properties: Mapping[Any, Any] | None = None,
        foreign_functions: Mapping[str, Callable[[bytes], bytes | None]] | None = None,
        clock_ns: int = 0,
    ) -> None:
        self._clock_ns = clock_ns
        self._host_properties = list(props.flatten(properties or {}))
        self._foreign = [ForeignFunction(n, f) for n, f in (foreign_functions or {}).items()]
        self._vms: dict[tuple, Vm] = {}
        self.plugins: list[Plugin] = []
        for p in plugins:
            self.add_plugin(p)

    def _vm_for(self, vm_config: VmConfig) -> Vm:
        code = vm_config.code_bytes()
        key = vm_config.key(code)
        vm = self._vms.get(key)
        if vm is None:
            vm = Vm(compile_module(code), vm_config, self._host_properties)
            if self._clock_ns:
                vm.set_clock(self._clock_ns)
            for ff in self._foreign:
                vm.register_foreign(ff)
            self._vms[key] = vm
        return vm

    def add_plugin(self, config: PluginConfig) -> Plugin:
        plugin = Plugin(config, self._vm_for(config.vm_config))
        self.plugins.append(plugin)
        return plugin

    def register_foreign_function(self, name: str, fn: Callable[[bytes], bytes | None]) -> None:
        ff = ForeignFunction(name, fn)
        self._foreign.append(ff)
        for vm in self._vms.values():
            vm.register_foreign(ff)

    def plugin(self, name: str) -> Plugin:
        for p in self.plugins:
            if name in (p.config.name, p.config.root_id):
                return p
        raise KeyError(name)

    @property
    def vms(self) -> list[Vm]:
        return list(self._vms.values())

    def set_clock(self, now_ns: int) -> None:
        """Puts every VM on a virtual clock at now_ns (0: back to the real clocks)."""
        self._clock_ns = now_ns
        for vm in self._vms.values():
            vm.set_clock(now_ns)

    def dispatch(self) -> int:
        """Delivers pending queue notifications and due ticks on every VM."""
        return sum(vm.dispatch() for vm in self._vms.values())

    def close(self) -> None:
        for p in self.plugins:
            if not p.vm.failed:
                p.close()
        for vm in self._vms.values():
            vm.close()
        self._vms.clear()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
