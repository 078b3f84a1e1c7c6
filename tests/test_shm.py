"""The shared-memory backend across real processes (csrc/shm.c): guest CAS increments from
4 processes × 2 threads, producers in several processes and one consumer, a process killed
with SIGKILL while it writes, a full segment, a dead queue owner, and a segment another
process corrupted. The single-process semantics are in test_backends.py."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Iterator

import pytest

from pyproxywasm import Host
from pyproxywasm._binding import ffi, lib
from pyproxywasm.abi import Status
from pyproxywasm.backends import SharedMemory
from pyproxywasm.errors import ConfigError

from conftest import WAT, kill_all

pytestmark = pytest.mark.skipif(not hasattr(lib, "pw_shm_open"), reason="no shm backend")

WORKER = pathlib.Path(__file__).with_name("shm_worker.py")
SIZE = 16 << 20


@pytest.fixture
def seg() -> Iterator[str]:
    name = f"pwtest-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


_SPAWNED: list[subprocess.Popen[str]] = []  # this test's workers (killed when it ends)


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    kill_all(_SPAWNED)
    _SPAWNED.clear()


def spawn(mode: str, seg: str, ns: str, *args: object, size: int = SIZE) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, str(WORKER), mode, seg, str(size), ns, str(WAT),
                          *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tempfile.gettempdir())
    _SPAWNED.append(p)
    return p


def expect_line(p: subprocess.Popen[str], want: str, timeout: float = 60) -> None:
    assert p.stdout is not None
    silent = threading.Timer(timeout, p.kill)  # a silent worker: readline then sees the end
    silent.start()
    try:
        while True:
            line = p.stdout.readline()
            if line.strip() == want:
                return
            if not line:
                break
    finally:
        silent.cancel()
    raise AssertionError(f"no {want!r} from worker: rc={p.poll()} "
                         f"stderr={p.stderr.read() if p.stderr else ''}")


def finish(p: subprocess.Popen[str], timeout: float = 300) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return out


def host(seg: str, ns: str, size: int = SIZE, **kw: object) -> Host:
    return Host(namespace=ns, shared_state=SharedMemory(seg, size=size, **kw))  # type: ignore[arg-type]


def counter(h: Host) -> int:
    v = h.state.shared_data("ctr", vm_id="mp")
    return 0 if v is None else int.from_bytes(v.value, "little")


def zero_counter(seg: str, ns: str) -> None:
    """Creates the counter before the guests run. The ABI has no "create if absent": a guest
    that reads NOT_FOUND writes with cas 0, which is unconditional, so two first writers
    racing (one descheduled between its get and its set) would lose the other's increments.
    That is the ABI's semantics, not the backend's; the exactness tests start from a key."""
    with host(seg, ns) as h:
        assert h.state.set_shared_data("ctr", (0).to_bytes(8, "little"), vm_id="mp") == Status.OK


def test_cas_increments_from_4_processes_x_2_threads(seg: str) -> None:
    n = 1500
    zero_counter(seg, "cas")
    procs = [spawn("cas", seg, "cas", 2, n) for _ in range(4)]
    for p in procs:
        assert finish(p).split() == ["done"]
    with host(seg, "cas") as h:
        assert counter(h) == 4 * 2 * n  # exact: no lost update across processes


def test_wsgi_middleware_workers_share_a_counter(seg: str) -> None:
    # Two "workers", each with the WSGI middleware making its own Host on first use.
    zero_counter(seg, "wsgi")
    procs = [spawn("wsgi", seg, "wsgi", 20) for _ in range(2)]
    for p in procs:
        assert finish(p).split() == ["done"]
    with host(seg, "wsgi") as h:
        assert counter(h) == 2 * 20 * 100


def test_producers_in_processes_one_consumer(seg: str) -> None:
    n, producers = 2000, 3
    consumer = spawn("consume", seg, "q", n * producers)
    expect_line(consumer, "ready")
    procs = [spawn("produce", seg, "q", i, n) for i in range(producers)]
    for p in procs:
        assert "done" in finish(p)
    result = json.loads(finish(consumer).strip().splitlines()[-1])
    got = result["items"]
    assert len(got) == n * producers  # every item once
    for i in range(producers):
        assert [seq for prod, seq, _ in got if prod == i] == list(range(n))  # in order
    assert all(on_owner for _, _, on_owner in got)  # on the owner VM's thread
    assert result["on_queue_ready"] == n * producers  # one notification per item


def test_dead_owner_loses_no_item(seg: str) -> None:
    owner = spawn("hang", seg, "dead")
    expect_line(owner, "ready")
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    assert "done" in finish(spawn("produce", seg, "dead", 5, 50))  # refused wake-ups: OK
    with host(seg, "dead") as h:
        assert h.state.queue_size("items", vm_id="mp") == 50
    consumer = spawn("consume", seg, "dead", 50)  # the next registrant gets them all
    result = json.loads(finish(consumer).strip().splitlines()[-1])
    assert [seq for _, seq, _ in result["items"]] == list(range(50))
    assert result["on_queue_ready"] == 50


def test_sigkill_mid_update_leaves_others_working(seg: str) -> None:
    with host(seg, "kill") as h:
        recovered = 0
        for attempt in range(12):
            p = spawn("hammer", seg, "kill")
            expect_line(p, "running")
            time.sleep(0.05 + 0.013 * attempt)
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            # The others go on: reads, writes and CAS on the same key and shard.
            v = h.state.shared_data("big", vm_id="mp")
            assert v is not None and len(v.value) == 1 << 20
            word = v.value[:8]
            assert v.value == word * (1 << 17)  # a whole value, never a torn one
            assert h.state.set_shared_data("big", b"after", cas=v.cas, vm_id="mp") == Status.OK
            assert h.state.shared_data("big", vm_id="mp").value == b"after"  # type: ignore[union-attr]
            recovered = h.backends.by_vm_id["*"].segment_stats()["recovered"]  # type: ignore[index]
            if recovered:
                break
        # A 1 MiB copy under the shard lock: the process dies holding it in most attempts.
        assert recovered >= 1, "the hammering process never died holding a lock"
        assert h.state.set_shared_data("ctr", (0).to_bytes(8, "little"), vm_id="mp") == Status.OK
        assert "done" in finish(spawn("cas", seg, "kill", 2, 500))
        assert counter(h) == 1000


def test_a_wedged_lock_holder_costs_a_status_not_a_hang(seg: str) -> None:
    # A process stopped (SIGSTOP) while it holds a shard's lock: the others get
    # INTERNAL_FAILURE after the lock timeout (1 s), not a hang; once it runs again,
    # everything works.
    with host(seg, "wedge") as h:
        for attempt in range(12):
            p = spawn("hammer", seg, "wedge")
            expect_line(p, "running")
            time.sleep(0.05 + 0.013 * attempt)
            p.send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                st = h.state.set_shared_data("big", b"mine", vm_id="mp")
                took = time.monotonic() - t0
                if st == Status.INTERNAL_FAILURE:
                    assert 0.9 < took < 5.0, took
                    assert h.backends.by_vm_id["*"].unavailable >= 1
                    break
                assert st == Status.OK and took < 0.9  # it was between two writes
            finally:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGKILL)
                p.wait(10)
        else:
            pytest.fail("the hammering process was never stopped holding its lock")
        assert h.state.set_shared_data("big", b"after", vm_id="mp") == Status.OK
        assert h.state.shared_data("big", vm_id="mp").value == b"after"  # type: ignore[union-attr]


def test_full_segment_answers_a_status_then_recovers(seg: str) -> None:
    with host(seg, "full", size=1 << 20, max_bytes=0) as h:
        st, i = Status.OK, 0
        while st == Status.OK:
            i += 1
            st = h.state.set_shared_data(f"k{i}", b"x" * 30000, vm_id="mp")
            assert i < 100
        assert st == Status.INTERNAL_FAILURE
        handle = h.backends.by_vm_id["*"]
        assert handle.unavailable >= 1
        assert handle.segment_stats()["full"] >= 1  # type: ignore[index]  # in the segment
        for j in range(1, i):  # what was stored is intact
            assert h.state.shared_data(f"k{j}", vm_id="mp").value == b"x" * 30000  # type: ignore[union-attr]
        assert h.state.delete("k1", vm_id="mp") == Status.OK
        assert h.state.delete("k2", vm_id="mp") == Status.OK
        assert h.state.set_shared_data("again", b"y" * 30000, vm_id="mp") == Status.OK
        assert h.state.set_shared_data("again2", b"y" * 30000, vm_id="mp") == Status.OK


def test_state_is_shared_with_another_process_and_survives_it(seg: str) -> None:
    assert "done" in finish(spawn("cas", seg, "share", 1, 10))
    with host(seg, "share") as h:
        assert counter(h) == 10
        assert h.state.expire("ctr", 0.05, vm_id="mp") == Status.OK
        time.sleep(0.15)
        assert h.state.shared_data("ctr", vm_id="mp") is None


def test_malformed_segment_names() -> None:
    err = ffi.new("char[256]")
    for bad in (b"", b"a/b", b"/abs", b"..", b"x\x00y", b"a" * 201, b"sp ace"):
        assert lib.pw_shm_open(bad, len(bad), SIZE, 0, 0, err, len(err)) == ffi.NULL
        assert ffi.string(err)
    for bad_name in ("a/b", "", "..", "x" * 201, "é"):
        with pytest.raises(ConfigError):
            Host(shared_state=SharedMemory(bad_name), namespace="bad-names")


def _hostile(seg: str, body: str) -> subprocess.CompletedProcess[str]:
    code = f"""
import mmap, os, random
from pyproxywasm import Host
from pyproxywasm.abi import Status
from pyproxywasm.backends import SharedMemory
seg = {seg!r}
{body}
print("survived")
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tempfile.gettempdir())


def test_corrupted_segment_answers_statuses_never_crashes(seg: str) -> None:
    # Fill it with keys, then another "process" (the test) writes garbage over the index
    # and the data, then over everything, header and locks included.
    r = _hostile(seg, f"""
h = Host(namespace="hostile", shared_state=SharedMemory(seg, size={SIZE}))
for i in range(2000):
    assert h.state.set_shared_data(f"k{{i}}", os.urandom(random.randrange(1, 3000)), vm_id="v") == Status.OK
fd = os.open("/dev/shm/" + seg, os.O_RDWR)
m = mmap.mmap(fd, {SIZE})
rng = random.Random(7)
for _ in range(20000):  # scattered garbage in the index and the data
    off = rng.randrange(8192, {SIZE} - 8)
    m[off:off + 8] = rng.randbytes(8)
statuses = set()
for i in range(2500):
    h.state.shared_data(f"k{{i}}", vm_id="v")
    statuses.add(h.state.set_shared_data(f"k{{i}}", b"new", cas=0, vm_id="v"))
    statuses.add(h.state.delete(f"n{{i}}", vm_id="v"))
print(sorted(int(s) for s in statuses))
m[:] = rng.randbytes({SIZE})  # everything, header and locks included
for i in range(5):  # a garbage lock may take its 1 s timeout
    h.state.shared_data(f"k{{i}}", vm_id="v")
    h.state.set_shared_data(f"k{{i}}", b"x", vm_id="v")
h.close()
try:
    Host(namespace="hostile2", shared_state=SharedMemory(seg, size={SIZE}))
    print("opened a garbage segment")
except Exception as e:
    print("refused:", type(e).__name__)
""")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "survived" in r.stdout
    assert "refused: ConfigError" in r.stdout
    first = json.loads(r.stdout.splitlines()[0])
    assert set(first) <= {0, 1, 10}  # OK, NOT_FOUND, INTERNAL_FAILURE: statuses only


def test_queue_of_another_vm_id_in_shared_memory_from_in_process_vm(seg: str) -> None:
    # vm_id "mp" lives in shared memory, the default ("*") in-process: the queue's id
    # carries the segment's slot and enqueue/dequeue by id route there.
    got: list[bytes] = []
    from pyproxywasm import PluginConfig, VmConfig
    from pyproxywasm.backends import InProcess
    consumer = PluginConfig(VmConfig(WAT / "queue_pc.wasm", vm_id="mp"), configuration="c")
    with Host([consumer], namespace="mixed", foreign_functions={"consumed": got.append},
              shared_state={"mp": SharedMemory(seg, size=SIZE), "*": InProcess()}) as h:
        qid = h.state.queue_id("items", vm_id="mp")
        assert qid is not None and qid >> 24 != 0  # a backend's slot
        assert h.state.queue_id("items", vm_id="other") is None
        assert h.state.enqueue("items", b"12345678", vm_id="mp") == Status.OK
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            h.dispatch()
            time.sleep(0.01)
        assert got == [b"12345678"]
