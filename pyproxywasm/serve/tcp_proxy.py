"""A TCP listener: the Wasm network filters, then tcp_proxy to the listener's cluster.

As in Envoy: a connection gets on_new_connection when accepted, then the upstream
connection is made; client bytes pass the filters in order (on_downstream_data), server
bytes pass them in reverse (on_upstream_data). A filter that pauses stops reading on that
side until it continues (back-pressure, as Envoy's read disable). Half-close is kept (an
end of stream on one side is passed on, the other side keeps flowing) and the connection
ends when both sides have ended, or when a filter closes it.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

from .. import properties as props
from .._binding import lib
from ..host import Plugin
from ..net.cluster import Cluster
from ..tcp import PeerType, TcpStream
from .filters import LoopDispatch
from .proxy import tree_properties

log = logging.getLogger("pyproxywasm.serve")

_DOWN_STOPPED = lib.PW_S_REQ_STOPPED
_UP_STOPPED = lib.PW_S_RESP_STOPPED


FILTER_STATE_CLUSTER = "envoy.tcp_proxy.cluster"


class TcpProxy:
    """The connection handler of one TCP listener (one per worker thread).

    The upstream cluster is the listener's, unless a filter set Envoy's filter state
    `envoy.tcp_proxy.cluster` (with the set_envoy_filter_state built-in) when the
    connection opened: then that cluster, as Envoy's tcp_proxy does (a name that is no
    cluster closes the connection)."""

    def __init__(self, filters: Sequence[tuple[Plugin, bool]], cluster: str,
                 clusters: Mapping[str, Cluster], metadata: Mapping[str, dict[str, Any]],
                 dispatch: Callable[[], LoopDispatch]) -> None:
        self.filters = list(filters)
        self.cluster = clusters[cluster]
        self.clusters = clusters
        self.metadata = metadata
        self._dispatch = dispatch
        self._rr: dict[str, Iterator[tuple[str, int]]] = {}
        self.connections: set[asyncio.Task[Any]] = set()

    def _next_address(self, cluster: Cluster) -> tuple[str, int]:
        rr = self._rr.get(cluster.name)
        if rr is None:
            rr = self._rr[cluster.name] = itertools.cycle(cluster.addresses)
        return next(rr)

    def _chosen_cluster(self, streams: Sequence[TcpStream]) -> str:
        """The cluster a filter named in the connection's filter state, else the listener's."""
        name = self.cluster.name
        if not self.filters:
            return name
        states = self.filters[0][0].host.builtins.filter_state  # one Host runs every filter
        for s in streams:
            state = states.get((int(lib.pw_vm_key(s._vm)), s.context_id))
            if state and FILTER_STATE_CLUSTER in state:
                name = state[FILTER_STATE_CLUSTER].decode("utf-8", "replace")
        return name

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs the handler as a task
        self.connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the worker is stopping: the connection ends here, its streams have ended
        except Exception:  # noqa: BLE001 - one connection must not take the listener down
            log.exception("tcp_proxy connection failed")
        finally:
            self.connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        d = self._dispatch()
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("", 0)
        p = {"source.address": f"{peer[0]}:{peer[1]}", "source.port": peer[1],
             "destination.address": f"{local[0]}:{local[1]}", "destination.port": local[1],
             "cluster_name": self.cluster.name}
        meta = self.metadata.get(self.cluster.name)
        if meta:
            p.update(tree_properties(("cluster_metadata", "filter_metadata"), meta))
        streams: list[TcpStream] = []
        for plugin, fail_open in self.filters:
            s = plugin.tcp_stream(p)
            if s.failed and fail_open:
                continue
            streams.append(s)
        try:
            if any(s.close_requested for s in streams):
                return
            name = self._chosen_cluster(streams)
            cluster = self.clusters.get(name)
            if cluster is None:
                log.info("tcp_proxy: no cluster %r (from the filter state %s)", name, FILTER_STATE_CLUSTER)
                return
            host, port = self._next_address(cluster)
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), cluster.connect_timeout)
            except (OSError, asyncio.TimeoutError) as e:
                log.info("tcp_proxy: cannot connect to %s:%s (%s): %s", host, port, cluster.name, e or "timeout")
                return
            upeer = up_writer.get_extra_info("peername") or (host, port)
            for s in streams:
                for path, value in props.flatten({"upstream.address": f"{upeer[0]}:{upeer[1]}",
                                                  "upstream.port": upeer[1]}):
                    lib.pw_set_host_property(s._vm, s.context_id, path, len(path), value, len(value))
            closed = asyncio.Event()
            first_eof: list[str] = []

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
                chain = list(reversed(streams)) if upstream else streams
                while not closed.is_set():
                    try:
                        data = await src.read(65536)
                    except (ConnectionError, OSError):
                        data = b""
                    eos = not data
                    for s in chain:
                        if upstream:
                            s.send_upstream(data, eos)
                        else:
                            s.send_downstream(data, eos)
                        d.kick()
                        stopped = _UP_STOPPED if upstream else _DOWN_STOPPED
                        while s.flags & stopped and not s.close_requested:
                            await d.changed()
                            s.refresh()
                        if s.close_requested:
                            closed.set()
                            return
                        data = s.take_upstream_data() if upstream else s.take_downstream_data()
                    try:
                        if data:
                            dst.write(data)
                            await dst.drain()
                        if eos:
                            first_eof.append("up" if upstream else "down")
                            if dst.can_write_eof():
                                dst.write_eof()
                            return
                    except (ConnectionError, OSError):
                        closed.set()
                        return

            tasks = [asyncio.ensure_future(pump(reader, up_writer, False)),
                     asyncio.ensure_future(pump(up_reader, writer, True))]
            stop = asyncio.ensure_future(closed.wait())
            try:
                await asyncio.wait(tasks + [stop], return_when=asyncio.FIRST_COMPLETED)
                while not stop.done() and not all(t.done() for t in tasks):
                    await asyncio.wait(tasks + [stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when this connection is cancelled (the worker stops): no pump may
                # touch the streams once they are finished below.
                for t in tasks + [stop]:
                    t.cancel()
                await asyncio.gather(*tasks, stop, return_exceptions=True)
                up_writer.close()
            up_first = first_eof[:1] == ["up"]
            for s in streams:
                s.close_upstream(PeerType.REMOTE if up_first else PeerType.LOCAL)
        finally:
            down_peer = PeerType.LOCAL if not streams or streams[0].close_requested else PeerType.REMOTE
            for s in streams:
                s.close_downstream(down_peer)
                s.finish()
            d.kick()
