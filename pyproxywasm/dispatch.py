"""Dispatchers and workers: how events reach the thread that owns a VM.

Every thread that owns VMs has one Dispatcher (C: an eventfd plus a lock-free inbox). Other
threads post to it — a queue notification, a job — and the owner runs it: pending
on_queue_ready calls and due ticks are delivered there, never inside another callback.

- A Worker is a thread that does nothing else: it sleeps in poll() on the dispatcher's
  fd (with the next tick as timeout) and runs jobs handed to it with call().
- An asyncio loop thread can do the same with loop.add_reader(dispatcher.fileno(), ...).
- A thread with no loop (a WSGI server thread) gets a dispatcher in autorun mode: what is
  pending is delivered when it next starts a stream.
"""
from __future__ import annotations

import collections
import concurrent.futures
import select
import struct
import threading
import time
from typing import Any, Callable

from ._binding import ffi, lib, raise_for
from .errors import HostClosedError, ProxyWasmError

_NO_TICK = 2**64 - 1
_CHANGED = struct.Struct("<QI")  # (vm_key, context id) records of pw_dispatcher_changed
_CHANGED_BATCH = 256


def wait_readable(fd: int, timeout: float | None) -> None:
    """Sleeps until fd is readable or timeout (seconds; None: no limit) passes. poll(),
    not select(): a busy process has descriptors past select()'s limit of 1,024."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))


class Dispatcher:
    """The dispatcher of the thread that creates it."""

    def __init__(self, autorun: bool = False) -> None:
        ptr = lib.pw_dispatcher_new()
        if ptr == ffi.NULL:
            raise ProxyWasmError("cannot create a dispatcher (out of file descriptors?)")
        # Freed with this object (never while a thread can still wake it); close() only
        # closes it, after which wake() is a no-op and run() raises HostClosedError.
        self.ptr = ffi.gc(ptr, lib.pw_dispatcher_free)
        self.closed = False
        self.thread = threading.get_ident()
        self.autorun = autorun
        lib.pw_dispatcher_set_autorun(ptr, autorun)
        self._watchers: dict[tuple[int, int], Callable[[], None]] = {}
        self._changed = ffi.new("uint8_t[]", _CHANGED.size * _CHANGED_BATCH)
        self._changed_len = ffi.new("size_t *")

    def fileno(self) -> int:
        """Readable when there is something to run (for select/poll or add_reader)."""
        return int(lib.pw_dispatcher_fd(self.ptr))

    def wake(self) -> None:
        """From any thread: makes the fd readable."""
        lib.pw_dispatcher_wake(self.ptr)

    def run(self) -> int:
        """On the owner thread: delivers queue notifications, outbound call answers and due
        ticks, then tells the watchers of streams those events changed."""
        n = lib.pw_dispatcher_run(self.ptr)
        if n < 0:
            raise_for(n)
        if self._watchers and n:
            self._notify()
        return int(n)

    def watch(self, vm_key: int, context_id: int, callback: Callable[[], None]) -> None:
        """Calls callback once, on this thread after a run, when an event (a tick, a queue
        notification, a call's answer) continues, answers or resets that stream: how an
        embedding learns that a paused stream can go on without polling it."""
        if not self._watchers:
            lib.pw_dispatcher_track_changes(self.ptr, 1)
        self._watchers[(vm_key, context_id)] = callback

    def unwatch(self, vm_key: int, context_id: int) -> None:
        self._watchers.pop((vm_key, context_id), None)
        if not self._watchers and self.ptr is not None:
            lib.pw_dispatcher_track_changes(self.ptr, 0)

    def _notify(self) -> None:
        size = _CHANGED.size * _CHANGED_BATCH
        more = True
        while more:
            more = lib.pw_dispatcher_changed(self.ptr, self._changed, size, self._changed_len)
            data = ffi.buffer(self._changed, self._changed_len[0])[:]
            for key in _CHANGED.iter_unpack(data):
                callback = self._watchers.pop(key, None)
                if callback is not None:
                    callback()
        if not self._watchers:
            lib.pw_dispatcher_track_changes(self.ptr, 0)

    def wait(self, until: Callable[[], bool], timeout: float | None = None) -> bool:
        """On the owner thread: runs this dispatcher (waiting on its fd, with the next tick
        as timeout) until until() is true; False if timeout (seconds) passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.fileno()
        while not until():
            wait = self.next_timeout()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = left if wait is None else min(wait, left)
            wait_readable(fd, wait)
            self.run()
        return True

    def next_timeout(self) -> float | None:
        """Seconds until the next tick on this thread's VMs, or None."""
        ns = lib.pw_dispatcher_next_tick_in(self.ptr)
        return None if ns == _NO_TICK else ns / 1e9

    def attach(self, loop: Any, after: Callable[[], None] | None = None) -> Callable[[], None]:
        """Serves this dispatcher from an asyncio loop running on its owner thread: a
        reader on the fd for posted events, a timer for the next tick. Returns detach().
        after(), if given, is called after every run: a plugin may have resumed streams
        there, which the embedding then re-checks. While attached the loop alone runs the
        dispatcher (no autorun inside a stream's start)."""
        timer = None
        lib.pw_dispatcher_set_autorun(self.ptr, False)

        def run() -> None:
            nonlocal timer
            self.run()
            if after is not None:
                after()
            if timer is not None:
                timer.cancel()
            wait = self.next_timeout()
            timer = loop.call_later(wait, run) if wait is not None else None

        def detach() -> None:
            loop.remove_reader(self.fileno())
            if timer is not None:
                timer.cancel()
            lib.pw_dispatcher_set_autorun(self.ptr, self.autorun)

        loop.add_reader(self.fileno(), run)
        run()
        return detach

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            lib.pw_dispatcher_close(self.ptr)


class Worker:
    """A thread that owns its own VMs and runs their events: Envoy's worker."""

    def __init__(self, name: str, setup: Callable[[Dispatcher], None],
                 teardown: Callable[[Dispatcher, float], None], manual: bool = False) -> None:
        """manual: the thread runs jobs only; its dispatcher (ticks, queue notifications,
        call answers) runs when a job runs it (the testing harness, for deterministic
        tests on a virtual clock)."""
        self.name = name
        self.manual = manual
        self._job_posted = threading.Event()  # manual mode: wakes the thread for a job
        self._setup, self._teardown = setup, teardown
        self._jobs: collections.deque[tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]]] = collections.deque()
        self._jobs_lock = threading.Lock()  # call() vs the end of the thread
        self._ended = False
        self._stopping = False
        self._stop_by = float("inf")
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.dispatcher: Dispatcher | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        """Starts the thread and waits until its VMs are up (their errors raise here)."""
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            self.thread.join()
            raise self._error

    @property
    def ident(self) -> int | None:
        return self.thread.ident

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Runs fn(*args) on this worker's thread; the result comes back as a Future."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._jobs_lock:
            if self._stopping or self._ended:
                raise HostClosedError(f"{self.name} is stopping")
            self._jobs.append((fn, args, fut))
        assert self.dispatcher is not None  # set before start() returns
        self._wake()
        return fut

    def _wake(self) -> None:
        if self.manual:
            self._job_posted.set()
        else:
            assert self.dispatcher is not None
            self.dispatcher.wake()

    def _run_jobs(self) -> None:
        while self._jobs:
            fn, args, fut = self._jobs.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)

    def _main(self) -> None:
        try:
            self.dispatcher = Dispatcher()
            self._setup(self.dispatcher)
        except BaseException as e:  # noqa: BLE001 - re-raised by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        d, fd = self.dispatcher, self.dispatcher.fileno()
        while not (self._stopping and not self._jobs):
            if self.manual:
                self._job_posted.wait()
                self._job_posted.clear()
            else:
                wait_readable(fd, d.next_timeout())
                d.run()
            self._run_jobs()
        try:
            d.run()
        except ProxyWasmError:
            pass
        try:
            self._teardown(d, max(0.0, self._stop_by - time.monotonic()))
        finally:
            d.close()
            with self._jobs_lock:
                self._ended = True
                left = list(self._jobs)
                self._jobs.clear()
            for _fn, _args, fut in left:  # no Future is left unresolved
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(HostClosedError(f"{self.name} stopped before running the job"))

    def stop(self, timeout: float = 5.0,
             interrupt: Callable[[int | None], None] | None = None) -> None:
        """Finishes queued jobs and events, shuts the plugins down, and ends the thread,
        within `timeout` seconds: past it, interrupt(thread ident) is called (it makes a
        running guest trap) and the thread gets a short grace; a thread that still runs is
        left behind (it is a daemon). From the worker's own thread (a job closing the
        host), it only asks the thread to end once the job returns."""
        if not self.thread.is_alive():
            return
        self._stop_by = time.monotonic() + timeout
        with self._jobs_lock:
            self._stopping = True
        assert self.dispatcher is not None  # the thread is alive
        self._wake()
        if threading.get_ident() == self.thread.ident:
            return
        self.thread.join(timeout)
        if self.thread.is_alive() and interrupt is not None:
            interrupt(self.thread.ident)
            self.thread.join(0.05)
