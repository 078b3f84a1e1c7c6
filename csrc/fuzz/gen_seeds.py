"""Writes the seed corpus of the hostcall fuzzer (csrc/fuzz/corpus/hostcalls/seed-*).

Why: from empty inputs libFuzzer needs a long time to find scripts that get a stream going
and make many hostcalls per callback. These seeds do: realistic HTTP and TCP lifecycles
whose callbacks read and write maps, buffers, properties, shared data, queues and metrics,
every allocator mode, and random scripts of well-typed and hostile calls. Deterministic
(fixed random seed), so the corpus only changes when the guest's hostcall table does.
The encoding is described in csrc/fuzz/README.md.
"""
from __future__ import annotations

import pathlib
import random
import struct

import gen_guest

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "corpus" / "hostcalls"

IMPS = gen_guest.imports()
OPS = {name: i for i, (_, name, _, _) in enumerate(IMPS)}
N = len(IMPS)


# ---- argument encodings (see $arg in the guest) ---------------------------------------
def small(v: int) -> bytes:
    assert 0 <= v < 64
    return bytes([v])


def data(slot: int) -> bytes:  # pointer to DATA slot (16 bytes each)
    return bytes([0x40 | slot])


def out(slot: int) -> bytes:  # pointer to an out slot (4 bytes each)
    return bytes([0x80 | slot])


def special(k: int) -> bytes:
    return bytes([0xA0 | k])


def raw(v: int) -> bytes:
    return bytes([0xC0]) + struct.pack("<I", v & 0xFFFFFFFF)


def num(v: int) -> bytes:  # up to 8191
    if v < 64:
        return small(v)
    return bytes([0xE0 | (v >> 8), v & 0xFF])


def outval(slot: int) -> bytes:  # the u32 a hostcall wrote to out slot 0..15
    return special(16 + slot)


MEMSIZE, PAIRS, PLEN, CTX, ROOT, LAST = special(5), special(9), special(10), special(12), special(13), special(14)


# ---- ops ------------------------------------------------------------------------------
def call(name: str, *args: bytes) -> bytes:
    params = next(p for (_, n, p, _) in IMPS if n == name)
    assert len(args) == len(params), (name, len(args), len(params))
    return bytes([OPS[name]]) + b"".join(args)


def end(status: int | None = None) -> bytes:
    if status is None:
        return bytes([N + 1])
    return bytes([N]) + num(status)


def put(slot: int, b: bytes) -> bytes:
    return bytes([N + 2, slot, len(b)]) + b


def pairs(items: list[tuple[bytes, bytes]]) -> bytes:
    s = bytes([N + 3, len(items)])
    for k, v in items:
        s += bytes([len(k), len(v)]) + k + b"\0" + v + b"\0"
    return s


def amode(m: int) -> bytes:
    return bytes([N + 4, m])


def grow(k: int) -> bytes:
    return bytes([N + 5, k])


def poke(addr: bytes, val: bytes) -> bytes:
    return bytes([N + 6]) + addr + val


# ---- driver events (see event() in fuzz_hostcalls.c) -------------------------------------
def root_prelude(config: bytes = b"", level: int = 0) -> bytes:
    return bytes([len(config)]) + config + bytes([level])


def flat_headers(hs: list[tuple[int, bytes]]) -> bytes:
    """(name index, value) pairs; names as in the driver's table."""
    s = bytes([len(hs)])
    for i, v in hs:
        s += bytes([i, len(v)]) + v
    return s


def ev_http_start(hs: list[tuple[int, bytes]], eos: int = 0, root: int = 0) -> bytes:
    return bytes([0]) + flat_headers(hs) + bytes([eos, root])


def ev_headers(stream: int, direction: int, hs, eos: int = 0) -> bytes:
    return bytes([1, stream, direction]) + flat_headers(hs) + bytes([eos])


def ev_data(stream: int, direction: int, body: bytes, eos: int) -> bytes:
    return bytes([2, stream, direction | (eos << 1), len(body)]) + body


def ev_trailers(stream: int, direction: int, hs) -> bytes:
    return bytes([3, stream, direction]) + flat_headers(hs)


def ev_finish(stream: int) -> bytes:
    return bytes([4, stream])


# Setup ops that give the DATA slots useful contents.
SETUP = (
    put(0, b":path")
    + put(1, b"x-fuzz")
    + put(2, b"value")
    + put(3, b"request\0path")
    + put(4, b"response\0code")
    + put(5, b"my\0prop")
    + put(6, b"queue-a")
    + put(7, b"metric.c")
    + put(8, b"shared-key")
    + put(9, b"f")
    + put(10, b"fuzz")
    + pairs([(b":status", b"200"), (b"x-p", b"1"), (b"X-Up", b"")])
)


def reads() -> bytes:
    """Calls that hand answers to the guest (each allocates in the guest)."""
    return (
        call("proxy_get_header_map_pairs", small(0), out(0), out(1))
        + call("proxy_get_header_map_value", small(0), data(0), small(5), out(2), out(3))
        + call("proxy_get_header_map_size", small(0), out(4))
        + call("proxy_get_property", data(3), small(12), out(5), out(6))
        + call("proxy_get_buffer_bytes", small(0), small(0), num(4096), out(7), out(8))
        + call("proxy_get_buffer_status", small(0), out(9), out(10))
        + call("proxy_get_log_level", out(11))
        + call("proxy_get_current_time_nanoseconds", out(12))
    )


def writes(map_type: int) -> bytes:
    return (
        call("proxy_add_header_map_value", small(map_type), data(1), small(6), data(2), small(5))
        + call("proxy_replace_header_map_value", small(map_type), data(1), small(6), data(0), small(5))
        + call("proxy_get_header_map_value", small(map_type), data(1), small(6), out(2), out(3))
        + call("proxy_remove_header_map_value", small(map_type), data(1), small(6))
        + call("proxy_set_property", data(5), small(7), data(2), small(5))
        + call("proxy_get_property", data(5), small(7), out(5), out(6))
        + call("proxy_set_buffer_bytes", small(map_type), small(0), small(2), data(2), small(5))
        + call("proxy_set_header_map_pairs", small(map_type), PAIRS, PLEN)
    )


def shared_ops() -> bytes:
    return (
        call("proxy_set_shared_data", data(8), small(10), data(2), small(5), small(0))
        + call("proxy_get_shared_data", data(8), small(10), out(0), out(1), out(2))
        + call("proxy_set_shared_data", data(8), small(10), data(0), small(5), outval(2))
        + call("proxy_register_shared_queue", data(6), small(7), out(3))
        + call("proxy_enqueue_shared_queue", outval(3), data(2), small(5))
        + call("proxy_resolve_shared_queue", data(10), small(4), data(6), small(7), out(4))
        + call("proxy_dequeue_shared_queue", outval(4), out(5), out(6))
        + call("proxy_define_metric", small(0), data(7), small(8), out(7))
        + call("proxy_increment_metric", outval(7), raw(0xFFFFFFFF))
        + call("proxy_record_metric", outval(7), small(5))
        + call("proxy_get_metric", outval(7), out(8))
        + call("proxy_set_tick_period_milliseconds", small(10))
        + call("proxy_call_foreign_function", data(9), small(1), data(2), small(5), out(9), out(10))
    )


def http_lifecycle(extra: bytes = b"") -> bytes:
    s = bytes([0])  # module: ABI 0.2.1
    s += root_prelude(b"cfg", 0)
    s += SETUP + end()  # root on_context_create
    s += shared_ops() + end(1)  # on_vm_start
    s += call("proxy_get_buffer_bytes", small(7), small(0), small(32), out(0), out(1)) + end(1)
    s += ev_http_start([(0, b"/a?b#c"), (1, b"GET"), (4, b"5"), (6, b"Mixed")], 0)
    s += end()  # on_context_create of the stream
    s += reads() + writes(0) + extra + end(0)  # on_request_headers
    s += ev_data(0, 0, b"hello", 0)
    s += reads() + call("proxy_set_buffer_bytes", small(0), small(0), small(1), data(2), small(3)) + end(0)
    s += ev_trailers(0, 0, [(5, b"t")])
    s += end(0)  # body end-of-stream comes first? the trailers callback
    s += writes(1) + end(0)
    s += ev_headers(0, 1, [(3, b"200"), (9, b"text/plain")])
    s += reads() + writes(2) + end(0)
    s += ev_data(0, 1, b"world", 1)
    s += call("proxy_get_buffer_bytes", small(1), small(0), small(10), out(0), out(1)) + end(0)
    s += bytes([5, 0])  # read outputs
    s += ev_finish(0)
    s += reads() + end(1)  # on_done / on_log / on_delete
    s += bytes([10, 20]) + shared_ops() + end()  # time passes: ticks, queue
    s += bytes([12, 0, 1, 4]) + b"args" + call(
        "proxy_get_buffer_bytes", small(8), small(0), small(8), out(0), out(1)) + end()
    return s


def local_reply() -> bytes:
    s = bytes([0]) + root_prelude() + SETUP + end() + end(1) + end(1)
    s += ev_http_start([(0, b"/"), (1, b"POST")], 0)
    s += end()
    s += call("proxy_send_local_response", num(403), data(2), small(5), data(0), small(5), PAIRS, PLEN, small(14)) + end(1)
    s += bytes([5, 0]) + ev_finish(0) + end(1)
    return s


def tcp_lifecycle() -> bytes:
    s = bytes([0]) + root_prelude() + SETUP + end() + end(1) + end(1)
    s += bytes([6, 0])  # new connection on root 0
    s += end() + end(0)  # on_context_create, on_new_connection
    s += bytes([7, 0, 0, 5]) + b"hello"
    s += reads() + call("proxy_get_buffer_bytes", small(2), small(0), small(10), out(0), out(1)) + end(0)
    s += bytes([7, 0, 1, 5]) + b"world"
    s += call("proxy_set_buffer_bytes", small(3), small(0), small(5), data(2), small(5)) + call(
        "proxy_close_stream", small(2)) + end(0)
    s += bytes([8, 0, 3]) + end() + bytes([9, 0, 1]) + end(1)
    return s


def ev_call_answer(ev: int, token_slot: int, status: int, hs, body: bytes, refuse: int | None = None) -> bytes:
    """An answer to the outbound call in the driver's token slot (event 16)."""
    f = ev | (0x20 if refuse is not None else 0)
    s = bytes([16, f, token_slot, status]) + flat_headers(hs) + bytes([len(body)]) + body
    return s + (bytes([refuse]) if refuse is not None else b"")


def callouts() -> bytes:
    """HTTP and gRPC calls from a root and a stream, answered in every way."""
    call_hdrs = pairs([(b":method", b"GET"), (b":path", b"/c"), (b":authority", b"up")])
    s = bytes([0]) + root_prelude() + SETUP + put(11, b"cluster") + put(12, b"svc") + put(13, b"Method")
    s += call_hdrs + end()
    http = call("proxy_http_call", data(11), small(7), PAIRS, PLEN, data(2), small(5), small(0), small(0),
                num(1000), out(0))
    grpc = call("proxy_grpc_call", data(11), small(7), data(12), small(3), data(13), small(6), small(0),
                small(0), data(2), small(5), num(500), out(1))
    stream = call("proxy_grpc_stream", data(11), small(7), data(12), small(3), data(13), small(6),
                  small(0), small(0), out(2))
    send = call("proxy_grpc_send", outval(2), data(2), small(5), small(0))
    s += http + grpc + stream + send + end(1)  # on_vm_start
    s += end(1)  # on_configure
    cb_reads = (call("proxy_get_header_map_pairs", small(6), out(3), out(4))
                + call("proxy_get_buffer_bytes", small(4), small(0), num(100), out(5), out(6))
                + call("proxy_get_buffer_bytes", small(5), small(0), num(100), out(5), out(6))
                + call("proxy_get_header_map_value", small(7), data(0), small(5), out(7), out(8))
                + call("proxy_get_status", out(9), out(10), out(11)))
    s += ev_call_answer(1, 0, 200, [(3, b"200"), (9, b"text")], b"hello") + cb_reads + http + end()
    s += ev_call_answer(3, 2, 0, [(9, b"grpc")], b"") + cb_reads + end()
    s += ev_call_answer(4, 2, 0, [], b"msg") + cb_reads + send + end()
    s += ev_call_answer(5, 2, 0, [(8, b"0")], b"") + cb_reads + end()
    s += ev_call_answer(4, 1, 0, [], b"unary") + cb_reads + end()
    s += ev_call_answer(6, 2, 14, [], b"unavailable") + cb_reads + end()
    s += ev_call_answer(2, 0, 10, [], b"", refuse=2) + cb_reads + http + end()
    s += ev_http_start([(0, b"/s")], 1) + end() + http + call("proxy_grpc_cancel", outval(1)) + end(1)
    s += ev_finish(0) + end(1)
    return s


def alloc_modes() -> bytes:
    s = bytes([0]) + root_prelude() + SETUP + end() + end(1) + end(1)
    s += ev_http_start([(0, b"/x"), (5, b"y")], 0) + end()
    for m in range(10):
        if m == 7:
            continue  # the trap mode ends the VM: its own seed below
        s += amode(m) + reads()
    s += end(0)
    return s


def hostile_all() -> bytes:
    """Every hostcall once, with out-of-bounds and overflowing arguments."""
    s = bytes([0]) + root_prelude() + SETUP + end() + end(1) + end(1)
    s += ev_http_start([(0, b"/")], 0) + end()
    hostile = [special(1), special(2), special(6), special(7), special(4), MEMSIZE]
    rng = random.Random(8)
    body = b""
    for i, (_, name, params, _) in enumerate(IMPS):
        if name in ("proc_exit", "abort"):
            continue
        body += bytes([i]) + b"".join(rng.choice(hostile) for _ in params)
        if len(body) > 400:
            s += body + end(0)
            s += ev_data(0, 0, b"x", 0)
            body = b""
    return s + body + end(0)


def random_script(rng: random.Random) -> bytes:
    """A script of random calls with mostly sensible arguments, over a few events."""
    def anyarg() -> bytes:
        r = rng.random()
        if r < 0.35:
            return small(rng.randrange(0, 12))
        if r < 0.55:
            return data(rng.randrange(0, 11))
        if r < 0.75:
            return out(rng.randrange(0, 16))
        if r < 0.9:
            return special(rng.randrange(0, 32))
        return raw(rng.getrandbits(32))

    def callback() -> bytes:
        b = b""
        for _ in range(rng.randrange(1, 40)):
            _, name, params, _ = rng.choice(IMPS)
            if name in ("proc_exit", "abort"):
                continue
            b += bytes([OPS[name]]) + b"".join(anyarg() for _ in params)
            if rng.random() < 0.1:
                b += amode(rng.choice([0, 0, 1, 2, 3, 4, 5, 6, 8, 9]))
        return b + end(rng.choice([0, 0, 1, 2, 3]))

    s = bytes([rng.randrange(2)]) + root_prelude() + SETUP + end() + callback() + end(1)
    for _ in range(rng.randrange(3, 12)):
        ev = rng.choice([0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 16])
        if ev == 0:
            s += ev_http_start([(rng.randrange(16), b"v")], rng.randrange(2))
        elif ev == 1:
            s += ev_headers(rng.randrange(2), rng.randrange(2), [(3, b"200")], rng.randrange(2))
        elif ev == 2:
            s += ev_data(rng.randrange(2), rng.randrange(2), b"body", rng.randrange(2))
        elif ev == 3:
            s += ev_trailers(rng.randrange(2), rng.randrange(2), [(5, b"t")])
        elif ev in (4, 5):
            s += bytes([ev, rng.randrange(2)])
        elif ev == 6:
            s += bytes([6, 0])
        elif ev == 7:
            s += bytes([7, 0, rng.randrange(4), 3]) + b"tcp"
        elif ev == 10:
            s += bytes([10, rng.randrange(256)])
        elif ev == 11:
            s += bytes([11, rng.randrange(2), 0])
        elif ev == 12:
            s += bytes([12, 0, 7, 3]) + b"abc"
        elif ev == 13:
            s += bytes([13, rng.randrange(4), 0, 0])
        elif ev == 16:
            s += ev_call_answer(rng.randrange(1, 7), rng.randrange(3), 0, [(3, b"200")], b"x")
        for _ in range(rng.randrange(1, 4)):
            s += callback()
    return s


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("seed-*"):
        old.unlink()
    seeds = {
        "http": http_lifecycle(),
        "http-0.1.0": b"\x01" + http_lifecycle()[1:],
        "local-reply": local_reply(),
        "tcp": tcp_lifecycle(),
        "callouts": callouts(),
        "callouts-as-maps": b"\x02" + callouts()[1:],
        "alloc-modes": alloc_modes(),
        "alloc-trap": bytes([0]) + root_prelude() + amode(7) + reads() + end(),
        "hostile-all": hostile_all(),
        "grow": bytes([0]) + root_prelude() + grow(2) + reads() + grow(2) + amode(6) + reads() + end(),
    }
    rng = random.Random(20261130)
    for i in range(40):
        seeds[f"random-{i:02d}"] = random_script(rng)
    for name, b in seeds.items():
        (OUT / f"seed-{name}").write_bytes(b)
    print(f"wrote {len(seeds)} seeds to {OUT.relative_to(HERE.parents[1])}")


if __name__ == "__main__":
    main()
