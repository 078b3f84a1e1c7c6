"""The admin listener: /ready, /listeners, /stats and /stats/prometheus over the plugins'
metrics.

stats_tags work as Envoy's tag extraction (pyproxywasm.metrics.extract_tags): a tag's regex
is searched in the metric name; its first group is cut out of the name and its second group
(or the first, when there is only one) is the tag's value. Tags come out in config order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Sequence

from .. import metrics
from .config import StatsTag
from .filters import Receive, Scope, Send
from .proxy import reply


def prometheus(tags: Sequence[StatsTag], snapshot: Sequence[metrics.Metric] | None = None) -> str:
    """The metrics (this process's, or `snapshot`) in Prometheus text format as Envoy's
    /stats/prometheus writes Wasm metrics (tags as labels, histograms with Envoy's
    buckets): the harness's writer."""
    return metrics.prometheus_text("", [metrics.StatsTag(t.name, t.regex.pattern if t.regex else "", t.fixed_value)
                                        for t in tags], metrics=snapshot)


def stats_text(snapshot: Sequence[metrics.Metric] | None = None) -> str:
    lines = []
    for m in metrics.snapshot() if snapshot is None else snapshot:
        if m.kind == "histogram":
            lines.append(f"{m.name}: count={m.value} sum={m.sum}")
        else:
            lines.append(f"{m.name}: {m.value}")
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass
class Gathered:
    """Metrics gathered from several processes: their sum, and notes on those left out
    (each becomes a `#` comment line of /stats/prometheus and /stats)."""

    metrics: list[metrics.Metric]
    notes: list[str]


class AdminApp:
    """Envoy's admin endpoints that a proxy of plugins has something to say on.

    gather: where the metrics come from when they are not this process's (serve
    --processes N: the supervisor's sum over its workers). listeners(): (name, address,
    port) of each listener, for /listeners."""

    def __init__(self, tags: Sequence[StatsTag], ready: Callable[[], bool],
                 gather: Callable[[], Awaitable[Gathered]] | None = None,
                 listeners: Callable[[], Iterable[tuple[str, str, int]]] = lambda: ()) -> None:
        self.tags = tags
        self.ready = ready
        self.gather = gather
        self.listeners = listeners

    async def _text(self, prom: bool) -> bytes:
        if self.gather is None:
            return (prometheus(self.tags) if prom else stats_text()).encode()
        g = await self.gather()
        notes = "".join(f"# {n}\n" for n in g.notes)
        return (notes + (prometheus(self.tags, g.metrics) if prom else stats_text(g.metrics))).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/ready":
            ok = self.ready()
            await reply(send, 200 if ok else 503, b"LIVE\n" if ok else b"PRE_INITIALIZING\n")
        elif path == "/listeners":
            # Envoy's text form, one "name::address:port" a line (probes poll it for a 200).
            lines = "".join(f"{n}::{h}:{p}\n" for n, h, p in self.listeners())
            await reply(send, 200, lines.encode())
        elif path == "/stats/prometheus":
            await reply(send, 200, await self._text(True),
                        [(b"content-type", b"text/plain; version=0.0.4")])
        elif path == "/stats":
            await reply(send, 200, await self._text(False))
        elif path == "/":  # the index, as Envoy's admin home page
            await reply(send, 200, b"pyproxywasm admin\n  /ready\n  /listeners\n  /stats\n  /stats/prometheus\n")
        else:
            await reply(send, 404, b"unknown admin path; try /ready, /listeners, /stats, /stats/prometheus\n")
