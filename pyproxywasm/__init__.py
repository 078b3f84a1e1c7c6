"""pyproxywasm: a Proxy-Wasm host for Python.

Runs Envoy Wasm filters (built with the Go, Rust, C++ or AssemblyScript SDKs) from Python
on a C core over wasmtime. Start with `Host` and `PluginConfig`, or with
`pyproxywasm.testing.PluginHarness` to test a plugin under pytest.
"""
from .abi import Status, StreamFlags
from .config import PluginConfig, VmConfig
from .errors import (ConfigError, ModuleError, PluginStartError, ProxyWasmError,
                     VmFailedError, WrongThreadError)
from .host import Host, Plugin, Vm
from .http import Action, HttpStream, LocalResponse
from .pairs import Headers
from .state import SharedValue
from .tcp import PeerType, TcpStream

__all__ = [
    "Action", "ConfigError", "Headers", "Host", "HttpStream", "LocalResponse", "ModuleError",
    "PeerType", "Plugin", "PluginConfig", "PluginStartError", "ProxyWasmError", "SharedValue",
    "Status", "StreamFlags", "TcpStream", "Vm", "VmConfig", "VmFailedError", "WrongThreadError",
]
