"""The admin listener: /ready, /stats and /stats/prometheus over the plugins' metrics.

stats_tags work as Envoy's tag extraction: a tag's regex is searched in the metric name;
its first group is cut out of the name and its second group (or the first, when there is
only one) is the tag's value. Tags come out in config order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from .. import metrics
from .config import StatsTag
from .filters import Receive, Scope, Send
from .proxy import reply


def extract_tags(name: str, tags: Sequence[StatsTag]) -> tuple[str, list[tuple[str, str]]]:
    out: list[tuple[str, str]] = []
    for t in tags:
        if t.regex is None:
            out.append((t.name, t.fixed_value or ""))
            continue
        m = t.regex.search(name)
        if m is None:
            continue
        value = m.group(2) if m.re.groups >= 2 else (m.group(1) if m.re.groups else m.group(0))
        cut = m.span(1) if m.re.groups else m.span(0)
        name = name[:cut[0]] + name[cut[1]:]
        out.append((t.name, value or ""))
    return name, out


def _prom(name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    return name if re.match(r"[a-zA-Z_:]", name) else "_" + name


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(tags: Sequence[StatsTag], snapshot: Sequence[metrics.Metric] | None = None) -> str:
    """The metrics (this process's, or `snapshot`) in Prometheus text format, tags as
    labels; one TYPE line per family."""
    families: dict[str, tuple[str, list[str]]] = {}
    for m in metrics.snapshot() if snapshot is None else snapshot:
        base, labels = extract_tags(m.name, tags)
        name = _prom(base)
        lab = ",".join(f'{_prom(k)}="{_esc(v)}"' for k, v in labels)
        sel = "{" + lab + "}" if lab else ""
        if m.kind == "histogram":
            kind, lines = "summary", [f"{name}_count{sel} {m.value}", f"{name}_sum{sel} {m.sum}"]
        else:
            kind, lines = m.kind, [f"{name}{sel} {m.value}"]
        fam = families.setdefault(name, (kind, []))
        fam[1].extend(lines)
    text = []
    for name, (kind, lines) in families.items():
        text.append(f"# TYPE {name} {kind}")
        text.extend(lines)
    return "\n".join(text) + "\n"


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
    --processes N: the supervisor's sum over its workers)."""

    def __init__(self, tags: Sequence[StatsTag], ready: Callable[[], bool],
                 gather: Callable[[], Awaitable[Gathered]] | None = None) -> None:
        self.tags = tags
        self.ready = ready
        self.gather = gather

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
        elif path == "/stats/prometheus":
            await reply(send, 200, await self._text(True),
                        [(b"content-type", b"text/plain; version=0.0.4")])
        elif path == "/stats":
            await reply(send, 200, await self._text(False))
        elif path == "/":  # the index, as Envoy's admin home page
            await reply(send, 200, b"pyproxywasm admin\n  /ready\n  /stats\n  /stats/prometheus\n")
        else:
            await reply(send, 404, b"unknown admin path; try /ready, /stats, /stats/prometheus\n")
