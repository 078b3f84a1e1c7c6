"""HttpStream's per-event path in C (pyproxywasm/_fast.c) and the header maps in the core:
whatever the form of the headers, the plugin sees exactly what the general (cffi) path
gives it, names lowercased, values untouched; what no HTTP field can hold is refused."""
from __future__ import annotations

import os

import pytest

from conftest import WAT
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm import http as http_mod
from pyproxywasm.errors import InvalidHeaderError

FORMS = {
    "str tuples": [(":method", "GET"), (":path", "/a"), ("X-Mixed-Case-Long-Name", "Value Kept")],
    "bytes tuples (ASGI)": [(b":method", b"GET"), (b":path", b"/a"), (b"X-UPPER", b"V")],
    "lists": [[":method", "GET"], [":path", "/b"]],
    "mixed": [(":method", b"GET"), (b":path", "/c"), ("a", b"")],
    "non-ASCII": [(":path", "/\u00e9t\u00e9"), ("x-\u00c9T\u00c9", "\u00c9")],
    "lone surrogate": [(":path", "/x"), ("x-raw", "\udcff\udcfe")],
    "tuple of tuples": ((":path", "/t"), ("Accept", "*/*")),
    "dict": {":path": "/d", "Accept": "*/*"},
    "many": [(":path", "/m")] + [(f"X-H{i}", "v" * i) for i in range(80)],
    "big values": [(":path", "/big"), ("x-big", "v" * 5000), ("X-BIG-NAME-" + "N" * 300, "w")],
    "empty value": [(":path", "/e"), ("x-empty", "")],
}


@pytest.fixture(scope="module")
def plugin():
    host = Host([PluginConfig(VmConfig(WAT / "bench_filter.wasm"), root_id="bench")])
    yield host.plugins[0]
    host.close()


def _roundtrip(plugin, headers):
    s = plugin.http_stream()
    s.send_request_headers(headers)
    s.send_request_body(b"body", True)
    s.send_response_headers([(":status", "200"), ("Server", "Up")])
    s.send_response_body(b"resp", True)
    out = (list(s.request_headers), list(s.response_headers), s.take_request_body(),
           s.take_response_body())
    s.finish()
    return out


class _General(http_mod.HttpStream):
    """The same stream with the C events routed to the general (cffi) methods."""

    __slots__ = ()

    def send_request_headers(self, headers, end_stream=False):
        return self._general_headers(0, headers, end_stream)

    def send_response_headers(self, headers, end_stream=False):
        return self._general_headers(1, headers, end_stream)

    def send_request_body(self, data, end_stream=False):
        return self._general_data(0, data, end_stream)

    def send_response_body(self, data, end_stream=False):
        return self._general_data(1, data, end_stream)

    def finish(self):
        return self._general_finish()


@pytest.fixture
def general_path(monkeypatch):
    """Turns the C per-event path off: streams take the general (cffi) methods."""
    def off():
        monkeypatch.setattr(http_mod, "HttpStream", _General)
        import pyproxywasm.host as host_mod
        monkeypatch.setattr(host_mod, "HttpStream", _General)
    return off


@pytest.mark.skipif(os.environ.get("PYPROXYWASM_FAST") == "0", reason="turned off on purpose")
def test_the_fast_path_is_built():
    assert http_mod._fast is not None


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gives_what_the_general_path_gives(plugin, general_path, form):
    fast = _roundtrip(plugin, FORMS[form])
    general_path()
    assert _roundtrip(plugin, FORMS[form]) == fast
    req = fast[0]
    ascii_lower = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    assert all(k == k.translate(ascii_lower) for k, _ in req)  # names lowercased (ASCII only)
    assert ("x-wasm-filter", "1") in req and fast[2] == b"body" and fast[3] == b"resp"


def test_names_are_lowercased_and_values_kept(plugin):
    req = _roundtrip(plugin, FORMS["str tuples"] + [("ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789", "MiXeD")])[0]
    assert ("abcdefghijklmnopqrstuvwxyz-0123456789", "MiXeD") in req
    assert ("x-mixed-case-long-name", "Value Kept") in req
    req = _roundtrip(plugin, FORMS["non-ASCII"])[0]
    assert ("x-\u00c9t\u00c9", "\u00c9") in req  # only ASCII letters change
    req = _roundtrip(plugin, FORMS["lone surrogate"])[0]
    assert ("x-raw", "\udcff\udcfe") in req  # bytes 0xff 0xfe survive


@pytest.mark.parametrize("bad", [
    [(":path", "/"), ("x-nul", "a\0b")],
    [(":path", "/"), ("x-cr", "a\rb")],
    [(":path", "/"), ("x-lf", "a\nb")],
    [(":path", "/"), ("", "empty name")],
    [(":path", "/"), (b"x-nul", b"a\0b")],
    [(":path", "/"), ("a", "b", "c")],
    [(":path", "/"), "ab"],
], ids=["nul", "cr", "lf", "empty-name", "bytes-nul", "triple", "not-a-pair"])
def test_what_no_field_can_hold_is_refused_on_both_paths(plugin, general_path, bad):
    for _ in range(2):
        s = plugin.http_stream()
        with pytest.raises(InvalidHeaderError):
            s.send_request_headers(bad)
        s.finish()
        general_path()


@pytest.mark.skipif(http_mod._fast is None, reason="the C per-event path is not in use")
def test_pairs_sent_again_give_the_same_headers_and_what_is_kept_for_them_is_bounded(plugin):
    """The extension keeps the fields of tuple pairs it has seen (the same objects sent
    again skip their encoding): what the plugin sees does not change, a pair it refuses is
    refused each time, at most 128 small pairs are kept alive and never a large one."""
    import sys

    small = [(f"x-s{i}", f"v{i}") for i in range(1000)]
    before = [sys.getrefcount(small[i]) for i in range(1000)]
    for _ in range(2):  # the second round sends the same objects (those still kept hit)
        for i in range(0, 1000, 50):
            req = _roundtrip(plugin, [(":path", "/")] + small[i:i + 50])[0]
            assert [h for h in req if h[0].startswith("x-s")] == small[i:i + 50]
    kept = [sys.getrefcount(small[i]) - before[i] for i in range(1000)]
    assert set(kept) <= {0, 1} and 0 < sum(kept) <= 128
    big = ("x-big", "v" * 300)
    refs = sys.getrefcount(big)
    assert ("x-big", "v" * 300) in _roundtrip(plugin, [(":path", "/"), big])[0]
    assert sys.getrefcount(big) == refs
    nul = ("x-nul", "a\0b")
    for _ in range(3):
        s = plugin.http_stream()
        with pytest.raises(InvalidHeaderError):
            s.send_request_headers([(":path", "/"), nul])
        s.finish()


def test_streams_hold_no_reference_once_gone(plugin):
    """Streams made through Plugin.http_stream (the C opener), HttpStream(root) and with
    properties, finished or dropped: none leaves a reference behind on its type or root
    (a heap-type base's dealloc owes the type its reference back)."""
    import gc
    import sys

    from pyproxywasm.http import HttpStream

    root = plugin.instance()

    def churn():
        for _ in range(200):
            s = plugin.http_stream()
            s.send_request_headers([(":path", "/")], end_stream=True)
            s.finish()
            plugin.http_stream()  # dropped before any event
            s = plugin.http_stream()
            s.send_request_headers([(":path", "/")])  # dropped mid-stream: ended by its finalizer
            del s
            HttpStream(root).finish()
            HttpStream(root, {"x": "y"}).finish()

    churn()
    gc.collect()
    before = sys.getrefcount(HttpStream), sys.getrefcount(root)
    churn()
    gc.collect()
    assert (sys.getrefcount(HttpStream), sys.getrefcount(root)) == before


def test_plugin_http_stream_takes_properties_and_refuses_anything_else(plugin):
    s = plugin.http_stream(properties={"request": {"id": "abc"}})
    s.send_request_headers([(":path", "/p")], end_stream=True)
    assert plugin.instance().property("request.id", s.context_id) == b"abc"
    s.finish()
    plugin.http_stream(None).finish()
    with pytest.raises(TypeError):
        plugin.http_stream(None, None)
    with pytest.raises(TypeError):
        plugin.http_stream(None, properties=None)
    with pytest.raises(TypeError):
        plugin.http_stream(props={})


def test_the_stream_maker_plugin_http_stream_keeps_is_per_thread_and_goes_with_its_state():
    """Plugin.http_stream keeps the last thread's Opener in C: a stream is always made on
    the calling thread's own root, also for a thread that starts after another ended (its
    state torn down, its ident maybe reused) and after the host dropped the Openers."""
    import threading

    host = Host([PluginConfig(VmConfig(WAT / "bench_filter.wasm"), root_id="bench")])
    plugin = host.plugins[0]

    def stream_root():
        s = plugin.http_stream()
        s.send_request_headers([(":path", "/")], end_stream=True)
        assert s.request_headers.get("x-wasm-filter") == "1"
        s.finish()
        return s.plugin, host._local.state.roots[plugin.index]

    def in_thread():
        out = []
        t = threading.Thread(target=lambda: out.append(stream_root()))
        t.start()
        t.join(10)
        return out[0]

    try:
        used, own = stream_root()
        main_root = own
        assert used is own
        roots = [main_root]
        for _ in range(3):  # threads one after another: each its own root, never a dead one
            used, own = in_thread()
            assert used is own and all(used is not r for r in roots)
            roots.append(used)
            used, own = stream_root()  # and back on this thread: its root again
            assert used is own is main_root
        host._local.state.drop_openers()  # the host dropped them: made again, same root
        assert stream_root()[0] is main_root
    finally:
        host.close()
