"""Metrics the plugins defined (proxy_define_metric), process-wide, and their Prometheus
text exposition."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ._binding import ffi, lib
from .errors import ProxyWasmError

KINDS = ("counter", "gauge", "histogram")
_RECORD = struct.Struct("<BIqQ")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    value: int  # counter or gauge value; for a histogram, the number of samples
    sum: int = 0  # histogram: the sum of the samples


def snapshot() -> list[Metric]:
    """Every metric with its current value, in definition order."""
    out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
    if lib.pw_metrics_dump(out, n) != lib.PW_OK:
        raise ProxyWasmError("cannot read the metrics (out of memory)")
    try:
        data = ffi.buffer(out[0], n[0])[:]
    finally:
        lib.pw_bytes_free(out[0])
    metrics, off = [], 0
    while off < len(data):
        kind, name_len, value, total = _RECORD.unpack_from(data, off)
        off += _RECORD.size
        name = data[off:off + name_len].decode("utf-8", "replace")
        off += name_len
        metrics.append(Metric(name, KINDS[kind], value, total))
    return list(reversed(metrics))


def _prom_name(name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    return name if re.match(r"[a-zA-Z_:]", name) else "_" + name


def prometheus_text() -> str:
    """The metrics in Prometheus' text format. Histograms keep a count and a sum (no
    buckets), so they are exposed as summaries."""
    lines = []
    for m in snapshot():
        name = _prom_name(m.name)
        if m.kind == "histogram":
            lines += [f"# TYPE {name} summary", f"{name}_count {m.value}", f"{name}_sum {m.sum}"]
        else:
            lines += [f"# TYPE {name} {m.kind}", f"{name} {m.value}"]
    return "\n".join(lines) + "\n"
