"""Property-based fuzzing of the Python API with hypothesis: what a Python caller can hand
the host (header lists, raw pairs bytes, bodies in any chunking, properties, events in any
order) either works as documented or raises ProxyWasmError, and the host keeps serving.

The C side is fuzzed by libFuzzer (csrc/fuzz/, `make -C csrc fuzz-short`); these tests
cover the Python layer in front of it with real plugins. Example counts are modest so the
suite stays quick; HYPOTHESIS_PROFILE=long runs 2000 per test."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxywasm import ProxyWasmError
from pyproxywasm.pairs import decode_pairs, encode_headers, encode_pairs
from pyproxywasm.properties import encode_value
from pyproxywasm.testing import PluginHarness

from conftest import wat

settings.register_profile(
    "ci", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def passthrough():
    """trap.wat: a filter that leaves everything alone unless a request has x-trap."""
    with PluginHarness(wat("trap")) as h:
        yield h


def _ascii_lower(b: bytes) -> bytes:
    return bytes(c + 32 if 65 <= c <= 90 else c for c in b)


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


# Header names and values an HTTP client could send (no NUL, CR, LF; names non-empty).
names = st.from_regex(rb"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}\Z").filter(
    lambda n: _ascii_lower(n) != b"x-trap")
values = st.binary(max_size=40).filter(lambda v: not (set(v) & {0, 10, 13}))
header_lists = st.lists(st.tuples(names, values), max_size=12)
any_pairs = st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20)), max_size=10)


@given(any_pairs)
def test_pairs_round_trip_any_bytes(items):
    data = encode_pairs(items)
    assert decode_pairs(data) == [(_s(k), _s(v)) for k, v in items]
    # the flat form, when chosen, carries exactly the same pairs
    flat, n = encode_headers(items)
    if n >= 0:
        assert n == len(items)
        parts = flat.split(b"\0") if n else []
        assert [tuple(parts[i:i + 2]) for i in range(0, len(parts), 2)] == [tuple(p) for p in items]
    else:
        assert flat == data


@given(header_lists, st.booleans())
def test_headers_cross_the_host_unchanged(passthrough, items, as_str):
    sent = [(_s(k), _s(v)) for k, v in items] if as_str else items
    s = passthrough.http()
    s.send_request_headers(sent, end_stream=True)
    assert s.request_headers == [(_s(_ascii_lower(k)), _s(v)) for k, v in items]
    s.send_response_headers([(":status", "200")] + list(sent), end_stream=True)
    assert s.response_headers[1:] == [(_s(_ascii_lower(k)), _s(v)) for k, v in items]
    s.finish()


@given(st.binary(max_size=200))
def test_raw_pairs_bytes_are_parsed_or_refused(passthrough, data):
    s = passthrough.http()
    try:
        s.send_request_headers(data, end_stream=True)
    except ProxyWasmError:
        pass
    else:
        hs = s.request_headers
        assert hs == decode_pairs(encode_pairs(hs)) or hs == []
    s.finish()
    # the host is unharmed: the next request goes through
    ok = passthrough.http()
    ok.send_request_headers([(":path", "/")], end_stream=True)
    assert ok.request_headers == [(":path", "/")]
    ok.finish()


@given(st.lists(st.binary(max_size=3000), max_size=12), st.booleans())
def test_bodies_arrive_whole_in_any_chunking(passthrough, chunks, trailers):
    s = passthrough.http()
    s.send_request_headers([(":path", "/up")])
    got = b""
    for c in chunks:
        s.send_request_body(c)
        got += s.take_request_body()
    if trailers:
        s.send_request_trailers([("x-t", "1")])
    else:
        s.send_request_body(b"", end_stream=True)
    got += s.take_request_body()
    assert got == b"".join(chunks)
    assert s.request_complete
    s.finish()


segment = st.from_regex(r"\A[a-z_]{1,12}\Z")
scalars = st.one_of(st.binary(max_size=30), st.text(max_size=30), st.booleans(),
                    st.integers(min_value=-(2**63), max_value=2**64 - 1),
                    st.floats(allow_nan=False))


@given(st.lists(segment, min_size=1, max_size=4), scalars)
def test_host_properties_read_back_as_encoded(path, value):
    path = tuple(path)
    with PluginHarness(wat("trap"), properties={path: value}) as h:
        assert h.plugin.property(path) == encode_value(value)
        s = h.http(properties={path + ("leaf",): value})
        s.send_request_headers([(":path", "/p?q=1")], end_stream=True)
        assert h.plugin.property(path + ("leaf",), s.context_id) == encode_value(value)
        assert h.plugin.property(("request", "url_path"), s.context_id) == b"/p"
        s.finish()


EVENTS = ["req_headers", "req_body", "req_end", "req_trailers", "resp_headers", "resp_body",
          "resp_end", "resp_trailers", "read", "finish"]


@settings(max_examples=120)
@given(st.lists(st.sampled_from(EVENTS), max_size=14), st.sampled_from(["trap", "semantics"]))
def test_events_in_any_order_work_or_raise(events, plugin):
    """A caller that gets the order wrong gets ProxyWasmError, never a crash or a hang;
    and the same host then serves a well-ordered request."""
    with PluginHarness(wat(plugin)) as h:
        s = h.http()
        for e in events:
            try:
                if e == "req_headers":
                    s.send_request_headers([(":path", "/"), (":method", "POST")])
                elif e == "req_body":
                    s.send_request_body(b"abc")
                elif e == "req_end":
                    s.send_request_body(b"", end_stream=True)
                elif e == "req_trailers":
                    s.send_request_trailers([("x-t", "1")])
                elif e == "resp_headers":
                    s.send_response_headers([(":status", "200")])
                elif e == "resp_body":
                    s.send_response_body(b"def")
                elif e == "resp_end":
                    s.send_response_body(b"", end_stream=True)
                elif e == "resp_trailers":
                    s.send_response_trailers([("x-r", "2")])
                elif e == "read":
                    s.take_request_body(), s.take_response_body(), s.local_response
                    s.request_headers, s.response_headers
                elif e == "finish":
                    s.finish()
                    s = h.http()
            except ProxyWasmError:
                pass
        s.finish()
        ok = h.http()
        ok.send_request_headers([(":path", "/"), (":method", "GET")], end_stream=True)
        ok.send_response_headers([(":status", "200")], end_stream=True)
        assert ok.response_complete or ok.local_response is not None
        ok.finish()
