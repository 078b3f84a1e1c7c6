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
from typing import Any, Callable, Sequence

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


class TcpProxy:
    """The connection handler of one TCP listener (one per worker thread)."""

    def __init__(self, filters: Sequence[tuple[Plugin, bool]], cluster: Cluster,
                 metadata: dict[str, Any], dispatch: Callable[[], LoopDispatch]) -> None:
        self.filters = list(filters)
        self.cluster = cluster
        self.metadata = metadata
        self._dispatch = dispatch
        self._rr = itertools.cycle(cluster.addresses)
        self.connections: set[asyncio.Task[Any]] = set()

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
        if self.metadata:
            p.update(tree_properties(("cluster_metadata", "filter_metadata"), self.metadata))
        streams: list[TcpStream] = []
        for plugin, fail_open in self.filters:
            s = plugin.tcp_stream(p)
            if s.failed and fail_open:
                continue
            streams.append(s)
        try:
            if any(s.close_requested for s in streams):
                return
            host, port = next(self._rr)
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), self.cluster.connect_timeout)
            except (OSError, asyncio.TimeoutError) as e:
                log.info("tcp_proxy: cannot connect to %s:%s (%s): %s", host, port, self.cluster.name, e or "timeout")
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
