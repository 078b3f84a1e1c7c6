"""Shared-state semantics every backend must give (csrc/backend.h): Envoy's CAS, delete and
TTL beyond the ABI, the per-scope byte cap, the foreign functions plugins use for them, and
queues. Each test runs once per backend of the `backend` fixture; a backend that needs a
server adds itself to BACKENDS (with a skip when the server is absent)."""
from __future__ import annotations

import os
import time
import uuid
from typing import Callable, Iterator

import pytest

from pyproxywasm._binding import lib
from pyproxywasm.abi import Status
from pyproxywasm.backends import Backend, InProcess, Redis, SharedMemory
from pyproxywasm.errors import ConfigError
from pyproxywasm.testing import PluginHarness

from conftest import REQUEST, wat
from redis_server import MISSING, REQUIRED, RedisServer


def _shm(**kw: object) -> Backend:
    return SharedMemory(f"pwtest-{uuid.uuid4().hex[:12]}", size=4 << 20, **kw)  # type: ignore[arg-type]


#: name → factory(max_bytes=..., default_ttl=...) of a fresh, empty store.
BACKENDS: dict[str, Callable[..., Backend]] = {
    "inprocess": lambda **kw: InProcess(**kw),  # type: ignore[arg-type]
}
if hasattr(lib, "pw_shm_open"):
    BACKENDS["shm"] = _shm
#: The Redis backend adds itself here (with a skip when no server can be started).

#: One redis-server for this module's Redis runs (started on first use, stopped by the
#: `_redis_server` fixture at the end of the session); each store gets its own prefix.
_redis: list[RedisServer] = []


def _redis_backend(**kw: object) -> Backend:
    # a timeout no busy machine (or sanitizer build) reaches: these check semantics
    return Redis(_redis[0].url, prefix=f"pwtest-{uuid.uuid4().hex[:12]}", timeout=2.0, **kw)  # type: ignore[arg-type]


if MISSING is None or REQUIRED:  # CI (REQUIRED) fails the Redis runs rather than drop them
    BACKENDS["redis"] = _redis_backend


@pytest.fixture(scope="session")
def _redis_server() -> Iterator[None]:
    if MISSING is not None:
        pytest.fail(f"PYPROXYWASM_REQUIRE_REDIS=1 but {MISSING}")
    server = RedisServer()
    server.start()
    _redis.append(server)
    yield
    _redis.clear()
    server.stop()


def _cleanup(b: Backend) -> None:
    if isinstance(b, SharedMemory):
        try:
            os.unlink(f"/dev/shm/{b.name}")
        except FileNotFoundError:
            pass


@pytest.fixture(params=sorted(BACKENDS))
def make_backend(request: pytest.FixtureRequest) -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []
    if request.param == "redis":
        request.getfixturevalue("_redis_server")

    def make(**kw: object) -> Backend:
        b = BACKENDS[request.param](**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        _cleanup(b)


@pytest.fixture
def backend(make_backend: Callable[..., Backend]) -> Backend:
    return make_backend()


def harness(backend: Backend, code: str = "shared_ff", **kw: object) -> PluginHarness:
    return PluginHarness(wat(code), vm_id="b", shared_state=backend, **kw)  # type: ignore[arg-type]


def call_ff(h: PluginHarness, fn: str, args: bytes) -> Status:
    """Has the guest call a foreign function; its status."""
    h.clear_logs()
    s = h.http()
    s.send_request_headers(REQUEST + [("x-fn", fn), ("x-arg", args.hex())], end_stream=True)
    s.finish()
    (line,) = [m for m in h.logs("info") if m.startswith("ff ")]
    return Status(int(line[3:]))


# ---- the ABI's CAS ---------------------------------------------------------------------------
def test_cas_semantics(backend: Backend) -> None:
    with harness(backend) as h:
        assert h.shared_data("k") is None
        assert h.set_shared_data("k", b"1", cas=12345) == Status.OK  # a missing key never mismatches
        v1 = h.shared_data("k")
        assert v1 is not None and v1.value == b"1" and v1.cas != 0
        assert h.set_shared_data("k", b"2", cas=v1.cas) == Status.OK
        v2 = h.shared_data("k")
        assert v2 is not None and v2.value == b"2" and v2.cas not in (0, v1.cas)
        assert h.set_shared_data("k", b"3", cas=v1.cas) == Status.CAS_MISMATCH  # stale
        assert h.shared_data("k") == v2  # nothing changed
        assert h.set_shared_data("k", b"", cas=0) == Status.OK  # cas 0 always writes
        v3 = h.shared_data("k")
        assert v3 is not None and v3.value == b"" and v3.cas not in (0, v1.cas, v2.cas)
        # other vm_ids are other scopes
        assert h.shared_data("k", vm_id="other") is None


def test_cas_loop_guest(backend: Backend) -> None:
    with harness(backend, "cas_loop") as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-n", "500"), ("x-key", "ctr")], end_stream=True)
        s.finish()
        v = h.shared_data("ctr")
        assert v is not None and int.from_bytes(v.value, "little") == 500


# ---- delete and TTL ---------------------------------------------------------------------------
def test_delete(backend: Backend) -> None:
    with harness(backend) as h:
        assert h.delete_shared_data("k") == Status.NOT_FOUND
        h.set_shared_data("k", b"v")
        cas = h.shared_data("k").cas  # type: ignore[union-attr]
        assert h.delete_shared_data("k", cas=cas + 1) == Status.CAS_MISMATCH
        assert h.shared_data("k") is not None
        assert h.delete_shared_data("k", cas=cas) == Status.OK
        assert h.shared_data("k") is None
        h.set_shared_data("k", b"v")
        assert h.delete_shared_data("k") == Status.OK  # cas 0: unconditionally
        assert h.shared_data("k") is None
        # A new key after a delete gets a cas the deleted one never had.
        h.set_shared_data("k", b"w")
        assert h.shared_data("k").cas != cas  # type: ignore[union-attr]


def test_expire(backend: Backend) -> None:
    with harness(backend) as h:
        assert h.expire_shared_data("k", 1.0) == Status.NOT_FOUND
        h.set_shared_data("k", b"v")
        h.set_shared_data("keep", b"v")
        assert h.expire_shared_data("k", 0.05) == Status.OK
        assert h.expire_shared_data("keep", 0.05) == Status.OK
        assert h.expire_shared_data("keep", 0) == Status.OK  # forever again
        h.set_shared_data("k", b"v2")  # a write keeps the TTL
        time.sleep(0.15)
        assert h.shared_data("k") is None
        assert h.set_shared_data("k", b"x", cas=1) == Status.OK  # gone: no mismatch
        assert h.shared_data("keep").value == b"v"  # type: ignore[union-attr]
        assert h.delete_shared_data("k") == Status.OK


def test_default_ttl(make_backend: Callable[..., Backend]) -> None:
    with harness(make_backend(default_ttl=0.05)) as h:
        h.set_shared_data("k", b"v")
        assert h.shared_data("k") is not None
        time.sleep(0.15)
        assert h.shared_data("k") is None


def test_cap_per_scope_and_expired_bytes_return(make_backend: Callable[..., Backend]) -> None:
    with harness(make_backend(max_bytes=1000)) as h:
        assert h.set_shared_data("a", b"x" * 600) == Status.OK
        assert h.set_shared_data("b", b"x" * 600) == Status.INTERNAL_FAILURE  # past the cap
        assert h.shared_data("b") is None  # nothing stored
        assert h.host.backends.by_vm_id["*"].unavailable == 0  # a cap is no outage
        assert h.set_shared_data("b", b"x" * 600, vm_id="other") == Status.OK  # its own cap
        assert h.delete_shared_data("a") == Status.OK
        assert h.set_shared_data("b", b"x" * 600) == Status.OK  # bytes came back
        assert h.expire_shared_data("b", 0.05) == Status.OK
        time.sleep(0.15)
        assert h.set_shared_data("c", b"x" * 600) == Status.OK  # expired bytes came back


def test_many_expired_keys_never_read_do_not_pile_up(make_backend: Callable[..., Backend]) -> None:
    # Keys written once with a TTL and never touched again: the writes that follow sweep
    # them, so a cap that holds ~1/3 of the keys ever written is never reached.
    with harness(make_backend(max_bytes=40_000, default_ttl=0.02)) as h:
        for rnd in range(3):
            for i in range(300):
                assert h.set_shared_data(f"r{rnd}-{i}", b"x" * 40) == Status.OK, (rnd, i)
            time.sleep(0.05)


# ---- the foreign functions ----------------------------------------------------------------------
def test_foreign_functions_from_a_guest(backend: Backend) -> None:
    with harness(backend) as h:
        assert call_ff(h, "delete_shared_data", (0).to_bytes(4, "little") + b"k") == Status.NOT_FOUND
        h.set_shared_data("k", b"v")
        cas = h.shared_data("k").cas  # type: ignore[union-attr]
        bad = (cas ^ 0xFFFF).to_bytes(4, "little")
        assert call_ff(h, "delete_shared_data", bad + b"k") == Status.CAS_MISMATCH
        assert call_ff(h, "delete_shared_data", cas.to_bytes(4, "little") + b"k") == Status.OK
        assert h.shared_data("k") is None
        assert call_ff(h, "expire_shared_data", (50).to_bytes(8, "little") + b"k") == Status.NOT_FOUND
        h.set_shared_data("k", b"v")
        assert call_ff(h, "expire_shared_data", (50).to_bytes(8, "little") + b"k") == Status.OK
        assert h.shared_data("k") is not None
        time.sleep(0.15)
        assert h.shared_data("k") is None
        # malformed arguments
        assert call_ff(h, "delete_shared_data", b"\x01") == Status.BAD_ARGUMENT
        assert call_ff(h, "expire_shared_data", b"\x01\x02\x03") == Status.BAD_ARGUMENT


def test_host_foreign_function_wins_over_builtin(backend: Backend) -> None:
    with harness(backend, foreign_functions={"delete_shared_data": lambda a: b""}) as h:
        h.set_shared_data("k", b"v")
        assert call_ff(h, "delete_shared_data", (0).to_bytes(4, "little") + b"k") == Status.OK
        assert h.shared_data("k") is not None  # the host's own ran, not the built-in


# ---- queues -------------------------------------------------------------------------------------
def test_queue_items_and_notifications(backend: Backend) -> None:
    got: list[bytes] = []
    with PluginHarness(wat("queue_pc"), configuration="c", vm_id="b", shared_state=backend,
                       foreign_functions={"consumed": lambda a: got.append(a) or None}) as h:
        qid = h.queue_id("items")
        assert qid is not None and qid != 0
        assert h.queue_size("items") == 0
        for i in range(5):
            assert h.enqueue("items", i.to_bytes(8, "little")) == Status.OK
        assert h.queue_size("items") == 5
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            h.dispatch()
            time.sleep(0.005)
        assert got == [i.to_bytes(8, "little") for i in range(5)]
        assert h.queue_size("items") == 0
        assert h.state.dequeue("items", "b") is None  # EMPTY
        assert h.queue_id("nope") is None


def test_one_on_queue_ready_per_item(backend: Backend) -> None:
    with PluginHarness(wat("queue_pc"), configuration="C", vm_id="b", shared_state=backend,
                       trace=True) as h:
        for i in range(7):
            assert h.enqueue("items", i.to_bytes(8, "little")) == Status.OK
        deadline = time.monotonic() + 5
        calls: list[object] = []
        while len(calls) < 7 and time.monotonic() < deadline:
            h.dispatch()
            time.sleep(0.005)
            calls = [r for r in h.trace() if r.kind == "callback"
                     and r.name == "proxy_on_queue_ready"]
        time.sleep(0.2)
        h.dispatch()
        calls = [r for r in h.trace() if r.kind == "callback" and r.name == "proxy_on_queue_ready"]
        assert len(calls) == 7  # exactly one per item, none more
        assert h.queue_size("items") == 0


def test_producer_guest_reaches_consumer(backend: Backend) -> None:
    got: list[bytes] = []
    with PluginHarness(wat("queue_pc"), configuration="c", vm_id="b", shared_state=backend,
                       foreign_functions={"consumed": lambda a: got.append(a) or None}) as h:
        p = h.add_plugin(name="producer", configuration="p")
        s = h.http_stream(p)
        s.send_request_headers(REQUEST + [("x-n", "20"), ("x-p", "7")], end_stream=True)
        s.finish()
        deadline = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < deadline:
            h.dispatch()
            time.sleep(0.005)
        assert [int.from_bytes(g[4:], "little") for g in got] == list(range(20))
        assert {int.from_bytes(g[:4], "little") for g in got} == {7}


# ---- configuration --------------------------------------------------------------------------------
def test_one_scope_one_store() -> None:
    one, other = _shm(), _shm()
    try:
        with PluginHarness(wat("shared_ff"), namespace="one-store", shared_state=one) as h:
            h.set_shared_data("k", b"v")
            with pytest.raises(ConfigError):  # a second choice for the same scope
                PluginHarness(wat("shared_ff"), namespace="one-store", shared_state=other)
            with pytest.raises(ConfigError):
                PluginHarness(wat("shared_ff"), namespace="one-store", shared_state=InProcess())
            # A host that chooses nothing joins the namespace's backend.
            with PluginHarness(wat("shared_ff"), namespace="one-store") as h2:
                assert h2.shared_data("k").value == b"v"  # type: ignore[union-attr]
                assert h2.host.state.queue_id("x") is None
            assert h.shared_data("k").value == b"v"  # type: ignore[union-attr]
    finally:
        _cleanup(one)
        _cleanup(other)


def test_a_choice_after_hosts_that_chose_nothing() -> None:
    seg = _shm()
    try:
        with PluginHarness(wat("shared_ff"), namespace="late-choice") as plain:
            with PluginHarness(wat("shared_ff"), namespace="late-choice", shared_state=seg) as h:
                h.set_shared_data("k", b"shm")
                # The plain host's embedding view follows the namespace's choice too.
                assert plain.shared_data("k").value == b"shm"  # type: ignore[union-attr]
    finally:
        _cleanup(seg)


def test_bad_backend_options() -> None:
    for bad in (InProcess(max_bytes=-1), InProcess(default_ttl=-1.0), SharedMemory("a/b"),
                SharedMemory(""), SharedMemory(".."), SharedMemory("x", size=10)):
        with pytest.raises(ConfigError):
            PluginHarness(wat("shared_ff"), shared_state=bad)
    with pytest.raises(ConfigError):
        PluginHarness(wat("shared_ff"), shared_state="memory")  # type: ignore[arg-type]


def test_namespace_state_is_freed_with_its_last_host() -> None:
    with PluginHarness(wat("shared_ff"), namespace="freed-ns") as h:
        h.set_shared_data("k", b"v")
        with PluginHarness(wat("shared_ff"), namespace="freed-ns") as h2:
            assert h2.shared_data("k", vm_id="").value == b"v"  # type: ignore[union-attr]
        assert h.shared_data("k", vm_id="").value == b"v"  # type: ignore[union-attr]
    with PluginHarness(wat("shared_ff"), namespace="freed-ns") as h3:
        assert h3.shared_data("k", vm_id="") is None


def test_a_host_that_fails_to_construct_attaches_nothing() -> None:
    """A bad argument after shared_state leaves the namespace free for the next Host."""
    from pyproxywasm import Host

    ns = f"failed-ctor-{uuid.uuid4().hex[:8]}"
    with pytest.raises(Exception):
        Host([], namespace=ns, shared_state=InProcess(), properties={"x": object()})
    shm = _shm()
    try:
        with Host([], namespace=ns, shared_state=shm) as host:  # not refused as a second choice
            assert host.state.set_shared_data("k", b"v") is Status.OK
            assert host.state.shared_data("k").value == b"v"  # type: ignore[union-attr]
    finally:
        _cleanup(shm)
