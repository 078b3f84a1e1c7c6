"""Configuration of VMs and plugins, in Envoy's terms.

A plugin (Envoy's PluginConfig) names a root_id and carries its own configuration; its
vm_config says which code runs and how. Plugins whose vm_config is identical share one VM
(per thread), each with its own root context, exactly as Envoy shares VMs.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Mapping, Union

from .errors import ConfigError
from .module import read_code
from .policy import FailurePolicy, ReloadPolicy

def _default_deadline() -> int:
    """100 ms of guest CPU per callback; PYPROXYWASM_DEADLINE_MS changes the default (a
    sanitizer build runs guests and hostcalls many times slower)."""
    try:
        return int(os.environ.get("PYPROXYWASM_DEADLINE_MS", "100"))
    except ValueError:
        return 100


DEFAULT_DEADLINE_MS = _default_deadline()

Bytes = Union[bytes, str]

# Envoy's runtime names. Every one of them runs on wasmtime here; the name is kept because
# it is part of the VM's identity in Envoy (two configs that differ in runtime never share).
RUNTIMES = (
    "envoy.wasm.runtime.wasmtime",
    "envoy.wasm.runtime.v8",
    "envoy.wasm.runtime.wamr",
    "envoy.wasm.runtime.wavm",
)


def as_bytes(value: Bytes) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    # bytes(5) would be five NUL bytes: a configuration is text or bytes, nothing else.
    raise ConfigError(f"a configuration must be str or bytes, not {type(value).__name__}")


@dataclass(frozen=True)
class VmConfig:
    """Envoy's vm_config: vm_id, runtime, configuration and code (bytes or a .wasm path)."""

    code: bytes | str | os.PathLike[str]
    vm_id: str = ""
    runtime: str = "envoy.wasm.runtime.wasmtime"
    configuration: Bytes = b""
    environment_variables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        as_bytes(self.configuration)  # refuses anything but str / bytes now, not at start
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.runtime!r}; expected one of {', '.join(RUNTIMES)}")
        for k, v in self.environment_variables.items():
            if "=" in k or "\0" in k or "\0" in v:
                raise ConfigError(f"invalid environment variable {k!r}")

    def code_bytes(self) -> bytes:
        return read_code(self.code)

    def key(self, code: bytes) -> tuple[object, ...]:
        """The identity Envoy shares VMs by: everything in vm_config, with the code hashed."""
        env = tuple(sorted(self.environment_variables.items()))
        return (self.vm_id, self.runtime, as_bytes(self.configuration),
                hashlib.sha256(code).hexdigest(), env)

    def environ(self) -> bytes:
        return b"".join(f"{k}={v}".encode() + b"\0" for k, v in self.environment_variables.items())


@dataclass(frozen=True)
class PluginConfig:
    """Envoy's PluginConfig: a name, a root_id, its configuration, and the VM it runs in.

    singleton: a Wasm service (Envoy's `singleton: true`): one instance, on the host's main
    dispatcher thread, instead of one per thread that runs streams.
    deadline_ms: how long one callback of this plugin (with the guest calls it makes) may
    run before it traps (None or 0: no deadline); the VM then fails and failure_policy
    decides what streams see (see pyproxywasm.policy). reload: FAIL_RELOAD's backoff.
    allow_any_host: beyond Envoy, off by default: an outbound call to "host:port" that
    names no cluster goes to that address directly (plain HTTP)."""

    vm_config: VmConfig
    name: str = ""
    root_id: str = ""
    configuration: Bytes = b""
    singleton: bool = False
    allow_any_host: bool = False
    deadline_ms: int | None = DEFAULT_DEADLINE_MS
    failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED
    reload: ReloadPolicy = field(default_factory=ReloadPolicy)

    def __post_init__(self) -> None:
        as_bytes(self.configuration)
        if self.deadline_ms is not None and (
                not isinstance(self.deadline_ms, int) or isinstance(self.deadline_ms, bool)
                or not 0 <= self.deadline_ms < 2**32):
            raise ConfigError(f"deadline_ms must be an int of milliseconds or None, not {self.deadline_ms!r}")
        if isinstance(self.failure_policy, str):
            try:
                object.__setattr__(self, "failure_policy", FailurePolicy(self.failure_policy))
            except ValueError:
                raise ConfigError(f"unknown failure_policy {self.failure_policy!r}") from None
        if not isinstance(self.failure_policy, FailurePolicy):
            raise ConfigError(f"unknown failure_policy {self.failure_policy!r}")

    @property
    def display_name(self) -> str:
        """Names the plugin in logs (logger pyproxywasm.plugin.<this>): its name, else its
        root_id, else its vm_id, else "plugin"."""
        return self.name or self.root_id or self.vm_config.vm_id or "plugin"
