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

import re
import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

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


def snapshot(namespace: str = "") -> list[Metric]:
    """Every metric of a host namespace ("" is the default host's), in definition order."""
    raw_ns = namespace.encode()
    out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
    if lib.pw_metrics_dump(raw_ns, len(raw_ns), out, n) != lib.PW_OK:
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
        buckets: tuple[int, ...] = ()
        if KINDS[kind] == "histogram":
            buckets = _BUCKETS.unpack_from(data, off)
            off += _BUCKETS.size
        metrics.append(Metric(name, KINDS[kind], value, total, buckets))
    return list(reversed(metrics))


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


def prometheus_text(namespace: str = "", stats_tags: Iterable[StatsTag] = ()) -> str:
    """The namespace's metrics in Prometheus' text format, as Envoy writes Wasm metrics."""
    tags = tuple(stats_tags)
    families: dict[str, dict[str, list[tuple[str, Tagged, Metric]]]] = {k: {} for k in KINDS}
    for m in snapshot(namespace):
        t = extract_tags(m.name, tags)
        name = _sanitize(t.name)
        if not name or name[0].isdigit():
            continue  # not a valid Prometheus name: Envoy leaves it out
        families[m.kind].setdefault(name, []).append((m.name, t, m))
    out: list[str] = []
    for kind in KINDS:
        for name in sorted(families[kind]):
            out.append(f"# TYPE {name} {kind}\n")
            for _, t, m in sorted(families[kind][name], key=lambda e: e[0]):
                labels = _labels(t.tags)
                if kind != "histogram":
                    out.append(f"{name}{{{labels}}} {m.value}\n")
                    continue
                prefix = labels + "," if labels else ""
                cumulative = 0
                for bound, count in zip(BUCKET_BOUNDS, m.buckets):
                    cumulative += count
                    out.append(f'{name}_bucket{{{prefix}le="{_g(bound)}"}} {cumulative}\n')
                out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {m.value}\n')
                out.append(f"{name}_sum{{{labels}}} {_g(float(m.sum))}\n")
                out.append(f"{name}_count{{{labels}}} {m.value}\n")
            out.append("\n")
    return "".join(out)
