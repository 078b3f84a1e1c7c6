"""Shared state of one host namespace, as the host sees it: shared data, shared queues and
metrics.

A Host's VMs keep their shared data and queues by (namespace, vm_id) and their metrics by
(namespace, name) in the C core. Hosts made with the same namespace (the default "" is the
process-wide one, as in Envoy where every VM of a process shares them) see each other's
state; the testing harness gives each harness its own namespace so tests do not leak into
each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ._binding import ffi, lib
from .abi import Status
from .metrics import Metric, StatsTag, prometheus_text, snapshot


@dataclass(frozen=True)
class SharedValue:
    """A shared-data entry: its bytes and its CAS (pass it to set_shared_data to write only
    if nobody wrote since)."""

    value: bytes
    cas: int

    # Code written when shared_data() answered a (value, cas) tuple keeps working:
    # `value, cas = h.shared_data(k)` and `h.shared_data(k)[0]`.
    def __iter__(self) -> Iterator[bytes | int]:
        return iter((self.value, self.cas))

    def __getitem__(self, i: int) -> bytes | int:
        return (self.value, self.cas)[i]


@dataclass(frozen=True)
class Histogram:
    """A histogram metric: its sample count, their sum and per-bucket counts (Envoy's
    default bounds, metrics.BUCKET_BOUNDS, then +Inf; not cumulative)."""

    count: int
    sum: int
    buckets: tuple[int, ...] = ()


def _b(s: str | bytes) -> bytes:
    return s.encode() if isinstance(s, str) else s


class SharedState:
    """Shared data, queues and metrics of one namespace. Shared data and queues are read
    and written through the namespace's backend (Host(shared_state=...)), whichever
    process or machine holds them."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self._ns = namespace.encode()

    # ---- shared data -----------------------------------------------------------------
    def shared_data(self, key: str | bytes, vm_id: str = "") -> SharedValue | None:
        """A shared-data key of a vm_id, or None if it was never set."""
        k, vid = _b(key), vm_id.encode()
        out, n, cas = ffi.new("uint8_t **"), ffi.new("size_t *"), ffi.new("uint32_t *")
        if lib.pw_shared_get(self._ns, len(self._ns), vid, len(vid), k, len(k), out, n, cas) != 0:
            return None
        try:
            return SharedValue(ffi.buffer(out[0], n[0])[:], cas[0])
        finally:
            lib.pw_bytes_free(out[0])

    def set_shared_data(self, key: str | bytes, value: bytes, cas: int = 0,
                        vm_id: str = "") -> Status:
        """Writes shared data as a plugin would: OK, or CAS_MISMATCH for a stale cas."""
        k, vid = _b(key), vm_id.encode()
        return Status(lib.pw_shared_set(self._ns, len(self._ns), vid, len(vid), k, len(k),
                                        value, len(value), cas))

    def delete(self, key: str | bytes, vm_id: str = "", cas: int = 0) -> Status:
        """Deletes a key (beyond the ABI): OK, NOT_FOUND, or CAS_MISMATCH when cas is not
        0 and not the key's current cas. Its bytes return to the scope's cap."""
        k, vid = _b(key), vm_id.encode()
        return Status(lib.pw_shared_delete(self._ns, len(self._ns), vid, len(vid), k, len(k),
                                           cas))

    def expire(self, key: str | bytes, ttl_seconds: float, vm_id: str = "") -> Status:
        """Gives a key a time to live from now (beyond the ABI; 0: forever again): OK, or
        NOT_FOUND. Later writes keep it."""
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)) \
                or ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be >= 0, not {ttl_seconds!r}")
        k, vid = _b(key), vm_id.encode()
        ms = max(1, round(ttl_seconds * 1000)) if ttl_seconds else 0
        return Status(lib.pw_shared_expire(self._ns, len(self._ns), vid, len(vid), k, len(k),
                                           ms))

    # ---- queues ----------------------------------------------------------------------
    def queue_id(self, name: str, vm_id: str = "") -> int | None:
        """The id of a queue a plugin of vm_id registered, or None."""
        raw, vid, out = name.encode(), vm_id.encode(), ffi.new("uint32_t *")
        st = lib.pw_queue_resolve(self._ns, len(self._ns), vid, len(vid), raw, len(raw), out)
        return out[0] if st == 0 else None

    def queue_size(self, name: str, vm_id: str = "") -> int | None:
        """How many items wait in a queue, or None if it is not registered."""
        qid = self.queue_id(name, vm_id)
        return None if qid is None else lib.pw_queue_size(qid)

    def enqueue(self, name: str, data: bytes, vm_id: str = "") -> Status:
        """Enqueues as another VM would; the owner is notified on its own thread later."""
        qid = self.queue_id(name, vm_id)
        if qid is None:
            raise KeyError(f"no queue {name!r} registered for vm_id {vm_id!r}")
        return Status(lib.pw_queue_enqueue(qid, data, len(data)))

    def dequeue(self, name: str, vm_id: str = "") -> bytes | None:
        """Takes the oldest item of a queue as any VM may, or None when it is empty."""
        qid = self.queue_id(name, vm_id)
        if qid is None:
            raise KeyError(f"no queue {name!r} registered for vm_id {vm_id!r}")
        out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
        st = lib.pw_queue_dequeue(qid, out, n)
        if st == Status.EMPTY:
            return None
        if st != Status.OK:
            raise KeyError(f"queue {name!r} of vm_id {vm_id!r}: {Status(st).name}")
        try:
            return bytes(ffi.buffer(out[0], n[0])[:])
        finally:
            lib.pw_bytes_free(out[0])

    # ---- metrics ---------------------------------------------------------------------
    def metric(self, name: str) -> int | Histogram | None:
        """A metric the plugins defined: a counter's or gauge's value, or a Histogram."""
        for m in self.metrics():
            if m.name == name:
                return Histogram(m.value, m.sum, m.buckets) if m.kind == "histogram" else m.value
        return None

    def metrics(self) -> list[Metric]:
        """Every metric of the namespace, in definition order."""
        return snapshot(self.namespace)

    def prometheus(self, stats_tags: tuple[StatsTag, ...] | list[StatsTag] = ()) -> str:
        """The namespace's metrics in Prometheus' text format (see pyproxywasm.metrics)."""
        return prometheus_text(self.namespace, stats_tags)
