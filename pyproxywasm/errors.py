"""The exceptions pyproxywasm raises."""
from __future__ import annotations


class ProxyWasmError(Exception):
    """Base class of every pyproxywasm error."""


class ModuleError(ProxyWasmError):
    """A module cannot be used as a Proxy-Wasm plugin (format, ABI, exports, imports)."""


class PluginStartError(ProxyWasmError):
    """A plugin failed to start: on_vm_start or on_configure returned false, or trapped."""


class VmFailedError(ProxyWasmError):
    """The VM trapped earlier; like Envoy, it runs no more callbacks."""


class ConfigError(ProxyWasmError):
    """Malformed host or plugin configuration."""


class WrongThreadError(ProxyWasmError):
    """A VM was used from a thread other than the one that owns it."""
