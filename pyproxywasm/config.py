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
    return value.encode() if isinstance(value, str) else bytes(value)


@dataclass(frozen=True)
class VmConfig:
    """Envoy's vm_config: vm_id, runtime, configuration and code (bytes or a .wasm path)."""

    code: bytes | str | os.PathLike[str]
    vm_id: str = ""
    runtime: str = "envoy.wasm.runtime.wasmtime"
    configuration: Bytes = b""
    environment_variables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.runtime!r}; expected one of {', '.join(RUNTIMES)}")
        for k, v in self.environment_variables.items():
            if "=" in k or "\0" in k or "\0" in v:
                raise ConfigError(f"invalid environment variable {k!r}")

    def code_bytes(self) -> bytes:
        return read_code(self.code)

    def key(self, code: bytes) -> tuple:
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
    allow_any_host: beyond Envoy, off by default: an outbound call to "host:port" that
    names no cluster goes to that address directly (plain HTTP)."""

    vm_config: VmConfig
    name: str = ""
    root_id: str = ""
    configuration: Bytes = b""
    singleton: bool = False
    allow_any_host: bool = False

    @property
    def display_name(self) -> str:
        return self.name or self.root_id or "plugin"
