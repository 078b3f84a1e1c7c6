"""One worker process of `serve --processes N` (started by supervisor.py, never by hand).

    PYPROXYWASM_WORKER_SPEC='<json spec>' python -m pyproxywasm.serve.worker

(The spec comes in the environment, not the command line: it may hold a Redis URL with its
password, and a process's environment is readable by its owner only, its command line by
every local user.)

It runs today's single-process Server (its `--concurrency` threads, its VMs, its
singleton services unless the supervisor said otherwise) on the ports the supervisor
resolved, on the listening sockets the supervisor made for its slot (in the port's
SO_REUSEPORT group; they outlive this process, so none closes with connections queued
on it), with no admin listener (the supervisor has the one admin port). It tells the supervisor when it
accepts, answers its metrics requests, and stops — draining like Server.stop() — on
SIGTERM or when the supervisor goes away: the control socket reaches end of file, and
PR_SET_PDEATHSIG sends SIGTERM if the supervisor dies, so no worker is left orphaned
even when the supervisor is SIGKILLed.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Sequence

from .. import metrics
from ..logs import EnvoyFormatter
from ..errors import ProxyWasmError
from . import control
from .config import Bootstrap, load
from .server import Server
from .shared_state import SharedStateSpec, remove_segment

log = logging.getLogger("pyproxywasm.serve.worker")
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM when the supervisor dies; if it died before this call, exit now (the
    kernel then has no parent left to watch)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control socket's end of file remains
        pass
    if os.getppid() != parent:
        os._exit(1)


def for_worker(b: Bootstrap, ports: Sequence[int], services: bool) -> Bootstrap:
    """The bootstrap as this worker serves it: the supervisor's ports, no admin, the
    singleton services only where they run."""
    listeners = tuple(dataclasses.replace(lst, port=port) for lst, port in zip(b.listeners, ports))
    return dataclasses.replace(b, listeners=listeners, admin=None,
                               services=b.services if services else ())


class _Control:
    """The supervisor's end of things: frames out under a lock, requests served on a thread."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop
        self.lock = threading.Lock()

    def send(self, kind: bytes, seq: int = 0, payload: bytes = b"") -> None:
        with self.lock:
            try:
                self.sock.sendall(control.frame(kind, seq, payload))
            except OSError:
                self.stop.set()  # the supervisor is gone

    def serve(self) -> None:
        try:
            while True:
                f = control.read_frame(self.sock)
                if f is None:
                    break
                kind, seq, _ = f
                if kind == control.METRICS:
                    self.send(control.METRICS, seq, metrics.dump())
        except OSError:
            pass
        finally:
            self.stop.set()


def main() -> int:
    spec: dict[str, Any] = json.loads(os.environ.pop(control.SPEC_ENV))
    die_with_parent(spec["supervisor"])
    # Ctrl-C in a terminal reaches the whole process group: the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handler = logging.StreamHandler()  # plugin lines with Envoy's "wasm log ...: " prefix
    handler.setFormatter(EnvoyFormatter(
        "[%(asctime)s][%(process)d][%(threadName)s][%(levelname)s][%(name)s] %(envoy_prefix)s%(message)s"))
    logging.basicConfig(level=getattr(logging, spec["log_level"].upper()), handlers=[handler])
    ctl = _Control(socket.socket(fileno=spec["fd"]), stop)
    state = SharedStateSpec(**spec["shared_state"]) if spec["shared_state"] else None
    try:
        bootstrap = for_worker(load(spec["config"]), spec["ports"], spec["services"])
        sockets = [[socket.socket(fileno=fd) for fd in row] for row in spec["sockets"]]
        server = Server(bootstrap, concurrency=spec["concurrency"], client=spec["client"],
                        shared_state=state.backend() if state else None, sockets=sockets)
        server.start()
    except (ProxyWasmError, OSError, ValueError, ImportError) as e:
        ctl.send(control.ERROR, 0, str(e).encode())
        return 2
    except BaseException:
        ctl.send(control.ERROR, 0, traceback.format_exc().encode())
        raise
    try:
        ctl.send(control.READY, 0, json.dumps({"pid": os.getpid(), "ports": server.ports}).encode())
        threading.Thread(target=ctl.serve, name="pyproxywasm-control", daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    if state is not None and state.kind == "shm" and os.getppid() != spec["supervisor"]:
        remove_segment(state.segment)  # the supervisor died without cleaning up
    return 0


if __name__ == "__main__":
    sys.exit(main())
