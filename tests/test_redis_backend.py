"""The Redis shared-state backend (csrc/redis.c) through real guests, real processes and a
real redis-server on a free 127.0.0.1 port (tests/redis_server.py): CAS totals across
processes and threads, queues from several producer processes to one consumer, outages
(the server stopped or killed, then back), prefixes, bad URLs."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.abi import Status
from pyproxywasm.backends import Redis
from pyproxywasm.errors import ConfigError

from conftest import GO_HTTP, REQUEST, WAT, BusyThread, kill_all, wait_for
from redis_server import (NO_SUPPORT, RedisServer, free_port, needs_redis_build,  # noqa: F401
                          redis_server)

# Tests taking the `redis_server` fixture skip (with the reason) without a server or without
# Redis support in the build; the configuration tests below need only the build.

PROCESSES = 4
THREADS = 2


def run_python(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh interpreter from outside the checkout (the installed package)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())


def scope_hex(vm_id: str, namespace: str = "") -> str:
    """The scope's part of a Redis key (docs/ARCHITECTURE.md: the key layout)."""
    ns = namespace.encode()
    return (len(ns).to_bytes(4, "little") + ns + vm_id.encode()).hex()


def backend_stats(host: Host) -> dict[str, int]:
    return host.backends.by_vm_id["*"].stats()


# ---- one process: the backend under the SharedState API -------------------------------
def test_shared_data_semantics_through_the_host(redis_server):
    backend = Redis(redis_server.url, prefix="sem", timeout=2.0)
    with Host([], shared_state=backend, namespace="sem") as host:
        st = host.state
        assert st.shared_data("k", vm_id="v") is None
        assert st.set_shared_data("k", b"one", vm_id="v") is Status.OK
        first = st.shared_data("k", vm_id="v")
        assert first.value == b"one" and first.cas > 0
        assert st.set_shared_data("k", b"two", cas=first.cas + 1, vm_id="v") is Status.CAS_MISMATCH
        assert st.set_shared_data("k", b"two", cas=first.cas, vm_id="v") is Status.OK
        second = st.shared_data("k", vm_id="v")
        assert second.value == b"two" and second.cas not in (0, first.cas)
        assert st.set_shared_data("absent", b"x", cas=99, vm_id="v") is Status.OK
        assert st.delete("k", vm_id="v", cas=first.cas) is Status.CAS_MISMATCH
        assert st.delete("k", vm_id="v") is Status.OK
        assert st.shared_data("k", vm_id="v") is None
        # stored where the documented layout says: prefix:d:<scope hex>:<key>, {v, c}
        raw = redis_server.command("HMGET", f"sem:d:{scope_hex('v', 'sem')}:absent", "v", "c")
        assert raw == [b"x", str(st.shared_data("absent", vm_id="v").cas).encode()]
        assert backend_stats(host)["unavailable"] == 0


def test_cas_values_wrap_past_2_32_skipping_0(redis_server):
    redis_server.command("SET", "wrap:cas", 4294967293)
    with Host([], shared_state=Redis(redis_server.url, prefix="wrap", timeout=2.0), namespace="wrap") as host:
        st = host.state
        seen = []
        for i in range(4):
            assert st.set_shared_data("k", b"%d" % i, vm_id="v") is Status.OK
            seen.append(st.shared_data("k", vm_id="v").cas)
        assert seen == [4294967294, 4294967295, 1, 2]
        assert st.set_shared_data("k", b"x", cas=2, vm_id="v") is Status.OK


def test_ttl_and_byte_cap_on_the_server(redis_server):
    with Host([], shared_state=Redis(redis_server.url, prefix="cap", max_bytes=100, timeout=2.0),
              namespace="cap") as host:
        st = host.state
        assert st.set_shared_data("a", b"x" * 59, vm_id="v") is Status.OK  # 60 bytes
        assert st.set_shared_data("b", b"x" * 59, vm_id="v") is Status.INTERNAL_FAILURE
        assert st.shared_data("b", vm_id="v") is None  # nothing stored
        assert st.expire("a", 0.1, vm_id="v") is Status.OK
        assert st.set_shared_data("a", b"y" * 59, vm_id="v") is Status.OK  # keeps the TTL
        time.sleep(0.25)
        assert st.shared_data("a", vm_id="v") is None
        # the expired key's bytes came back: the write that failed fits now
        assert st.set_shared_data("b", b"x" * 59, vm_id="v") is Status.OK
        assert redis_server.command("GET", f"cap:b:{scope_hex('v', 'cap')}") == b"60"
        # not a Redis outage: a full scope is not counted as unavailable
        assert backend_stats(host)["unavailable"] == 0


# ---- many processes ----------------------------------------------------------------------
CAS_WORKER = """
import json, sys
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.backends import Redis
url, prefix, wasm, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
if mode == "wat":
    cfg = PluginConfig(VmConfig(wasm, vm_id="cas"), deadline_ms=None)
else:
    cfg = PluginConfig(VmConfig(wasm, vm_id="cas"), configuration="shared", deadline_ms=None)
headers = [(":method", "GET"), (":path", "/"), (":authority", "x"), ("x-key", "n"),
           ("x-n", str(n))]
with Host([cfg], concurrency=%(threads)d, namespace="mp",
          shared_state=Redis(url, prefix=prefix, timeout=2.0)) as host:
    def run():
        counts = []
        for _ in range(1 if mode == "wat" else n):
            s = host.plugins[0].http_stream()
            s.send_request_headers(headers, end_stream=True)
            counts.append(s.request_headers.get("x-count"))
            s.finish()
        return counts
    results = [f.result(300) for f in [w.call(run) for w in host.workers]]
    print(json.dumps({"unavailable": host.backends.by_vm_id["*"].unavailable,
                      "counts": results}))
""" % {"threads": THREADS}


def _cas_processes(server: RedisServer, wasm, mode: str, n: int, prefix: str) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", CAS_WORKER, server.url, prefix, str(wasm),
                               mode, str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tempfile.gettempdir())
             for _ in range(PROCESSES)]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        kill_all(procs)
    return out


def test_wat_cas_increments_from_4_processes_x_2_threads_are_exact(redis_server):
    n = 150
    # A missing key reads as cas 0, which writes unconditionally (Envoy): start at 0.
    # The processes share the scope ("mp", "cas"): the same namespace and vm_id (a Host's
    # namespace keeps it apart from other hosts of this process, whatever their backend).
    with Host([], shared_state=Redis(redis_server.url, prefix="watcas", timeout=2.0), namespace="mp") as host:
        assert host.state.set_shared_data("n", (0).to_bytes(8, "little"), vm_id="cas") is Status.OK
        results = _cas_processes(redis_server, WAT / "cas_loop.wasm", "wat", n, "watcas")
        assert all(r["unavailable"] == 0 for r in results)
        total = int.from_bytes(host.state.shared_data("n", vm_id="cas").value, "little")
    assert total == PROCESSES * THREADS * n


def test_go_cas_increments_from_4_processes_x_2_threads_are_exact(redis_server):
    n = 40
    with Host([], shared_state=Redis(redis_server.url, prefix="gocas", timeout=2.0), namespace="mp") as host:
        assert host.state.set_shared_data("counter", b"0", vm_id="cas") is Status.OK
        results = _cas_processes(redis_server, GO_HTTP, "go", n, "gocas")
        assert all(r["unavailable"] == 0 for r in results)
        total = int(host.state.shared_data("counter", vm_id="cas").value)
    assert total == PROCESSES * THREADS * n
    # every request saw its own value: the increments were serialized by CAS
    seen = [int(c) for r in results for thread in r["counts"] for c in thread]
    assert sorted(seen) == list(range(1, total + 1))


PRODUCER = """
import sys
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.backends import Redis
url, wasm, me, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cfg = PluginConfig(VmConfig(wasm, vm_id="queue"), root_id="producer", configuration="p")
with Host([cfg], shared_state=Redis(url, prefix="q", timeout=2.0), namespace="pc") as host:
    s = host.plugins[0].http_stream()
    s.send_request_headers([(":path", "/"), ("x-n", n), ("x-p", me)], end_stream=True)
    s.finish()
    print(host.backends.by_vm_id["*"].unavailable)
"""


def test_a_producer_per_process_and_one_consumer(redis_server):
    items = 300
    received: list[tuple[int, int, int]] = []

    def consumed(item: bytes) -> bytes:
        received.append((threading.get_ident(), int.from_bytes(item[:4], "little"),
                         int.from_bytes(item[4:], "little")))
        return b""

    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="queue")
    consumer = PluginConfig(vm, root_id="consumer", configuration="c", singleton=True)
    with Host([consumer], concurrency=1, shared_state=Redis(redis_server.url, prefix="q", timeout=2.0),
              foreign_functions={"consumed": consumed}, namespace="pc") as host:
        main = host._main.ident
        procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, redis_server.url,
                                   str(WAT / "queue_pc.wasm"), str(i), str(items)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=tempfile.gettempdir())
                 for i in range(PROCESSES)]
        try:
            for p in procs:
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, err
                assert int(out.strip().splitlines()[-1]) == 0  # nothing failed
        finally:
            kill_all(procs)
        deadline = time.monotonic() + 30
        while len(received) < PROCESSES * items and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        stats = backend_stats(host)
    assert len(received) == PROCESSES * items, stats  # every item once
    assert {t for t, _, _ in received} == {main}  # on the owner's thread
    for p in range(PROCESSES):
        assert [seq for _, q, seq in received if q == p] == list(range(items))  # in order
    assert stats["dropped"] == 0, stats
    if stats["subscribed"] == 1:
        assert stats["notified"] == PROCESSES * items, stats  # one on_queue_ready per item
    else:  # the subscription came back meanwhile: waiting items were announced again
        assert stats["notified"] >= PROCESSES * items, stats


def test_notifications_lost_while_resubscribing_are_made_up(redis_server):
    received: list[bytes] = []
    vm = VmConfig(WAT / "queue_pc.wasm", vm_id="resub")
    consumer = PluginConfig(vm, root_id="consumer", configuration="c", singleton=True)
    with Host([consumer], concurrency=1, shared_state=Redis(redis_server.url, prefix="rs", timeout=2.0),
              foreign_functions={"consumed": lambda item: received.append(item) or b""},
              namespace="rs") as host:
        wait_for(lambda: backend_stats(host)["subscribed"] >= 1)
        # enqueue straight into Redis (no PUBLISH): like items whose message was lost
        qid = host.state.queue_id("items", vm_id="resub")
        assert qid is not None
        local = qid & 0xFFFFFF
        for i in range(3):
            redis_server.command("RPUSH", f"rs:q:{local}", i.to_bytes(4, "little") * 2)
            redis_server.command("INCRBY", f"rs:qb:{local}", 8)
        # drop the subscriber's connection: it comes back and announces what waits
        assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        wait_for(lambda: len(received) == 3)
        assert backend_stats(host)["subscribed"] >= 2
        assert host.state.queue_size("items", vm_id="resub") == 0


# ---- outages -----------------------------------------------------------------------------
def _go_counter_host(server: RedisServer, timeout: float, prefix: str) -> Host:
    # No CPU deadline: on a loaded machine a descheduled thread can look like a slow guest,
    # and the deadline is not what these tests check (a backend's wait is not counted
    # against it anyway: csrc/backend.c).
    cfg = PluginConfig(VmConfig(GO_HTTP, vm_id="outage"), configuration="shared",
                       deadline_ms=None)
    return Host([cfg], shared_state=Redis(server.url, prefix=prefix, timeout=timeout),
                namespace=prefix)


def _count(host: Host) -> tuple[str | None, float]:
    t0 = time.monotonic()
    s = host.plugins[0].http_stream()
    s.send_request_headers(REQUEST, end_stream=True)
    out = s.request_headers.get("x-count")
    s.finish()
    return out, time.monotonic() - t0


def test_a_guest_waiting_on_redis_does_not_hold_the_gil(redis_server, hold_gil):
    """A request whose guest waits for Redis (the server stopped, a 0.5 s timeout) on a
    thread whose event path keeps the GIL across core calls: the core gives the GIL up
    before it blocks, so another Python thread runs meanwhile (tests/test_gil.py has the
    rest of that mechanism)."""
    with _go_counter_host(redis_server, 0.5, "gilwait") as host:
        for _ in range(50):
            if _count(host)[0] is not None:
                break
        with BusyThread() as other:
            time.sleep(0.01)
            redis_server.pause()
            try:
                t0 = time.monotonic()
                out, took = _count(host)
            finally:
                redis_server.resume()
    assert out is None and took >= 0.4, (out, took)
    during = [x for x in other.stamps if t0 + 0.1 < x < t0 + 0.4]
    assert len(during) > 20, len(during)


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_outage_answers_within_the_timeout_is_counted_and_recovers(redis_server, how, caplog):
    timeout = 0.05
    with _go_counter_host(redis_server, timeout, f"out{how}") as host:
        first = None
        for _ in range(50):  # a busy machine may miss the short timeout once or twice
            if (first := _count(host)[0]) is not None:
                break
        assert first == "1"
        if how == "SIGSTOP":
            redis_server.pause()
        else:
            redis_server.kill()
        took, counts = [], []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8:
            c, dt = _count(host)
            counts.append(c)
            took.append(dt)
        assert counts and all(c is None for c in counts)  # the guest saw the failure
        # Requests do not wait past the timeout (the Go guest makes one call per request,
        # which fails): a hang would slow every request; a busy machine may stall one or
        # two of them (they are timed from Python, around the whole request).
        slow = [t for t in took if t > timeout + 0.1]
        assert len(slow) <= 2, slow
        # and almost all come during backoff and answer at once, not after the timeout
        assert sorted(took)[len(took) * 9 // 10] < timeout / 2, sorted(took)[-20:]
        assert len(took) > 50
        # every request reached the backend and was answered by it (a failed VM would
        # answer without asking)
        assert backend_stats(host)["unavailable"] >= len(counts)
        if how == "SIGSTOP":
            redis_server.resume()
            expected = "2"
        else:
            redis_server.start()
            expected = "1"  # no persistence: the restarted server starts empty
        deadline = time.monotonic() + 10
        while (c := _count(host)[0]) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c == expected


def test_two_processes_share_a_prefix_and_others_do_not(redis_server):
    code = """
import sys
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.backends import Redis
url, prefix, wasm = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = PluginConfig(VmConfig(wasm, vm_id="share"), configuration="shared")
with Host([cfg], shared_state=Redis(url, prefix=prefix, timeout=2.0), namespace="share") as host:
    s = host.plugins[0].http_stream()
    s.send_request_headers([(":method", "GET"), (":path", "/"), (":authority", "x")],
                           end_stream=True)
    print(s.request_headers.get("x-count"))
    s.finish()
"""
    def count(prefix: str) -> str:
        r = run_python(code, redis_server.url, prefix, str(GO_HTTP))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().splitlines()[-1]

    assert count("one") == "1"
    assert count("one") == "2"  # another process, the same prefix: the same counter
    assert count("two") == "1"  # another prefix: its own


# ---- configuration -----------------------------------------------------------------------
@pytest.mark.skipif(not NO_SUPPORT, reason="this build has Redis support")
def test_a_build_without_hiredis_says_so():
    with pytest.raises(ConfigError, match="this build has no Redis support: install "
                                          "libhiredis-dev and reinstall pyproxywasm"):
        Host([], shared_state=Redis(), namespace="bad")


@needs_redis_build
@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:6379", "expected redis://"),
    ("redis://", "no host"),
    ("redis://127.0.0.1:0", "bad port"),
    ("redis://127.0.0.1:70000", "bad port"),
    ("redis://127.0.0.1:6379/db", "database number"),
    ("redis://127.0.0.1:6379/0?timeout=1", "query"),
    ("rediss://127.0.0.1:6379", "TLS"),
])
def test_a_malformed_url_is_a_clear_error(url, message):
    with pytest.raises(ConfigError, match=message):
        Host([], shared_state=Redis(url), namespace="bad")


@needs_redis_build
def test_an_unreachable_server_is_a_clear_error():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError, match="cannot connect to Redis"):
        Host([], shared_state=Redis(url), namespace="bad")


@needs_redis_build
@pytest.mark.parametrize("field, value", [("timeout", 0), ("timeout", -1.0), ("prefix", ""),
                                          ("url", 5)])
def test_bad_options_are_clear_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        Host([], shared_state=Redis(**{field: value}), namespace="bad")
