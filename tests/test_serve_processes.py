"""`pyproxywasm serve --processes N`: a real supervisor and its worker processes, run as the
CLI from outside the checkout, in front of an upstream started here; the committed Go test
plugin counts requests in shared data (CAS loop) and in a counter metric."""
from __future__ import annotations

import http.client
import http.server
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import GO_HTTP
from redis_server import needs_redis, redis_server  # noqa: F401  (a fixture)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
LOCAL = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}


# ---- processes ------------------------------------------------------------------------------
def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of pid, from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(cond, timeout: float = 30, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def socket_owner(local_port: int, remote_port: int, pids: set[int]) -> int | None:
    """Which of pids holds the 127.0.0.1 TCP socket local_port → remote_port."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == f"0100007F:{local_port:04X}" and parts[2] == f"0100007F:{remote_port:04X}":
                inode = parts[9]
                break
    if inode is None:
        return None
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


# ---- the upstream -----------------------------------------------------------------------------
class Upstream(http.server.ThreadingHTTPServer):
    """Answers 200; records each request's x-count and which worker process sent it."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, int | None]] = []
        self.workers: set[int] = set()  # the pids to look the sender up among
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv: Upstream = self.server
        pid = socket_owner(self.client_address[1], srv.port, srv.workers)
        with srv.lock:
            srv.seen.append((self.headers.get("x-count"), pid))
        if self.path.startswith("/slow/"):
            time.sleep(int(self.path.split("/")[2]) / 1000)
        body = json.dumps({"count": self.headers.get("x-count"), "pid": pid}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.shutdown()
    u.server_close()


def config(upstream_port: int, plugin: str = "metrics shared", **top) -> dict:
    filt = {"name": "envoy.filters.http.wasm", "typed_config": {"@type": WASM, "config": {
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin},
        "vm_config": {"code": {"local": {"filename": str(GO_HTTP)}}}}}}
    vhosts = [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    return {"static_resources": {
        "listeners": [{"name": "main", "address": LOCAL, "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "stat_prefix": "in", "route_config": {"virtual_hosts": vhosts},
                "http_filters": [filt, {"name": "envoy.filters.http.router"}]}}]}]}],
        "clusters": [{"name": "up", "connect_timeout": "1s", "type": "STATIC", "load_assignment": {"endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}]},
        "admin": {"address": LOCAL}, **top}


class Serve:
    """`python -m pyproxywasm serve CONFIG ARGS...` from tmp_path; ports from its announcement."""

    def __init__(self, tmp_path, doc: dict, *args: str) -> None:
        cfg = self.cfg = tmp_path / "serve.json"
        cfg.write_text(json.dumps(doc))
        self.err_path = tmp_path / "serve.err"
        self.err = open(self.err_path, "w")
        self.p = subprocess.Popen([sys.executable, "-m", "pyproxywasm", "serve", str(cfg), *args], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True)

    def announced(self) -> "Serve":
        """Waits for serve's announcement (where it listens)."""
        self.lines: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.p.stdout] and None, daemon=True).start()
        deadline = time.monotonic() + 240  # generous: the sanitizer run compiles slowly
        while not self.lines or not self.lines[-1].startswith("Ctrl-C"):
            assert self.p.poll() is None or not lines.empty(), self.stderr()
            try:
                self.lines.append(lines.get(timeout=0.5).strip())
            except queue.Empty:
                assert time.monotonic() < deadline, f"serve did not start in time\n{self.stderr()}"
        text = "\n".join(self.lines)
        self.port = int(re.search(r"main: http://127.0.0.1:(\d+)", text).group(1))
        self.admin = int(re.search(r"admin: http://127.0.0.1:(\d+)/", text).group(1))
        return self

    @property
    def pid(self) -> int:
        return self.p.pid

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text()

    def workers(self) -> set[int]:
        return children(self.p.pid)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(30)
        finally:
            self.err.close()


@pytest.fixture
def serve(tmp_path):
    made: list[Serve] = []

    def start(doc: dict, *args: str) -> Serve:
        s = Serve(tmp_path, doc, *args)
        made.append(s)  # (cleaned up below even if it never announces itself)
        return s.announced()
    yield start
    for s in made:
        workers = s.workers()
        if s.p.poll() is None:
            s.p.kill()
            s.p.wait(10)
        for w in workers:  # never leave a worker behind, whatever the test did
            if alive(w):
                os.kill(w, signal.SIGKILL)
        try:
            os.unlink(segment(s.pid))  # nor its segment (a test that failed midway)
        except FileNotFoundError:
            pass


def get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    """One request on a new connection (a new source port: the kernel hashes it to a worker)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def status_or_failed(port: int, timeout: float = 10) -> int:
    """get()'s status, or -1 (and why, printed) when the connection failed."""
    try:
        return get(port, timeout=timeout)[0]
    except OSError as e:
        print("request failed:", e)
        return -1


def admin(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    status, body = get(port, path, timeout)
    return status, body.decode()


def segment(pid: int) -> str:
    return f"/dev/shm/pyproxywasm-serve-{pid}"


# ---- tests ------------------------------------------------------------------------------------
def test_two_processes_share_the_port_count_every_request_once_and_sum_metrics(serve, upstream):
    doc = config(upstream.port, stats_config={"stats_tags": [{"tag_name": "kind", "regex": "^body(_(size))$"}]})
    s = serve(doc, "--processes", "2")
    assert "(2 processes × 1 worker)" in s.lines[0]
    assert f"shared state: shared memory pyproxywasm-serve-{s.pid}" in s.lines[1]
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert len(workers) == 2
    upstream.workers = workers
    assert os.path.exists(segment(s.pid))
    assert admin(s.admin, "/ready") == (200, "LIVE\n")
    n = 60
    answers = [get(s.port) for _ in range(n)]
    assert all(status == 200 for status, _ in answers)
    # every request went through one worker or the other, and both took some
    senders = [pid for _, pid in upstream.seen]
    assert set(senders) == workers, senders
    # one counter in shared memory for both processes: each request counted exactly once
    counts = sorted(int(c) for c, _ in upstream.seen)
    assert counts == list(range(1, n + 1))
    # the counter metric summed over the processes, exactly
    status, prom = admin(s.admin, "/stats/prometheus")
    assert status == 200
    assert re.search(rf"^requests_total\{{\}} {n}$", prom, re.M), prom  # Envoy's exposition: {} when untagged
    assert re.search(rf'^body_count\{{kind="size"\}} {n}$', prom, re.M), prom  # stats tags still extracted
    assert "pyproxywasm_processes_reporting{} 2" in prom and "left out" not in prom
    status, stats = admin(s.admin, "/stats")
    assert re.search(rf"^requests_total: {n}$", stats, re.M) and re.search(r"^inflight: 0$", stats, re.M)
    # each worker alone has less: the sum is the supervisor's, not one worker's answer
    per_worker = {pid: senders.count(pid) for pid in workers}
    assert all(0 < c < n for c in per_worker.values())
    assert s.stop() == 0
    assert not os.path.exists(segment(s.pid))  # the supervisor removed its segment


def test_killed_worker_restarts_stuck_worker_left_out_and_sigterm_leaves_nothing(serve, upstream):
    s = serve(config(upstream.port), "--processes", "2")
    first = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    upstream.workers = set(first)
    for _ in range(10):
        assert get(s.port)[0] == 200
    victim, other = sorted(first)
    os.kill(victim, signal.SIGKILL)
    # not ready while a worker is missing (its restart waits 0.5 s, then starts a process)
    assert wait_for(lambda: admin(s.admin, "/ready")[0] == 503, 10, step=0.01)
    assert wait_for(lambda: not alive(victim), 10)
    assert wait_for(lambda: re.search(rf"\(pid {victim}\) killed by SIGKILL; restarting", s.stderr()), 10)
    # the survivor takes every connection meanwhile (the dead one's sockets left the group)
    for _ in range(20):
        assert get(s.port)[0] == 200
    # restarted (after its backoff), logged, and back in the port's group
    new = wait_for(lambda: (len(s.workers()) == 2 and s.workers() - {other}) or None, 30)
    assert new and victim not in new
    assert wait_for(lambda: admin(s.admin, "/ready")[0] == 200, 60)
    assert re.search(rf"worker \d \(pid {victim}\) killed by SIGKILL; restarting in [\d.]+ s", s.stderr())
    upstream.workers = s.workers()
    before = len(upstream.seen)
    for _ in range(40):
        assert get(s.port)[0] == 200
    assert {pid for _, pid in upstream.seen[before:]} == s.workers()
    counts = sorted(int(c) for c, _ in upstream.seen)
    assert counts == list(range(1, len(upstream.seen) + 1))  # the segment outlived the killed worker
    # a stuck worker: /stats answers within the timeout without it, and says so
    stuck = min(s.workers())
    os.kill(stuck, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, prom = admin(s.admin, "/stats/prometheus")
        took = time.monotonic() - t0
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert status == 200 and took < 5
    assert f"# pyproxywasm: worker process" in prom and f"(pid {stuck}) left out: no answer within 1 s" in prom
    assert "pyproxywasm_processes_reporting{} 1" in prom and "pyproxywasm_processes{} 2" in prom
    # a storm of scrapes while a worker is stuck: they share the polls of the workers
    # (each waits out the stuck one's timeout), not one poll per scrape
    def polls() -> int:
        return int(re.search(r"^pyproxywasm_admin_polls\{\} (\d+)$", admin(s.admin, "/stats/prometheus")[1],
                             re.M).group(1))
    before = polls()
    os.kill(stuck, signal.SIGSTOP)
    try:
        answers: list[int] = []
        scrapers = [threading.Thread(target=lambda: answers.append(admin(s.admin, "/stats/prometheus")[0]))
                    for _ in range(20)]
        for t in scrapers:
            t.start()
        for t in scrapers:
            t.join(30)
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert answers == [200] * 20
    assert polls() - before <= 6, polls() - before  # 20 without sharing (+1: polls() itself)
    # SIGTERM: the workers drain and exit, then the supervisor, with status 0
    workers = s.workers()
    assert s.stop() == 0
    assert not [w for w in workers if alive(w)]
    assert not os.path.exists(segment(s.pid))


def test_a_sigkilled_supervisor_leaves_no_worker_and_no_segment(serve, upstream):
    s = serve(config(upstream.port), "--processes", "2")
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert get(s.port)[0] == 200 and os.path.exists(segment(s.pid))
    s.p.kill()
    s.p.wait(10)
    assert wait_for(lambda: not [w for w in workers if alive(w)], 20), [w for w in workers if alive(w)]
    assert wait_for(lambda: not os.path.exists(segment(s.pid)), 10)  # a worker on its way out removed it


def test_memory_shared_state_is_per_process(serve, upstream):
    s = serve(config(upstream.port), "--processes", "2", "--shared-state", "memory")
    assert "shared state: per process (memory)" in s.lines[1]
    upstream.workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    for _ in range(40):
        assert get(s.port)[0] == 200
    by_worker: dict[int, list[int]] = {}
    for c, pid in upstream.seen:
        by_worker.setdefault(pid, []).append(int(c))
    assert set(by_worker) == upstream.workers
    # each process counts its own requests from 1
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in by_worker.values())
    assert re.search(r"^requests_total: 40$", admin(s.admin, "/stats")[1], re.M)  # metrics are still summed


def test_sighup_replaces_the_workers_one_at_a_time_without_a_failed_request(serve, upstream):
    s = serve(config(upstream.port), "--processes", "2", "--shared-state", "memory")
    old = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    statuses: list[int] = []
    done = threading.Event()

    def load() -> None:
        # Back to back, a new connection each: some are always in a listener's accept
        # queue when an old worker lets its sockets go (a socket closed with connections
        # queued resets them; the slot's sockets outlive its workers, so none is closed).
        while not done.is_set():
            statuses.append(status_or_failed(s.port))
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        os.kill(s.pid, signal.SIGHUP)
        new = wait_for(lambda: (len(s.workers()) == 2 and not (s.workers() & old) and s.workers()) or None, 60)
        assert new, s.stderr()
        assert wait_for(lambda: admin(s.admin, "/ready")[0] == 200, 30)
        time.sleep(0.3)
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert len(statuses) > 100 and set(statuses) == {200}, (len(statuses), statuses.count(-1))
    assert "SIGHUP: restarting the workers one at a time" in s.stderr()
    # a config whose plugin now fails to start: the first new worker fails, the running ones stay
    cfg = s.cfg
    good = cfg.read_text()
    cfg.write_text(json.dumps(config(upstream.port, plugin="fail")))
    os.kill(s.pid, signal.SIGHUP)
    assert wait_for(lambda: "the running workers stay" in s.stderr(), 60), s.stderr()
    assert "proxy_on_configure returned false" in s.stderr()
    assert s.workers() == new and get(s.port)[0] == 200 and admin(s.admin, "/ready")[0] == 200
    # listeners are the supervisor's: changing them needs a restart
    doc = json.loads(good)
    doc["static_resources"]["listeners"][0]["name"] = "renamed"
    cfg.write_text(json.dumps(doc))
    os.kill(s.pid, signal.SIGHUP)
    assert wait_for(lambda: "its listeners or admin address changed" in s.stderr(), 30), s.stderr()
    assert s.workers() == new
    assert s.stop() == 0


def listening_inodes(pids: set[int]) -> set[str]:
    """The socket inodes in LISTEN state that pids hold."""
    with open("/proc/net/tcp") as f:
        listening = {line.split()[9] for line in f.readlines()[1:] if line.split()[3] == "0A"}
    held = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                held.add(target[8:-1])
    return held


def test_sighup_hands_the_old_workers_sockets_and_their_queued_connections_to_the_new_ones(serve, upstream):
    s = serve(config(upstream.port), "--processes", "2")
    old = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    sockets = listening_inodes(old)
    assert len(sockets) == 2  # one per worker (one thread each)
    # A stopped worker accepts nothing: the connections the kernel hashes to its socket
    # queue there. Its replacement must take them from that same socket.
    stopped = min(old)
    os.kill(stopped, signal.SIGSTOP)
    try:
        results: list[int] = []

        clients = [threading.Thread(target=lambda: results.append(status_or_failed(s.port, 30)))
                   for _ in range(16)]
        for t in clients:
            t.start()
        time.sleep(1)
        assert len(results) < 16  # some are queued on the stopped worker's socket (p ≈ 1 - 2^-16)
        os.kill(s.pid, signal.SIGHUP)
        for t in clients:
            t.join(60)
        assert results == [200] * 16, s.stderr()
        assert alive(stopped)  # served by its replacement while it was still stopped
    finally:
        os.kill(stopped, signal.SIGCONT)
    new = wait_for(lambda: (len(s.workers()) == 2 and not (s.workers() & old) and s.workers()) or None, 60)
    assert new, s.stderr()
    assert listening_inodes(new) == sockets
    assert "Warning" not in s.stderr()  # (a worker once imported itself twice: runpy warned)
    assert s.stop() == 0


@pytest.mark.parametrize("args, message", [
    (["--processes", "0"], "argument --processes: must be at least 1, not 0"),
    (["--processes", "two"], "argument --processes: 'two' is not a whole number"),
    (["--processes", "2", "--shared-state", "redis://127.0.0.1:notaport/0"],
     "--shared-state 'redis://127.0.0.1:notaport/0': the port is not a number in 1..65535"),
    (["--shared-state", "redis://127.0.0.1:6379/zero"], "the database 'zero' is not a number"),
    (["--processes", "2", "--shared-state", "postgres://x"],
     "--shared-state 'postgres://x': expected memory, shm or redis://host:port/db"),
])
def test_bad_processes_or_shared_state_is_a_clear_error(tmp_path, args, message):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config(1)))
    p = subprocess.run([sys.executable, "-m", "pyproxywasm", "serve", str(cfg), *args], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_a_plugin_failing_in_the_workers_fails_serve_with_its_reason(tmp_path):
    cfg = tmp_path / "fail.json"
    cfg.write_text(json.dumps(config(1, plugin="fail")))
    p = subprocess.run([sys.executable, "-m", "pyproxywasm", "serve", str(cfg), "--processes", "2"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "could not start" in p.stderr and "proxy_on_configure returned false" in p.stderr
    # and no worker is left running
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and str(cfg) in cmdline(int(pid))]


def test_metric_records_cross_processes_merge_and_reject_garbage():
    """The bytes a worker sends (metrics.dump) parse back to its snapshot; two processes'
    snapshots add up kind by kind; a truncated message is a ValueError, never a crash."""
    from pyproxywasm import metrics
    from pyproxywasm.testing import PluginHarness
    from conftest import REQUEST, RESPONSE

    with PluginHarness(GO_HTTP, configuration="metrics") as h:
        for body in (b"abc", b"x" * 700):
            st = h.http()
            st.send_request_headers(REQUEST)
            st.send_response_headers(RESPONSE)
            st.send_response_body(body, end_stream=True)
            st.finish()
        data = metrics.dump(h.namespace)
        snap = metrics.parse(data)
        assert snap == metrics.snapshot(h.namespace)
        other = [metrics.Metric("requests_total", "counter", 5), metrics.Metric("only_there", "gauge", 7)]
        merged = {m.name: m for m in metrics.merge([snap, snap, other])}
        assert merged["requests_total"].value == 2 + 2 + 5
        assert merged["only_there"].value == 7
        body = merged["body_size"]
        assert (body.value, body.sum) == (4, 1406)
        assert body.buckets == tuple(2 * b for b in {m.name: m for m in snap}["body_size"].buckets)
        for cut in (1, 10, len(data) - 1):
            with pytest.raises(ValueError):
                metrics.parse(data[:cut])
        text = metrics.prometheus_text(h.namespace, labels={"pid": "42"})
        assert 'requests_total{pid="42"} 2\n' in text
        assert 'body_size_bucket{pid="42",le="+Inf"} 2\n' in text and 'body_size_count{pid="42"} 2\n' in text
        assert metrics.process_labels() == {"pid": str(os.getpid())}


@pytest.mark.parametrize("mode, processes_running_it", [("per-process", 2), ("once", 1)])
def test_singleton_services_run_in_every_process_or_once(serve, upstream, mode, processes_running_it):
    doc = config(upstream.port)
    doc["bootstrap_extensions"] = [{"name": "envoy.bootstrap.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService", "singleton": True,
        "config": {"root_id": "svc", "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "service-marker"},
            "vm_config": {"vm_id": "svc", "code": {"local": {"filename": str(GO_HTTP)}}}}}}]
    s = serve(doc, "--processes", "2", "--singletons", mode)
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert get(s.port)[0] == 200
    pids = {int(m) for m in re.findall(r"^\[[^]]+\]\[(\d+)\]\[pyproxywasm-main\]\[INFO\]\[[^]]+\] wasm log svc svc: configure svc: service-marker$",
                                       s.stderr(), re.M)}
    assert len(pids) == processes_running_it and pids <= workers, s.stderr()
    assert s.stop() == 0


def test_one_process_on_shared_memory_removes_its_segment(serve, upstream):
    s = serve(config(upstream.port), "--shared-state", "shm")
    assert "(1 worker)" in s.lines[0] and f"shared memory pyproxywasm-serve-{s.pid}" in s.lines[1]
    assert not s.workers()  # no supervisor: the one process serves
    assert os.path.exists(segment(s.pid))
    for _ in range(5):
        assert get(s.port)[0] == 200
    assert sorted(int(c) for c, _ in upstream.seen) == [1, 2, 3, 4, 5]
    assert s.stop() == 0
    assert not os.path.exists(segment(s.pid))


@needs_redis
def test_two_processes_on_redis_count_every_request_once(serve, upstream, redis_server):
    """With a password in the URL: it reaches the workers (they authenticate), and is
    neither printed nor put on the workers' command lines (readable by every local user;
    the supervisor's is the caller's own)."""
    redis_server.command("CONFIG", "SET", "requirepass", "s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{redis_server.port}/0"
    s = serve(config(upstream.port), "--processes", "2", "--shared-state", url)
    assert f"shared state: redis redis://:***@127.0.0.1:{redis_server.port}/0" in s.lines[1]
    upstream.workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    assert not any("s3cret-pw" in cmdline(pid) for pid in upstream.workers)
    for _ in range(40):
        assert get(s.port)[0] == 200
    assert {pid for _, pid in upstream.seen} == upstream.workers
    assert sorted(int(c) for c, _ in upstream.seen) == list(range(1, 41))
    assert s.stop() == 0


def test_sigterm_drains_a_request_in_flight(serve, upstream):
    s = serve(config(upstream.port), "--processes", "2", "--shared-state", "memory")
    workers = wait_for(lambda: len(s.workers()) == 2 and s.workers())
    out: dict = {}

    def slow() -> None:
        out["answer"] = get(s.port, "/slow/800")
    t = threading.Thread(target=slow)
    t.start()
    assert wait_for(lambda: upstream.seen, 10)  # the request reached the upstream: in flight
    s.p.send_signal(signal.SIGTERM)
    t.join(20)
    assert out["answer"][0] == 200  # answered, not cut: the worker drained before it exited
    assert s.p.wait(30) == 0
    assert not [w for w in workers if alive(w)]
