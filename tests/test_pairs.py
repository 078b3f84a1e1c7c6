"""The header-map wire format, both ways, and hostile input to the C parser."""
from __future__ import annotations

import random
import struct

import pytest

from pyproxywasm.errors import InvalidHeaderError

from pyproxywasm import Action, ProxyWasmError
from pyproxywasm.pairs import decode_pairs, encode_headers, encode_pairs
from pyproxywasm.testing import PluginHarness

from conftest import wat

# The corrected worked examples of the ABI notes (§6.1).
EXAMPLE_1 = bytes.fromhex("0200000001000000010000000100000002000000610031006200323200")
EXAMPLE_2 = bytes.fromhex(
    "03000000070000000300000005000000010000000400000000000000"
    "3a6d6574686f640047455400" "3a70617468002f00" "782d69640000")


def test_worked_examples():
    assert encode_pairs([("a", "1"), ("b", "22")]) == EXAMPLE_1
    assert len(EXAMPLE_1) == 29
    assert encode_pairs([(":method", "GET"), (":path", "/"), ("x-id", "")]) == EXAMPLE_2
    assert len(EXAMPLE_2) == 54
    assert decode_pairs(EXAMPLE_2) == [(":method", "GET"), (":path", "/"), ("x-id", "")]


def test_flat_form_and_its_fallbacks():
    assert encode_headers([("a", "1"), ("b", "22")]) == (b"a\x001\x00b\x0022", 2)
    assert encode_headers({"a": b"1"}) == (b"a\x001", 1)
    assert encode_headers([]) == (b"", 0)
    assert encode_headers(EXAMPLE_1) == (EXAMPLE_1, -1)  # bytes are the wire format
    # no HTTP field holds NUL, CR or LF, or has an empty name: refused, not smuggled
    # (NUL here; the rest by the C core when the headers are sent, one pass in C)
    with PluginHarness(wat("trap")) as h:
        for bad in ([("a", "x\0y")], [("a", "x\r\ny")], [("", "v")], [("a\nb", "v")], [(b"k", b"v\r")],
                    encode_pairs([("a", "b\nc")])):
            with pytest.raises(InvalidHeaderError):
                h.http().send_request_headers(bad)
        s = h.http()  # a good stream still goes through
        assert s.send_request_headers([(":path", "/"), ("a", "")], end_stream=True) is Action.CONTINUE
        s.finish()
    # a list of strings is not a list of headers (it used to become "a: b", "c: d")
    with pytest.raises(InvalidHeaderError):
        encode_headers(["ab", "cd"])
    assert encode_headers([("a", "")]) == (b"a\x00", 1)  # an empty value is fine
    with pytest.raises(ValueError):
        encode_headers([("just-a-name",)])


def test_bytes_survive_a_round_trip_through_a_plugin():
    with PluginHarness(wat("trap")) as h:  # a filter that leaves the headers alone
        s = h.http()
        odd = "caf\udce9"  # not UTF-8: surrogate-escaped byte 0xe9
        s.send_request_headers([(":path", "/"), ("x-odd", odd), ("X-Upper", "V")], end_stream=True)
        assert s.request_headers == [(":path", "/"), ("x-odd", odd), ("x-upper", "V")]
        s.finish()


def _mutations(rng: random.Random):
    base = encode_pairs([(":method", "GET"), (":path", "/x"), ("k", "v")])
    for _ in range(400):
        b = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        yield bytes(b)
        yield base[: rng.randrange(len(base))]
        yield base + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    yield struct.pack("<I", 0xFFFFFFFF)
    yield struct.pack("<III", 1, 0xFFFFFFFF, 0xFFFFFFFF) + b"\0\0"
    yield struct.pack("<III", 1, 0xFFFFFFF0, 0x10) + b"\0" * 32


def test_malformed_pairs_are_refused_never_a_crash():
    rng = random.Random(1234)
    refused = accepted = 0
    with PluginHarness(wat("trap")) as h:
        for data in _mutations(rng):
            s = h.http()
            try:
                s.send_request_headers(data, end_stream=True)
            except ProxyWasmError:
                refused += 1
            else:
                accepted += 1
                # whatever was accepted is a well-formed map
                assert encode_pairs(s.request_headers) is not None
            s.finish()
    assert refused > 100 and accepted > 0
