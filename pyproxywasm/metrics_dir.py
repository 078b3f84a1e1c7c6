"""Metrics summed over the worker processes of one machine, through a directory.

Under `uvicorn --workers N` or gunicorn every worker process has its own metrics (the C
core's, per process), and a scrape of the shared port reaches one worker at random. A
`MetricsDirectory` gives any worker the sum: each process writes its snapshot (the C
core's `pw_metrics_dump` records) to `<directory>/<pid>.pwmetrics` every `interval`
seconds from a daemon thread, and `collect()` writes the caller's own snapshot fresh,
reads every other live process's file and adds them up (metrics.merge: counters, gauges,
histogram buckets). Other processes' figures are therefore up to `interval` old; a
process that ended drops out with its counts (its file is removed by the process itself
at exit, or by the next collect that finds its pid gone, or taken by a process started
after the file's last write), so a sum can go down, as a counter does when a process
restarts.

The alternative without a directory is each process exporting its own with a pid label
(metrics.prometheus_text(labels=metrics.process_labels())), left to Prometheus to sum.
"""
from __future__ import annotations

import atexit
import os
import pathlib
import threading
from typing import Iterable

from . import metrics

SUFFIX = ".pwmetrics"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_at(pid: int) -> float | None:
    """When process pid started (seconds since the epoch; Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_gone(pid: int, written: float) -> bool:
    """The process that wrote a file last at `written` is gone: pid is dead, or now names a
    process started after that write (a live writer rewrites its file every interval)."""
    if not _alive(pid):
        return True
    started = _started_at(pid)
    return started is not None and written < started - 1.0  # (start times are in ticks)


class MetricsDirectory:
    """One service's processes' metrics, shared through `path` (created if missing; give
    every worker the same path, private to the service's user)."""

    def __init__(self, path: str | os.PathLike[str], namespace: str = "", interval: float = 1.0) -> None:
        self.path = pathlib.Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.namespace = namespace
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hooked = False

    @property
    def own_file(self) -> pathlib.Path:
        return self.path / f"{os.getpid()}{SUFFIX}"

    def publish(self) -> None:
        """Writes this process's snapshot (atomically: a reader sees the old or the new)."""
        data = metrics.dump(self.namespace)
        tmp = self.path / f".{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.own_file)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def start(self) -> "MetricsDirectory":
        """Publishes every `interval` seconds from a daemon thread until stop() or exit.
        A process forked after start() (gunicorn --preload imports the app in its master)
        starts its own thread, for its own file."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pyproxywasm-metrics-dir", daemon=True)
            self._thread.start()
            if not self._hooked:
                self._hooked = True
                atexit.register(self.stop)
                os.register_at_fork(after_in_child=self._forked)
        return self

    def _forked(self) -> None:
        if self._thread is not None and not self._stop.is_set():
            self._stop = threading.Event()
            self._thread = None
            self.start()

    def _run(self) -> None:
        while True:
            try:
                self.publish()
            except OSError:
                pass  # the directory went away: try again next time
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        """Stops publishing and removes this process's file."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        try:
            self.own_file.unlink()
        except FileNotFoundError:
            pass

    def collect(self) -> list[metrics.Metric]:
        """Every live process's metrics summed (this one's as of now)."""
        self.publish()
        snaps: list[list[metrics.Metric]] = []
        for f in self.path.iterdir():
            name = f.name
            tmp = name.startswith(".") and name.endswith(".tmp")  # ".<pid>.<thread>.tmp"
            if not tmp and not name.endswith(SUFFIX):
                continue
            try:
                pid = int(name.split(".")[1] if tmp else name[:-len(SUFFIX)])
                written = f.stat().st_mtime
            except (ValueError, IndexError, OSError):
                continue
            if pid != os.getpid() and _owner_gone(pid, written):
                f.unlink(missing_ok=True)  # a dead process's file, or its unfinished write
                continue
            if tmp:
                continue
            try:
                snaps.append(metrics.parse(f.read_bytes()))
            except (OSError, ValueError):
                continue  # gone or replaced meanwhile
        return metrics.merge(snaps)

    def prometheus_text(self, stats_tags: Iterable[metrics.StatsTag] = ()) -> str:
        """collect() in Prometheus' text format (metrics.prometheus_text)."""
        return metrics.prometheus_text(self.namespace, stats_tags, metrics=self.collect())
