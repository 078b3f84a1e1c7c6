"""The exceptions pyproxywasm raises.

Every C-core result code maps to one class here, through one function
(`pyproxywasm._binding.raise_for`), so a caller's mistake always ends in a clear exception
of a documented type:

    ProxyWasmError
    ├── ModuleError            the module cannot be a Proxy-Wasm plugin
    ├── PluginStartError       on_vm_start / on_configure refused or trapped
    ├── ConfigError            malformed host or plugin configuration (also a ValueError)
    ├── VmFailedError          the VM trapped (or ran past its deadline); no more callbacks
    ├── HostClosedError        the host (or this thread's VMs) was closed; the handle is stale
    ├── StreamClosedError      the stream or context is finished (or was never there)
    ├── StreamStateError       an event out of order for this stream
    ├── InvalidHeaderError     not a (name, value) pair; empty name; NUL, CR or LF
    ├── WrongThreadError       the VM belongs to another thread
    │   └── ReentrantCallError called from inside one of the VM's own callbacks
    └── ThreadStackError       this thread's stack cannot hold a guest call
"""
from __future__ import annotations


class ProxyWasmError(Exception):
    """Base class of every pyproxywasm error."""


class ModuleError(ProxyWasmError):
    """A module cannot be used as a Proxy-Wasm plugin (format, ABI, exports, imports)."""


class PluginStartError(ProxyWasmError):
    """A plugin failed to start: on_vm_start or on_configure returned false, or trapped."""


class VmFailedError(ProxyWasmError):
    """The VM trapped earlier; like Envoy, it runs no more callbacks."""


class ConfigError(ProxyWasmError, ValueError):
    """Malformed host or plugin configuration."""


class InvalidHeaderError(ProxyWasmError, ValueError):
    """A header that is not a (name, value) pair, or an empty name, NUL, CR or LF."""


class HostClosedError(ProxyWasmError):
    """The host (or the VM behind this handle) was closed: the object is stale."""


class StreamClosedError(ProxyWasmError):
    """The stream or context is finished (or its id was never known to the VM)."""


class StreamStateError(ProxyWasmError):
    """An event out of order for this stream (body before headers, data after the end)."""


class WrongThreadError(ProxyWasmError):
    """A VM was used from a thread other than the one that owns it."""


class ReentrantCallError(WrongThreadError):
    """A VM was called from inside one of its own callbacks (a log handler, say)."""


class ThreadStackError(ProxyWasmError):
    """The calling thread's stack has no room for a guest call (threading.stack_size)."""
