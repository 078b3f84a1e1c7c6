"""Metrics the plugins defined (proxy_define_metric), per host namespace, and their
Prometheus text exposition as Envoy's admin `/stats/prometheus` writes it.

Envoy exposes a Wasm plugin's metrics in its custom-stats namespace: no `envoy_` prefix,
the name sanitized to `[a-zA-Z0-9_]`, and tags taken out of the name by the bootstrap's
`stats_config.stats_tags` (`StatsTag` here): a regex whose first group is cut out of the
name and whose second group (or first, if there is only one) is the tag's value. Counters
come first, then gauges, then histograms, each family sorted by its tag-extracted name,
with a `# TYPE` line, one line per tag set and a blank line after it. Histograms have
Envoy's default bucket bounds (the C core counts every sample in fixed buckets).
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ._binding import ffi, lib
from .errors import ProxyWasmError

KINDS = ("counter", "gauge", "histogram")
_RECORD = struct.Struct("<BIqQ")
_BUCKETS = struct.Struct("<" + "Q" * lib.PW_HIST_BUCKETS)


def _bounds() -> tuple[float, ...]:
    out = ffi.new("double[]", lib.PW_HIST_BUCKETS - 1)
    lib.pw_hist_bounds(out)
    return tuple(out)


#: Envoy's default histogram bucket bounds (upper, inclusive), the C core's buckets.
BUCKET_BOUNDS: tuple[float, ...] = _bounds()


@dataclass(frozen=True)
class Metric:
    """One metric: a counter's or gauge's value, or a histogram's samples."""

    name: str
    kind: str
    value: int  # counter or gauge value; for a histogram, the number of samples
    sum: int = 0  # histogram: the sum of the samples
    #: histogram: samples per bucket of BUCKET_BOUNDS (not cumulative), the last one +Inf
    buckets: tuple[int, ...] = ()


@dataclass(frozen=True)
class StatsTag:
    """One of Envoy's `stats_config.stats_tags`: `regex` (Python syntax for RE2's common
    subset) finds the tag in a stat name, or `fixed_value` gives every stat the tag."""

    tag_name: str
    regex: str = ""
    fixed_value: str | None = None


@dataclass(frozen=True)
class Tagged:
    """A stat name split as Envoy's tag extraction does."""

    name: str
    tags: tuple[tuple[str, str], ...] = field(default=())


def dump(namespace: str = "") -> bytes:
    """A namespace's metrics as the C core's records (`pw_metrics_dump`, csrc/pw.h): the
    bytes one process hands another (serve's supervisor sums its workers' with parse()
    and merge())."""
    raw_ns = namespace.encode()
    out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
    if lib.pw_metrics_dump(raw_ns, len(raw_ns), out, n) != lib.PW_OK:
        raise ProxyWasmError("cannot read the metrics (out of memory)")
    try:
        return bytes(ffi.buffer(out[0], n[0])[:])
    finally:
        lib.pw_bytes_free(out[0])


def parse(data: bytes) -> list[Metric]:
    """dump()'s records as Metrics, in definition order. Malformed bytes (a truncated
    message) raise ValueError."""
    metrics, off = [], 0
    try:
        while off < len(data):
            kind, name_len, value, total = _RECORD.unpack_from(data, off)
            off += _RECORD.size
            if kind >= len(KINDS) or off + name_len > len(data):
                raise ValueError("malformed metrics record")
            name = data[off:off + name_len].decode("utf-8", "replace")
            off += name_len
            buckets: tuple[int, ...] = ()
            if KINDS[kind] == "histogram":
                buckets = _BUCKETS.unpack_from(data, off)
                off += _BUCKETS.size
            metrics.append(Metric(name, KINDS[kind], value, total, buckets))
    except struct.error as e:
        raise ValueError(f"malformed metrics records: {e}") from None
    return list(reversed(metrics))


def snapshot(namespace: str = "") -> list[Metric]:
    """Every metric of a host namespace ("" is the default host's), in definition order."""
    return parse(dump(namespace))


def merge(snapshots: Iterable[Sequence[Metric]]) -> list[Metric]:
    """Several processes' snapshots as one: metrics of the same kind and name add up
    (counters, gauges, histogram counts, sums and buckets), in the order they are first
    seen. Gauges add too: a gauge of in-flight requests summed over processes is the
    service's; a gauge that is per-process by nature (a setting every process reports)
    comes out multiplied, which the admin's docs say."""
    out: dict[tuple[str, str], Metric] = {}
    for snap in snapshots:
        for m in snap:
            key = (m.kind, m.name)
            prev = out.get(key)
            if prev is None:
                out[key] = m
            else:
                buckets = tuple(a + b for a, b in zip(prev.buckets, m.buckets)) if m.buckets else prev.buckets
                out[key] = Metric(m.name, m.kind, prev.value + m.value, prev.sum + m.sum, buckets)
    return list(out.values())


def process_labels() -> dict[str, str]:
    """{"pid": this process's id}: the label that keeps several worker processes'
    metrics apart when each exports its own (prometheus_text(labels=...))."""
    return {"pid": str(os.getpid())}


def extract_tags(name: str, stats_tags: Iterable[StatsTag] = ()) -> Tagged:
    """Splits a stat name into its tag-extracted name and tags, in `stats_tags` order."""
    tags = []
    for t in stats_tags:
        if t.fixed_value is not None:
            tags.append((t.tag_name, t.fixed_value))
            continue
        m = re.search(t.regex, name)
        if m is None or not m.groups():
            continue
        value = m.group(2) if m.re.groups >= 2 else m.group(1)
        if value is None:
            continue
        name = name[:m.start(1)] + name[m.end(1):]
        tags.append((t.tag_name, value))
    return Tagged(name, tuple(tags))


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _labels(tags: Sequence[tuple[str, str]]) -> str:
    return ",".join(f'{_sanitize(k)}="{v}"' for k, v in tags)


def _g(x: float) -> str:
    return format(x, ".32g")


def prometheus_text(namespace: str = "", stats_tags: Iterable[StatsTag] = (),
                    labels: Mapping[str, str] | None = None,
                    metrics: Sequence[Metric] | None = None) -> str:
    """The namespace's metrics in Prometheus' text format, as Envoy writes Wasm metrics.

    labels: added to every line after the extracted tags, e.g. process_labels() under
    several worker processes (uvicorn --workers, gunicorn), whose metrics are each
    process's own: Prometheus then sums them (`sum without (pid) (...)`).
    metrics: these instead of the namespace's (a merge() of several processes')."""
    tags = tuple(stats_tags)
    extra = tuple((labels or {}).items())
    families: dict[str, dict[str, list[tuple[str, Tagged, Metric]]]] = {k: {} for k in KINDS}
    for m in (snapshot(namespace) if metrics is None else metrics):
        t = extract_tags(m.name, tags)
        if extra:
            t = Tagged(t.name, t.tags + extra)
        name = _sanitize(t.name)
        if not name or name[0].isdigit():
            continue  # not a valid Prometheus name: Envoy leaves it out
        families[m.kind].setdefault(name, []).append((m.name, t, m))
    out: list[str] = []
    for kind in KINDS:
        for name in sorted(families[kind]):
            out.append(f"# TYPE {name} {kind}\n")
            for _, t, m in sorted(families[kind][name], key=lambda e: e[0]):
                sel = _labels(t.tags)
                if kind != "histogram":
                    out.append(f"{name}{{{sel}}} {m.value}\n")
                    continue
                prefix = sel + "," if sel else ""
                cumulative = 0
                for bound, count in zip(BUCKET_BOUNDS, m.buckets):
                    cumulative += count
                    out.append(f'{name}_bucket{{{prefix}le="{_g(bound)}"}} {cumulative}\n')
                out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {m.value}\n')
                out.append(f"{name}_sum{{{sel}}} {_g(float(m.sum))}\n")
                out.append(f"{name}_count{{{sel}}} {m.value}\n")
            out.append("\n")
    return "".join(out)
