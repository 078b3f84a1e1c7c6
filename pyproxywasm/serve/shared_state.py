"""`serve --shared-state`: which backend holds shared data and queues, as text.

The text crosses from the supervisor to its worker processes (each builds its own
backend object from it), so it is parsed and checked once, here:

- `memory`: each process keeps its own (the in-process store): counters and queues do
  not cross processes;
- `shm` (the default of `--processes N` with N > 1): one shared-memory segment for
  every process of this `serve`, named after the supervisor's pid so that two `serve`s
  never share one; the supervisor removes it on exit (and a worker that outlives a
  killed supervisor does);
- `redis://host:port/db`: a Redis server (several machines).
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from .._binding import lib
from ..backends import Backend, Redis, SharedMemory
from ..errors import ConfigError

KINDS = ("memory", "shm", "redis")


@dataclass(frozen=True)
class SharedStateSpec:
    """What `--shared-state` asked for, checked."""

    kind: str  # one of KINDS
    url: str = ""  # redis: the URL as given
    segment: str = ""  # shm: the segment's name

    def describe(self) -> str:
        if self.kind == "memory":
            return "per process (memory)"
        if self.kind == "shm":
            return f"shared memory {self.segment}"
        u = urllib.parse.urlsplit(self.url)  # printed: without the password
        if u.password is not None:
            host = u.hostname or ""
            host = f"[{host}]" if ":" in host else host
            netloc = f"{u.username or ''}:***@{host}" + (f":{u.port}" if u.port else "")
            return f"redis {urllib.parse.urlunsplit(u._replace(netloc=netloc))}"
        return f"redis {self.url}"

    def backend(self) -> Backend | None:
        """The pyproxywasm.backends object a Host takes (shared_state=); None for
        `memory`, the Host's default in-process store."""
        if self.kind == "memory":
            return None
        if self.kind == "shm":
            return SharedMemory(name=self.segment)
        return Redis(url=self.url)


def segment_name(supervisor_pid: int) -> str:
    """The shared-memory segment of the serve whose supervisor is that process."""
    return f"pyproxywasm-serve-{supervisor_pid}"


def parse(text: str | None, processes: int, supervisor_pid: int | None = None) -> SharedStateSpec | None:
    """`--shared-state` (None when not given) into a spec; None keeps today's
    single-process behaviour (the in-process store, no backend object at all)."""
    pid = os.getpid() if supervisor_pid is None else supervisor_pid
    if text is None:
        return SharedStateSpec("shm", segment=segment_name(pid)) if processes > 1 else None
    t = text.strip()
    if t == "memory":
        return SharedStateSpec("memory")
    if t == "shm":
        return SharedStateSpec("shm", segment=segment_name(pid))
    if t.startswith("redis://"):
        u = urllib.parse.urlsplit(t)
        try:
            port = u.port
        except ValueError:
            raise ConfigError(f"--shared-state {text!r}: the port is not a number in 1..65535") from None
        if not u.hostname:
            raise ConfigError(f"--shared-state {text!r}: no host (redis://host:port/db)")
        if port == 0:
            raise ConfigError(f"--shared-state {text!r}: the port is not a number in 1..65535")
        db = u.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(f"--shared-state {text!r}: the database {db!r} is not a number")
        if u.query or u.fragment:
            raise ConfigError(f"--shared-state {text!r}: no query or fragment is understood")
        return SharedStateSpec("redis", url=t)
    raise ConfigError(f"--shared-state {text!r}: expected memory, shm or redis://host:port/db")


def remove_segment(name: str) -> None:
    """Removes a shared-memory segment by name (gone already is fine): the processes that
    still map it keep their mapping until they exit."""
    raw = name.encode()
    lib.pw_shm_unlink(raw, len(raw))
