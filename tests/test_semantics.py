"""Envoy's stream and root semantics, through tests/plugins/wat/semantics.wat."""
from __future__ import annotations

from pyproxywasm import Action
from pyproxywasm.testing import PluginHarness

from conftest import REQUEST, RESPONSE, wat


def harness() -> PluginHarness:
    return PluginHarness(wat("semantics"))


def mode(m: str) -> list:
    return REQUEST + [("x-mode", m)]


def test_continue_and_end_stream_drops_the_rest():
    with harness() as h:
        s = h.http()
        assert s.send_request_headers(mode("e")) is Action.CONTINUE
        assert s.request_complete  # the headers went on as the whole request
        s.send_request_body(b"dropped", end_stream=True)
        assert s.take_request_body() == b""
        s.finish()


def test_stop_iteration_no_buffer_drops_the_chunk():
    with harness() as h:
        s = h.http()
        s.send_request_headers(mode("n"))
        assert s.send_request_body(b"first") is Action.PAUSE
        assert s.held_request_body == b""
        assert s.send_request_body(b"second", end_stream=True) is Action.CONTINUE
        assert s.take_request_body() == b"second"
        s.finish()


def test_close_stream_resets():
    with harness() as h:
        s = h.http()
        s.send_request_headers(mode("c"))
        assert s.reset
        assert s.send_request_body(b"x", end_stream=True) is Action.PAUSE
        s.finish()


def test_trailers_created_at_end_of_body():
    with harness() as h:
        s = h.http()
        s.send_request_headers(mode("t"))
        s.send_request_body(b"abc", end_stream=True)
        assert s.request_trailers.get("x-created") == "1"
        assert s.flags & 1024  # trailers forwarded
        assert s.take_request_body() == b"abc"
        s.finish()


def test_buffer_status_reports_the_whole_buffer():
    with harness() as h:
        s = h.http()
        s.send_request_headers(mode("s"))
        s.send_request_body(b"12345", end_stream=True)
        assert "status 5" in h.logs("info")
        s.finish()


def test_set_header_map_pairs_replaces_the_map():
    with harness() as h:
        s = h.http()
        s.send_request_headers(mode("p"), end_stream=True)
        assert list(s.request_headers) == [("a", "1"), ("b", "22")]
        s.finish()


def test_header_map_size_is_the_serialized_size():
    with harness() as h:
        s = h.http()
        hdrs = [(":path", "/"), ("x-mode", "z")]
        s.send_request_headers(hdrs, end_stream=True)
        assert f"size {4 + sum(10 + len(k) + len(v) for k, v in hdrs)}" in h.logs("info")
        s.finish()


def test_log_phase_maps_are_read_only():
    with harness() as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        s.send_response_headers(RESPONSE, end_stream=True)
        s.finish()
        assert "log-add 2" in h.logs("info")  # BAD_ARGUMENT: no writes in on_log
        assert f"log-pairs {len(RESPONSE)}" in h.logs("info")


def test_effective_context_resumes_a_stream_from_the_root():
    with harness() as h:
        s = h.http()
        assert s.send_request_headers(mode("w")) is Action.PAUSE
        assert s.send_request_body(b"held", end_stream=True) is Action.PAUSE
        h.advance(10)
        assert "resumed 0" in h.logs("info")
        s.refresh()
        assert s.request_complete and s.take_request_body() == b"held"
        s.finish()


def test_root_done_pending_until_proxy_done():
    with harness() as h:
        assert h.plugin.close() is False  # on_done returned false: pending
        assert "root deleted" not in h.logs("info")
        h.advance(10)  # the tick calls proxy_done; the delete follows the callback
        assert "done 0" in h.logs("info")
        assert "root deleted" in h.logs("info")


def test_foreign_function_callback():
    with harness() as h:
        h.plugin.call_foreign(7, b"payload")
        logs = h.logs("info")
        assert logs[logs.index("foreign 7") + 1] == "payload"
