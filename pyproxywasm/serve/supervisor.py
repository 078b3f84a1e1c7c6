"""`serve --processes N`: a supervisor process and N worker processes (worker.py).

Each worker is today's single-process server: its `--concurrency` threads, its VMs, its
upstream pools. The supervisor:

- resolves every listener's port once (port 0 included) and keeps it reserved with a
  socket bound in the port's SO_REUSEPORT group but never listening (so it takes no
  connections); then makes, for each worker slot, one listening socket per listener and
  worker thread in that group, and hands them to the slot's worker process. The kernel
  spreads connections over every socket of the group by a hash of the connection's
  addresses. (One socket for every process would put them all on one accept queue,
  where the process woken first takes the connection: with keep-alive clients the
  spread then follows wake-up order, not the number of workers — see
  docs/ARCHITECTURE.md.) The slot's sockets outlive its worker: the kernel resets the
  connections queued on a listening socket when it closes, so on SIGHUP the new worker
  takes over the old one's sockets and nothing closes. After a crash they are closed at
  once, so that the other slots take the whole load until the restart (what was queued
  on them is lost with the worker, as what it had accepted), and made anew for it.
- starts the workers from its main thread (PR_SET_PDEATHSIG is tied to that thread) with
  one control socket each (control.py), and counts them up when they say READY;
- restarts a worker that dies, after a backoff (0.5 s doubling to 30 s while restarts
  fail in a row; back to 0.5 s once a worker has served 10 s), logging why;
- stops on SIGINT/SIGTERM: SIGTERM to every worker (each drains like Server.stop()),
  SIGKILL to one still running after the drain timeout; SIGHUP restarts the workers one
  at a time (each new one is up before the next old one goes);
- runs the one admin listener: /stats and /stats/prometheus sum every worker's
  metrics (asked over the control sockets, each with a timeout: a dead or stuck worker
  is left out and a comment line says so, with the gauges `pyproxywasm.processes` and
  `pyproxywasm.processes_reporting`; scrapes that come while the workers are being asked
  share that answer, and the counter `pyproxywasm.admin_polls` counts the asks); /ready
  is 200 when every worker is up;
- owns the shared-memory segment of the default shared state and removes it on exit.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import metrics
from ..errors import ProxyWasmError
from . import control
from .admin import AdminApp, Gathered
from .config import Bootstrap, load
from .server import _socket, _uvicorn
from .shared_state import SharedStateSpec, remove_segment

log = logging.getLogger("pyproxywasm.serve.supervisor")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 10.0  # a worker up this long resets its slot's backoff
RESTART_READY_TIMEOUT = 60.0  # SIGHUP: a new worker not accepting by then ends the round


class StartError(ProxyWasmError):
    """A worker could not start when serve started (a plugin failing, a port taken)."""


@dataclass
class _Slot:
    """One worker position: the process filling it now, and its restart history."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task[None] | None = None
    ready: bool = False
    ready_at: float = 0.0
    error: str = ""
    failures: int = 0  # restarts that failed in a row
    restart_at: float | None = None
    pending: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)
    became_ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Runs `processes` workers of a bootstrap; run() blocks until SIGINT/SIGTERM."""

    def __init__(self, config_path: str, bootstrap: Bootstrap, processes: int, concurrency: int = 1,
                 client: str = "auto", shared_state: SharedStateSpec | None = None,
                 singletons: str = "per-process", log_level: str = "info",
                 metrics_timeout: float = 1.0, drain_timeout: float = 10.0) -> None:
        """singletons: "per-process" (every worker runs the bootstrap_extensions
        services, as every Envoy process runs its own) or "once" (worker 0 only; it is
        restarted with them)."""
        if processes < 1:
            raise ValueError("processes must be at least 1")
        if singletons not in ("per-process", "once"):
            raise ValueError(f"unknown singletons mode {singletons!r}")
        self.config_path = os.path.abspath(config_path)
        self.bootstrap = bootstrap
        self.processes = processes
        self.concurrency = concurrency
        self.client = client
        self.shared_state = shared_state
        self.singletons = singletons
        self.log_level = log_level
        self.metrics_timeout = metrics_timeout
        self.drain_timeout = drain_timeout
        self.ports: dict[str, int] = {}
        self.admin_port: int | None = None
        self._reserved: list[socket.socket] = []
        # slot index -> per listener, one listening socket per worker thread (the event
        # loop's thread only; the workers have their own copies)
        self._listening: dict[int, list[list[socket.socket]]] = {}
        self._admin_sock: socket.socket | None = None
        self._slots = [_Slot(i) for i in range(processes)]
        self._seq = itertools.count(1)
        self._stop: asyncio.Event | None = None
        self._reload = False
        self._replacing: dict[int, _Slot] = {}  # SIGHUP: the worker a new one is replacing
        self._gathering: asyncio.Future[Gathered] | None = None  # the admin's poll in flight
        self._polls = 0  # polls of the workers the admin has made (a counter of /stats)

    # ---- sockets -------------------------------------------------------------------------
    def _reserve(self) -> list[int]:
        ports = []
        try:
            for key, lst in zip(self.bootstrap.listener_keys(), self.bootstrap.listeners):
                family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
                s = socket.socket(family, socket.SOCK_STREAM)
                self._reserved.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((lst.host, lst.port))  # bound, never listening: no connection comes here
                port = s.getsockname()[1]
                ports.append(port)
                self.ports[key] = port
            if self.bootstrap.admin is not None:
                self._admin_sock = _socket(*self.bootstrap.admin, False)
                self.admin_port = self._admin_sock.getsockname()[1]
        except OSError:
            self._close_sockets()
            raise
        return ports

    def _slot_sockets(self, index: int, ports: list[int]) -> list[list[socket.socket]]:
        """The slot's listening sockets, made at its first start (OSError: none is left)."""
        rows = self._listening.get(index)
        if rows is None:
            rows = []
            try:
                for lst, port in zip(self.bootstrap.listeners, ports):
                    rows.append([])
                    for _ in range(self.concurrency):
                        rows[-1].append(_socket(lst.host, port, True))
            except OSError:
                for s in itertools.chain.from_iterable(rows):
                    s.close()
                raise
            self._listening[index] = rows
        return rows

    def _drop_slot_sockets(self, index: int) -> None:
        """Closes the slot's listening sockets: the kernel resets what is queued on
        them, and spreads new connections over the other slots'."""
        for s in itertools.chain.from_iterable(self._listening.pop(index, [])):
            s.close()

    def _close_sockets(self) -> None:
        for index in list(self._listening):
            self._drop_slot_sockets(index)
        for s in self._reserved:
            s.close()
        self._reserved.clear()
        if self._admin_sock is not None:
            self._admin_sock.close()
            self._admin_sock = None

    # ---- workers -------------------------------------------------------------------------
    def _spawn(self, slot: _Slot, ports: list[int]) -> bool:
        """Starts slot's worker; False (and a retry scheduled with the slot's backoff) when
        the system refuses a process or a socket now."""
        try:
            listening = self._slot_sockets(slot.index, ports)
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as e:
            return self._spawn_failed(slot, e)
        fds = [[s.fileno() for s in row] for row in listening]
        spec = {"supervisor": os.getpid(), "fd": child.fileno(), "config": self.config_path,
                "ports": ports, "sockets": fds, "concurrency": self.concurrency, "client": self.client,
                "services": self.singletons == "per-process" or slot.index == 0,
                "shared_state": dataclasses.asdict(self.shared_state) if self.shared_state else None,
                "log_level": self.log_level, "index": slot.index}
        try:  # the spec in the environment: the command line is readable by every local user
            slot.proc = subprocess.Popen([sys.executable, "-m", "pyproxywasm.serve.worker"],
                                         env={**os.environ, control.SPEC_ENV: json.dumps(spec)},
                                         pass_fds=[child.fileno(), *itertools.chain.from_iterable(fds)])
        except OSError as e:
            parent.close()
            return self._spawn_failed(slot, e)
        finally:
            child.close()
        slot.ready, slot.error, slot.restart_at = False, "", None
        slot.became_ready = asyncio.Event()
        slot.reader_task = asyncio.ensure_future(self._read(slot, parent))
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)
        return True

    def _spawn_failed(self, slot: _Slot, e: OSError) -> bool:
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** slot.failures)
        slot.failures += 1
        if slot.index not in self._replacing:  # (a SIGHUP round's old worker still serves them)
            self._drop_slot_sockets(slot.index)
        slot.proc, slot.ready, slot.error = None, False, str(e)
        slot.restart_at = time.monotonic() + delay
        slot.became_ready = asyncio.Event()
        slot.became_ready.set()  # whoever waits learns it will not come
        log.warning("worker %d could not be started (%s); retrying in %.1f s", slot.index, e, delay)
        return False

    async def _read(self, slot: _Slot, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        slot.writer = writer
        try:
            while True:
                f = await control.read_frame_async(reader)
                if f is None:
                    break
                kind, seq, payload = f
                if kind == control.READY:
                    slot.ready, slot.ready_at = True, time.monotonic()
                    slot.became_ready.set()
                elif kind == control.ERROR:
                    slot.error = payload.decode(errors="replace")
                elif kind == control.METRICS:
                    fut = slot.pending.pop(seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(payload)
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()
            if slot.reader_task is asyncio.current_task():  # (not a restarted worker's)
                if self._slots[slot.index] is slot and slot.index not in self._replacing:
                    # The worker is gone (the kernel closes its control socket as it
                    # exits): its sockets leave the group now, before more connections
                    # queue on them, and the other slots take its share.
                    self._drop_slot_sockets(slot.index)
                slot.ready = False
                slot.became_ready.set()  # whoever waits for it learns it will not come
                for fut in slot.pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("the worker closed its control socket"))
                slot.pending.clear()
                slot.writer = None

    def _exit_text(self, rc: int) -> str:
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with status {rc}"

    def _reap(self, slot: _Slot) -> None:
        """A worker that ended: schedule its restart (outside of a stop)."""
        assert slot.proc is not None
        rc = slot.proc.returncode
        healthy = slot.ready_at and time.monotonic() - slot.ready_at >= HEALTHY_AFTER
        if healthy:
            slot.failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** slot.failures)
        slot.failures += 1
        slot.ready, slot.ready_at = False, 0.0
        self._drop_slot_sockets(slot.index)  # (if its control socket's end has not already)
        why = f": {slot.error.strip().splitlines()[-1]}" if slot.error.strip() else ""
        log.warning("worker %d (pid %d) %s%s; restarting in %.1f s", slot.index, slot.proc.pid,
                    self._exit_text(rc), why, delay)
        slot.proc = None
        slot.restart_at = time.monotonic() + delay

    async def _supervise(self, ports: list[int]) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            now = time.monotonic()
            for slot in self._slots:
                if slot.proc is not None and slot.proc.poll() is not None:
                    if slot.reader_task is not None:
                        await asyncio.wait([slot.reader_task], timeout=1)  # its last words (ERROR)
                    self._reap(slot)
                elif slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot, ports)
            if self._reload:
                self._reload = False
                await self._rolling_restart(ports)
            try:
                await asyncio.wait_for(self._stop.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    def _reload_check(self) -> str:
        """Why a SIGHUP cannot restart the workers with the config as it is now ("" if it
        can): the file must still load, and the listeners and admin (which the
        supervisor holds) must be the same."""
        try:
            b = load(self.config_path)
        except (ProxyWasmError, OSError) as e:
            return str(e)
        shape = [(type(x), x.name, x.host, x.port) for x in b.listeners]
        if shape != [(type(x), x.name, x.host, x.port) for x in self.bootstrap.listeners] \
                or b.admin != self.bootstrap.admin:
            return "its listeners or admin address changed (restart serve for those)"
        return ""

    async def _rolling_restart(self, ports: list[int]) -> None:
        """SIGHUP: one worker at a time, a new process (which reads the config again) up
        on the ports before the old one drains. A new worker that cannot start ends the
        round: the running ones stay."""
        why = self._reload_check()
        if why:
            log.error("SIGHUP: the workers keep running the config they have: %s", why)
            return
        log.info("SIGHUP: restarting the workers one at a time")
        for index, old in enumerate(self._slots):
            if self._stop is None or self._stop.is_set():
                return
            if old.proc is None:
                continue
            fresh = _Slot(index, failures=old.failures)
            self._replacing[index] = old
            self._slots[index] = fresh
            try:
                if self._spawn(fresh, ports):
                    # Ready, failed, too slow, or serve asked to stop: whichever comes first.
                    ready = asyncio.ensure_future(fresh.became_ready.wait())
                    stop = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait([ready, stop], timeout=RESTART_READY_TIMEOUT,
                                       return_when=asyncio.FIRST_COMPLETED)
                    ready.cancel()
                    stop.cancel()
                if not fresh.ready:
                    slow = fresh.proc is not None and fresh.proc.poll() is None
                    await self._terminate([fresh])
                    self._slots[index] = old
                    if self._stop.is_set():
                        return
                    err = fresh.error.strip().splitlines()
                    why = (err[-1] if err else f"not ready within {RESTART_READY_TIMEOUT:.0f} s" if slow
                           else "no reason given")
                    log.error("SIGHUP: a new worker %d could not start (%s); the running workers stay",
                              index, why)
                    return
                if old.writer is not None:
                    old.writer.close()
                await self._terminate([old])
            finally:
                self._replacing.pop(index, None)

    async def _terminate(self, slots: list[_Slot]) -> None:
        procs = [s.proc for s in slots if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for p in procs:
            if p.poll() is None:
                log.warning("worker pid %d did not stop within %.0f s: SIGKILL", p.pid, self.drain_timeout)
                p.kill()
                p.wait()
        for s in slots:
            if s.reader_task is not None:
                await asyncio.wait([s.reader_task], timeout=1)

    # ---- admin ---------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """Every slot has a worker up (during a SIGHUP round, the old one counts until the
        new one is up)."""
        def up(s: _Slot | None) -> bool:
            return s is not None and s.ready and s.proc is not None and s.proc.poll() is None
        return all(up(s) or up(self._replacing.get(s.index)) for s in self._slots)

    async def gather(self) -> Gathered:
        """Every worker's metrics summed (poll_workers). Scrapes that come while a poll is
        under way share its answer, so a storm of scrapes asks each worker once at a time,
        not once per scrape (a stuck worker would otherwise hold one pending request per
        scrape until each timed out); a scrape that goes away does not cancel it."""
        if self._gathering is None or self._gathering.done():
            self._polls += 1
            self._gathering = asyncio.ensure_future(self.poll_workers())
        return await asyncio.shield(self._gathering)

    async def poll_workers(self) -> Gathered:
        """Every worker's metrics summed; a worker that does not answer within
        metrics_timeout is left out, and a note says so."""
        async def ask(slot: _Slot) -> bytes:
            if not slot.ready or slot.writer is None:
                raise ConnectionError("not running" if slot.proc is None else "starting")
            seq = next(self._seq) & 0xFFFFFFFF
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            slot.pending[seq] = fut
            try:
                slot.writer.write(control.frame(control.METRICS, seq))
                await slot.writer.drain()
                return await fut
            finally:
                slot.pending.pop(seq, None)

        slots = list(self._slots) + list(self._replacing.values())
        answers = await asyncio.gather(*(asyncio.wait_for(ask(s), self.metrics_timeout) for s in slots),
                                       return_exceptions=True)
        snaps: list[list[metrics.Metric]] = []
        notes: list[str] = []
        for slot, a in zip(slots, answers):
            reason = ""
            if isinstance(a, bytes):
                try:
                    snaps.append(metrics.parse(a))
                    continue
                except ValueError as e:
                    reason = str(e)
            elif isinstance(a, asyncio.TimeoutError):
                reason = f"no answer within {self.metrics_timeout:g} s"
            else:
                reason = str(a) or type(a).__name__
            pid = f"pid {slot.pid}" if slot.pid is not None else "no process"
            notes.append(f"pyproxywasm: worker process {slot.index} ({pid}) left out: {reason}")
        merged = metrics.merge(snaps)
        merged.append(metrics.Metric("pyproxywasm.processes", "gauge", self.processes))
        merged.append(metrics.Metric("pyproxywasm.processes_reporting", "gauge", len(snaps)))
        merged.append(metrics.Metric("pyproxywasm.admin_polls", "counter", self._polls))
        return Gathered(merged, notes)

    # ---- lifecycle -----------------------------------------------------------------------
    def run(self, announce: Callable[["Supervisor"], None] | None = None) -> None:
        """Starts the workers, waits for SIGINT/SIGTERM, stops them. Raises StartError
        when a worker cannot start at first (nothing is left running then)."""
        asyncio.run(self._main(announce))

    async def _main(self, announce: Callable[["Supervisor"], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        ports = self._reserve()
        admin = admin_task = None
        try:
            for slot in self._slots:
                self._spawn(slot, ports)
            waits = [asyncio.ensure_future(s.became_ready.wait()) for s in self._slots]
            stop_wait = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([asyncio.ensure_future(asyncio.wait(waits)), stop_wait],
                               return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            failed = [s for s in self._slots if not s.ready]
            if self._stop.is_set():
                return
            if failed:
                s = failed[0]
                if s.proc is not None:
                    await asyncio.get_running_loop().run_in_executor(None, s.proc.wait)
                if s.reader_task is not None:
                    await asyncio.wait([s.reader_task], timeout=1)
                what = s.error.strip() or (self._exit_text(s.proc.returncode) if s.proc else "did not start")
                raise StartError(f"worker {s.index} could not start: {what}")
            if self._admin_sock is not None:
                admin = _uvicorn(AdminApp(self.bootstrap.stats_tags, self.is_ready, self.gather,
                                          listeners=lambda: self.bootstrap.listener_addresses(self.ports)))
                admin_task = asyncio.ensure_future(admin.serve(sockets=[self._admin_sock]))
                while not admin.started and not admin_task.done():
                    await asyncio.sleep(0.005)
                if admin_task.done():
                    admin_task.result()
            if announce is not None:
                announce(self)
            await self._supervise(ports)
        finally:
            await self._terminate(self._slots)
            if admin is not None and admin_task is not None:
                admin.should_exit = True
                await asyncio.wait([admin_task], timeout=5)
            self._close_sockets()
            if self.shared_state is not None and self.shared_state.kind == "shm":
                remove_segment(self.shared_state.segment)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_hup(self) -> None:
        self._reload = True
