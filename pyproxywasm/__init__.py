"""pyproxywasm: a Proxy-Wasm host for Python.

Runs Envoy Wasm filters (built with the Go, Rust, C++ or AssemblyScript SDKs) from Python
on a C core over wasmtime. Start with `Host` and `PluginConfig`, or with
`pyproxywasm.testing.PluginHarness` to test a plugin under pytest.
"""
from .abi import Status, StreamFlags
from .config import PluginConfig, VmConfig
from .errors import (ConfigError, HostClosedError, InvalidHeaderError, ModuleError,
                     PluginStartError, ProxyWasmError, ReentrantCallError, StreamClosedError,
                     StreamStateError, ThreadStackError, VmFailedError, WrongThreadError)
from .host import Host, Plugin, Vm
from .http import Action, HttpStream, LocalResponse
from .limits import Limits
from .pairs import Headers
from .policy import FailureOutcome, FailurePolicy, ReloadPolicy
from .state import SharedValue
from .tcp import PeerType, TcpStream

__all__ = [
    "Action", "ConfigError", "FailureOutcome", "FailurePolicy", "Headers", "Host",
    "HostClosedError", "HttpStream", "InvalidHeaderError", "Limits", "LocalResponse",
    "ModuleError", "PeerType", "Plugin", "PluginConfig", "PluginStartError", "ProxyWasmError",
    "ReentrantCallError", "ReloadPolicy", "SharedValue", "Status", "StreamClosedError",
    "StreamFlags", "StreamStateError", "TcpStream", "ThreadStackError", "Vm", "VmConfig",
    "VmFailedError", "WrongThreadError",
]
