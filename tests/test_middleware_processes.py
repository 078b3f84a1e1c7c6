"""The middleware under real worker processes. ASGI under `uvicorn --workers 2`: shared
data in one shared-memory segment is one counter for both worker processes; metrics are
each process's, exported with a pid label (metrics.process_labels) and adding up to the
total, or summed by any worker through a MetricsDirectory. WSGI under gunicorn's forking
sync workers with `--preload`: one counter too."""
from __future__ import annotations

import http.client
import json
import os
import importlib.util
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import GO_HTTP
from _servers import free_port

APP = '''
import json, os
from pyproxywasm import PluginConfig, VmConfig, metrics
from pyproxywasm.adapters import ProxyWasmMiddleware
from pyproxywasm.backends import SharedMemory
from pyproxywasm.metrics_dir import MetricsDirectory

spool = MetricsDirectory(os.environ["PW_METRICS_DIR"], interval=0.2).start()


async def inner(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    count = dict(scope["headers"]).get(b"x-count", b"").decode()
    await answer(send, json.dumps({"pid": os.getpid(), "count": count}).encode())


async def answer(send, body):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


plugin = PluginConfig(VmConfig(os.environ["PW_PLUGIN"]), configuration=b"shared metrics")
filtered = ProxyWasmMiddleware(inner, plugins=[plugin],
                               host_options={"shared_state": SharedMemory(name=os.environ["PW_SEGMENT"])})


async def app(scope, receive, send):
    # this process's metrics, each line labelled with its pid (not through the filter)
    if scope["type"] == "http" and scope["path"] == "/metrics":
        return await answer(send, metrics.prometheus_text(labels=metrics.process_labels()).encode())
    if scope["type"] == "http" and scope["path"] == "/metrics/all":  # every worker's, summed
        return await answer(send, spool.prometheus_text().encode())
    await filtered(scope, receive, send)
'''


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _stop(p: subprocess.Popen, sig: int, segment: str) -> None:
    """Stops the server as its own signal asks (killed after 30 s) and removes its segment."""
    p.send_signal(sig)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    try:
        os.unlink(f"/dev/shm/{segment}")
    except FileNotFoundError:
        pass


def get(port: int, path: str = "/") -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200
        return r.read()
    finally:
        c.close()


def test_uvicorn_workers_share_one_counter_and_export_metrics_per_pid(tmp_path):
    (tmp_path / "pwapp.py").write_text(APP)
    port = free_port()
    segment = f"pyproxywasm-test-{os.getpid()}-{port}"
    env = dict(os.environ, PW_PLUGIN=str(GO_HTTP), PW_SEGMENT=segment, PW_METRICS_DIR=str(tmp_path / "metrics"))
    p = subprocess.Popen([sys.executable, "-m", "uvicorn", "pwapp:app", "--workers", "2", "--host", "127.0.0.1",
                          "--port", str(port), "--log-level", "warning", "--app-dir", str(tmp_path)],
                         cwd=tmp_path, env=env, stderr=(tmp_path / "server.err").open("w"), text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get(port)
                break
            except OSError:
                assert p.poll() is None, (tmp_path / "server.err").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        # one request each on a new connection: uvicorn's workers take turns accepting them
        # (once both are up: the first answers may all come from the first one started)
        answers = []
        while len({a["pid"] for a in answers}) < 2 or len(answers) < 60:
            answers.append(json.loads(get(port)))
            assert time.monotonic() < deadline, answers
        pids = {a["pid"] for a in answers}
        n = len(answers) + 1  # with the first request, the readiness probe
        # one counter for both processes: every request counted exactly once
        assert sorted(int(a["count"]) for a in answers) == list(range(2, n + 1))
        # each process exports its own metrics, told apart by pid; together they are all requests
        totals: dict[str, int] = {}
        for _ in range(200):
            text = get(port, "/metrics").decode()
            m = re.search(r'^requests_total\{pid="(\d+)"\} (\d+)$', text, re.M)
            assert m, text
            totals[m.group(1)] = int(m.group(2))
            if len(totals) == 2:
                break
        assert {int(pid) for pid in totals} == pids
        assert sum(totals.values()) == n  # (the first request, the readiness probe, included)
        assert all(totals[str(pid)] >= sum(a["pid"] == pid for a in answers) for pid in pids)
        # through the metrics directory, any worker answers the sum (others' as of 0.2 s ago)
        time.sleep(0.5)
        for _ in range(4):
            assert re.search(rf"^requests_total\{{\}} {n}$", get(port, "/metrics/all").decode(), re.M)
        assert sorted(os.listdir(tmp_path / "metrics")) == sorted(f"{pid}.pwmetrics" for pid in pids)
    finally:
        _stop(p, signal.SIGINT, segment)


WSGI_APP = '''
import json, os
from pyproxywasm import PluginConfig, VmConfig
from pyproxywasm.adapters import ProxyWasmWSGIMiddleware
from pyproxywasm.backends import SharedMemory
from pyproxywasm.metrics_dir import MetricsDirectory


def inner(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "count": environ.get("HTTP_X_COUNT", "")}).encode()
    start_response("200 OK", [("content-length", str(len(body)))])
    return [body]


plugin = PluginConfig(VmConfig(os.environ["PW_PLUGIN"]), configuration=b"shared metrics")
filtered = ProxyWasmWSGIMiddleware(inner, plugins=[plugin],
                                   host_options={"shared_state": SharedMemory(name=os.environ["PW_SEGMENT"])})
# started here, in gunicorn's master (--preload): each forked worker publishes its own
spool = MetricsDirectory(os.environ["PW_METRICS_DIR"], interval=0.2).start()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/metrics/all":
        body = spool.prometheus_text().encode()
        start_response("200 OK", [("content-length", str(len(body)))])
        return [body]
    return filtered(environ, start_response)
'''


@pytest.mark.skipif(not _has("gunicorn"), reason="gunicorn is not installed (it is in the test extra)")
def test_gunicorn_preload_workers_share_one_counter(tmp_path):
    """gunicorn's sync workers (fork), the app imported once in the master (--preload): the
    WSGI middleware makes its Host in each worker, and they count in one segment; a
    MetricsDirectory started in the master publishes from each worker after the fork."""
    (tmp_path / "pwwsgi.py").write_text(WSGI_APP)
    port = free_port()
    segment = f"pyproxywasm-test-{os.getpid()}-{port}"
    env = dict(os.environ, PW_PLUGIN=str(GO_HTTP), PW_SEGMENT=segment, PW_METRICS_DIR=str(tmp_path / "metrics"))
    p = subprocess.Popen([sys.executable, "-m", "gunicorn", "pwwsgi:app", "-w", "2", "--preload",
                          "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--chdir", str(tmp_path)],
                         cwd=tmp_path, env=env, stderr=(tmp_path / "server.err").open("w"), text=True)
    try:
        deadline = time.monotonic() + 120
        answers = []
        while len({a["pid"] for a in answers}) < 2 or len(answers) < 40:
            try:
                answers.append(json.loads(get(port)))
            except OSError:
                assert p.poll() is None, (tmp_path / "server.err").read_text()
                time.sleep(0.1)
            assert time.monotonic() < deadline, answers
        assert len({a["pid"] for a in answers}) == 2 and p.pid not in {a["pid"] for a in answers}
        assert sorted(int(a["count"]) for a in answers) == list(range(1, len(answers) + 1))
        # the metrics directory, started before the fork, has each worker's file: any sums all
        time.sleep(0.6)
        for _ in range(4):
            text = get(port, "/metrics/all").decode()
            assert re.search(rf"^requests_total\{{\}} {len(answers)}$", text, re.M), text
    finally:
        _stop(p, signal.SIGTERM, segment)


def test_metrics_directory_drops_dead_and_reused_pids_files(tmp_path):
    """A dead process's file and its unfinished write are removed, and so is the file of a
    pid now held by a process started after its last write (a reused pid): none counts."""
    from pyproxywasm.metrics_dir import MetricsDirectory

    d = MetricsDirectory(tmp_path)
    d.publish()
    snapshot = d.own_file.read_bytes()
    dead = next(p for p in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{p}"))
    (tmp_path / f"{dead}.pwmetrics").write_bytes(snapshot)
    (tmp_path / f".{dead}.1234.tmp").write_bytes(b"half a snapshot")
    reused = tmp_path / f"{os.getppid()}.pwmetrics"  # alive, started long after 1970
    reused.write_bytes(snapshot)
    os.utime(reused, (1000, 1000))
    d.collect()
    assert os.listdir(tmp_path) == [f"{os.getpid()}.pwmetrics"]
