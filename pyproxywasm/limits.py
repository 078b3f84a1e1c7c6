"""Caps on what an untrusted plugin can make the host spend or hold.

A guest must never take the process down, wedge a thread or grow memory without bound.
Each cap below has a documented default; past it the guest gets an ABI status (or a
failed memory.grow), or the call traps and the plugin's failure policy decides what its
streams see — the process never grows without bound. Fixed caps that are not settings:
a header map holds at most 8,192 entries and 16 MiB (adding past that answers
INTERNAL_FAILURE); one shared queue holds at most 1,048,576 items; one vm_id's shared data
in the in-process backend holds at most 1,048,576 keys (a new key past that answers
INTERNAL_FAILURE: shared_data_bytes counts keys and values, not each key's own cost; the
shared-memory backend is bounded by its segment, Redis by the server).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-VM and per-vm_id caps (0 turns a cap off).

    memory_bytes: a VM's linear memory (wasmtime's store limiter); memory.grow past it
        returns -1, as if the machine were out of memory. Default 512 MiB.
    body_bytes: the largest body buffer a guest can build with proxy_set_buffer_bytes
        (INTERNAL_FAILURE past it). Default 64 MiB.
    log_bytes: the longest log message or WASI output line kept; longer ones are cut, and
        one WASI fd_write takes at most this many bytes (a short write). Default 64 KiB.
    queue_bytes: bytes waiting in one vm_id's shared queues, all of them together (a guest
        may create 1,024 queues; INTERNAL_FAILURE past it; in-process backend; process-wide,
        the last host created sets it). Default 64 MiB.
    shared_data_bytes: keys and values in one vm_id's shared data (INTERNAL_FAILURE past
        it), per scope (namespace, vm_id): the default of every backend's max_bytes
        (pyproxywasm.backends). Default 64 MiB.
    startup_ms: the deadline of a VM's start-up (a start function, _initialize, main):
        past it the VM fails to start. Default 5,000 ms (the Go runtime starts in ~1 ms).
    """

    memory_bytes: int = 512 * MiB
    body_bytes: int = 64 * MiB
    log_bytes: int = 64 * 1024
    queue_bytes: int = 64 * MiB
    shared_data_bytes: int = 64 * MiB
    startup_ms: int = 5000

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "body_bytes", "log_bytes", "queue_bytes", "shared_data_bytes",
                     "startup_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"Limits.{name} must be a non-negative int, not {value!r}")
        if self.log_bytes > 2**32 - 1 or self.startup_ms > 2**32 - 1:
            raise ConfigError("Limits.log_bytes and startup_ms must fit in 32 bits")
