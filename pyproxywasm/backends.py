"""Where shared data and shared queues live: the backends a Host can choose.

A guest sees the same ABI on every backend (Envoy's CAS semantics, queue ids never 0,
one on_queue_ready per enqueued item on the owner VM's thread); what changes is who else
sees the state:

- InProcess: this process only (the default; the fastest: no indirection at all).
- SharedMemory: every process on this machine that opens the same segment name (gunicorn
  or uvicorn workers, `serve --processes N`).
- Redis: every process on every machine using the same server and prefix.

Every backend also offers, beyond the ABI, delete and TTL of shared-data keys and a byte
cap per scope (proxy-wasm spec issue 32): as the options below, to the embedding through
SharedState.delete/expire, and to plugins through the foreign functions
`delete_shared_data` and `expire_shared_data` (pyproxywasm.builtins).

`Host(shared_state=...)` takes one backend (for every vm_id of the host's namespace) or a
mapping vm_id → backend, "*" being the default for the other vm_ids. A host that chooses
nothing uses what another host of the process chose for the namespace, else in-process. Each class's
`_open(default_max_bytes)` returns the C core's handle; opened backends are shared by
equal configurations in one process (two hosts with SharedMemory("x") use one mapping).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Union

from ._binding import ffi, lib
from .errors import ConfigError

__all__ = ["Backend", "InProcess", "SharedMemory", "Redis", "BackendHandle", "attach_all"]


def _ttl_ms(ttl: float | None, what: str) -> int:
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
        raise ConfigError(f"{what}.default_ttl must be seconds >= 0 or None, not {ttl!r}")
    return max(1, round(ttl * 1000)) if ttl else 0


def _max_bytes(n: int | None, what: str, default: int) -> int:
    if n is None:
        return default
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{what}.max_bytes must be an int >= 0 or None, not {n!r}")
    return n


@dataclass(frozen=True)
class InProcess:
    """This process's own store. max_bytes: keys + values one scope (namespace, vm_id) may
    hold (None: the host's Limits.shared_data_bytes; 0: no cap); past it a write answers
    INTERNAL_FAILURE. default_ttl: seconds a key lives after its first write (None:
    forever; a plugin or SharedState.expire can change one key's TTL)."""

    max_bytes: int | None = None
    default_ttl: float | None = None

    def _open(self, default_max_bytes: int) -> Any:
        ptr = lib.pw_backend_inprocess(_max_bytes(self.max_bytes, "InProcess", default_max_bytes),
                                       _ttl_ms(self.default_ttl, "InProcess"))
        if ptr == ffi.NULL:
            raise MemoryError("cannot allocate an in-process backend")
        return ptr


_SHM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


@dataclass(frozen=True)
class SharedMemory:
    """A named POSIX shared-memory segment (/dev/shm/<name>) that every process of this
    machine opening the same name shares: one machine, many processes (gunicorn/uvicorn
    workers). size: the segment's bytes, fixed when the first process creates it; a write
    that does not fit answers INTERNAL_FAILURE (counted in `unavailable`). name: letters,
    digits, '_', '-', '.' (no '/'). max_bytes and default_ttl as InProcess, per scope."""

    name: str
    size: int = 64 << 20
    max_bytes: int | None = None
    default_ttl: float | None = None

    def _open(self, default_max_bytes: int) -> Any:
        if not isinstance(self.name, str) or not _SHM_NAME.fullmatch(self.name) \
                or self.name in (".", ".."):
            raise ConfigError(f"SharedMemory.name must be 1-200 of [A-Za-z0-9_.-], "
                              f"not {self.name!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or \
                not (1 << 20) <= self.size <= (1 << 40):
            raise ConfigError(f"SharedMemory.size must be an int from 1 MiB to 1 TiB, "
                              f"not {self.size!r}")
        open_fn = getattr(lib, "pw_shm_open", None)
        if open_fn is None:
            raise ConfigError("this build of pyproxywasm has no shared-memory backend")
        err = ffi.new("char[512]")
        name = self.name.encode()
        ptr = open_fn(name, len(name), self.size,
                      _max_bytes(self.max_bytes, "SharedMemory", default_max_bytes),
                      _ttl_ms(self.default_ttl, "SharedMemory"), err, len(err))
        if ptr == ffi.NULL:
            raise ConfigError(f"shared memory {self.name!r}: {ffi.string(err).decode()}")
        return ptr


@dataclass(frozen=True)
class Redis:
    """A Redis server shared by many machines. url: redis://host:port/db. timeout: seconds
    an operation may wait for the server before the guest gets INTERNAL_FAILURE (counted
    in `unavailable`). prefix: the start of every key this host writes. max_bytes and
    default_ttl as InProcess, per scope."""

    url: str = "redis://127.0.0.1:6379/0"
    timeout: float = 0.05
    prefix: str = "pyproxywasm"
    max_bytes: int | None = None
    default_ttl: float | None = None

    def _open(self, default_max_bytes: int) -> Any:
        raise ConfigError("this build of pyproxywasm has no Redis backend")


Backend = Union[InProcess, SharedMemory, Redis]


class BackendHandle:
    """An opened backend (the C handle), shared by every host of the process that asked
    for an equal configuration; closed when the last of them lets go."""

    _lock = threading.Lock()  # guards _open_handles (hosts are made on any thread)
    _open_handles: dict[tuple[Backend, int], "BackendHandle"] = {}

    def __init__(self, key: tuple[Backend, int], ptr: Any) -> None:
        self.key, self.ptr, self.users = key, ptr, 0

    @classmethod
    def get(cls, backend: Backend, default_max_bytes: int) -> "BackendHandle":
        if not isinstance(backend, (InProcess, SharedMemory, Redis)):
            raise ConfigError(f"a shared-state backend must be InProcess, SharedMemory or "
                              f"Redis, not {backend!r}")
        key = (backend, default_max_bytes)
        with cls._lock:
            h = cls._open_handles.get(key)
            if h is None or isinstance(backend, InProcess):
                # In-process options are cheap and per host: never shared.
                h = cls(key, backend._open(default_max_bytes))
                if not isinstance(backend, InProcess):
                    cls._open_handles[key] = h
            h.users += 1
            return h

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users:
                return
            if self._open_handles.get(self.key) is self:
                del self._open_handles[self.key]
        lib.pw_backend_close(self.ptr)

    @property
    def unavailable(self) -> int:
        """Operations answered INTERNAL_FAILURE because the store was unreachable or full."""
        return int(lib.pw_backend_unavailable(self.ptr))

    def segment_stats(self) -> dict[str, int] | None:
        """A SharedMemory backend's counters, kept in the segment (every process's): writes
        refused because it was full, bad links cut (another process corrupted it), locks
        recovered from a process that died holding them. None for other backends."""
        out = ffi.new("uint64_t[3]")
        if lib.pw_shm_stats(self.ptr, out) != lib.PW_OK:
            return None
        return {"full": int(out[0]), "corrupt": int(out[1]), "recovered": int(out[2])}

    @property
    def kind(self) -> str:
        return str(ffi.string(lib.pw_backend_kind(self.ptr)).decode())


class Attachments:
    """The backends one host attached to its namespace, undone by close()."""

    def __init__(self, namespace: str) -> None:
        self._ns = namespace.encode()
        self._done: list[tuple[BackendHandle, bytes, bool]] = []
        self.by_vm_id: dict[str, BackendHandle] = {}

    def attach(self, backend: Backend, vm_id: str | None, default_max_bytes: int,
               default: bool = False) -> None:
        """vm_id None: every vm_id of the namespace (an exact attachment wins). default:
        the options of a host that chose nothing (in-process), used only where no other
        host of the process chose a backend for the namespace."""
        h = BackendHandle.get(backend, default_max_bytes)
        vid = b"" if vm_id is None else vm_id.encode()
        rc = lib.pw_backend_attach_default(h.ptr, self._ns, len(self._ns)) if default else \
            lib.pw_backend_attach(h.ptr, self._ns, len(self._ns), vid, len(vid),
                                  int(vm_id is None))
        if rc != lib.PW_OK:
            h.release()
            raise ConfigError(
                f"namespace {self._ns.decode()!r}"
                + ("" if vm_id is None else f", vm_id {vm_id!r}")
                + f": another host of this process already keeps its shared state in another "
                f"backend (one scope, one store), or 255 backends are attached")
        self._done.append((h, vid, vm_id is None))
        self.by_vm_id["*" if vm_id is None else vm_id] = h

    def close(self) -> None:
        for h, vid, every in reversed(self._done):
            lib.pw_backend_detach(h.ptr, self._ns, len(self._ns), vid, len(vid), int(every))
            h.release()
        self._done.clear()
        self.by_vm_id.clear()


def attach_all(namespace: str, shared_state: Backend | Mapping[str, Backend] | None,
               default_max_bytes: int) -> Attachments:
    """Attaches a Host's shared_state (see the module docstring) to its namespace."""
    a = Attachments(namespace)
    try:
        if shared_state is None:
            # No choice: the namespace's backend if another host chose one, else in-process.
            a.attach(InProcess(), None, default_max_bytes, default=True)
        elif isinstance(shared_state, Mapping):
            if "*" not in shared_state:
                a.attach(InProcess(), None, default_max_bytes, default=True)
            for vm_id, backend in shared_state.items():
                if not isinstance(vm_id, str):
                    raise ConfigError(f"shared_state keys are vm_ids (str), not {vm_id!r}")
                a.attach(backend, None if vm_id == "*" else vm_id, default_max_bytes)
        else:
            a.attach(shared_state, None, default_max_bytes)
    except BaseException:
        a.close()
        raise
    return a
