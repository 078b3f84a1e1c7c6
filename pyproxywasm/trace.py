"""The ABI call trace: every Proxy-Wasm hostcall a plugin made (arguments, status) and
every callback the host made into it (arguments, then its return value), in order.

Off by default and free when off. Turn it on per VM (`PluginHarness(trace=...)`, or
`enable(vm)`) to see, when a test fails, exactly what the plugin asked and what it got:

    with PluginHarness("filter.wasm", trace=True) as h:
        ...
        print(h.format_trace())

The C core keeps the last `capacity` records of each VM in a ring (read on demand).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._binding import ffi, lib
from .abi import Status
from .errors import ProxyWasmError

if TYPE_CHECKING:
    from .host import Vm

_HEAD = struct.Struct("<BBHIq")
KINDS = ("hostcall", "callback", "return")
# Hostcall parameters that are i64 (the others are i32: the upper half is masked off).
_WIDE = {("increment_metric", 1), ("record_metric", 1)}
_SIGNED = {("increment_metric", 1)}
DEFAULT_CAPACITY = 4096


@dataclass(frozen=True)
class TraceRecord:
    """One hostcall, one callback into the guest, or what a callback returned."""

    kind: str  # "hostcall", "callback" or "return"
    name: str  # proxy_* for hostcalls, the export's name for callbacks
    context_id: int
    args: tuple[int, ...]
    #: hostcall: its status; return: the callback's value (-1: it trapped; -2: not used)
    result: int

    def __str__(self) -> str:
        if self.kind == "hostcall":
            try:
                status = Status(self.result).name
            except ValueError:
                status = str(self.result)
            return f"  [{self.context_id}] {self.name}({', '.join(map(str, self.args))}) -> {status}"
        if self.kind == "callback":
            return f"[{self.context_id}] -> {self.name}({', '.join(map(str, self.args))})"
        if self.result == -2:
            return f"[{self.context_id}] <- {self.name}"
        return f"[{self.context_id}] <- {self.name} = {'trap' if self.result == -1 else self.result}"


def enable(vm: "Vm", capacity: int = DEFAULT_CAPACITY) -> None:
    """Starts tracing a VM (0: stops); records made so far are dropped."""
    if lib.pw_vm_trace(vm.ptr, capacity) != lib.PW_OK:
        raise ProxyWasmError("cannot turn the trace on (out of memory, or not the VM's thread)")


def read(vm: "Vm") -> tuple[list[TraceRecord], int]:
    """The VM's trace, oldest first, and how many older records the ring dropped."""
    out, n, dropped = ffi.new("uint8_t **"), ffi.new("size_t *"), ffi.new("uint64_t *")
    if lib.pw_vm_trace_read(vm.ptr, out, n, dropped) != lib.PW_OK:
        raise ProxyWasmError("cannot read the trace")
    try:
        data = ffi.buffer(out[0], n[0])[:]
    finally:
        lib.pw_bytes_free(out[0])
    records, off = [], 0
    while off < len(data):
        kind, nargs, name_len, ctx, result = _HEAD.unpack_from(data, off)
        off += _HEAD.size
        raw = struct.unpack_from(f"<{nargs}Q", data, off)
        off += 8 * nargs
        name = data[off:off + name_len].decode()
        off += name_len
        if kind == lib.PW_TRACE_HOSTCALL:
            args = tuple(a if (name, i) in _WIDE else a & 0xFFFFFFFF for i, a in enumerate(raw))
            args = tuple(a - (1 << 64) if (name, i) in _SIGNED and a >= 1 << 63 else a
                         for i, a in enumerate(args))
            name = "proxy_" + name if not name.startswith("as_") else name
        else:
            args = tuple(raw)
        records.append(TraceRecord(KINDS[kind], name, ctx, args, result))
    return records, int(dropped[0])


def format_records(records: list[TraceRecord], dropped: int = 0) -> str:
    head = [f"... {dropped} earlier records dropped"] if dropped else []
    return "\n".join(head + [str(r) for r in records])
