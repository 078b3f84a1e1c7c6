"""The Go SDK HTTP test plugin (tests/plugins/go/httpfilter) through the real host."""
from __future__ import annotations

import threading

import pytest

from pyproxywasm import Action, Host, PluginConfig, PluginStartError, VmConfig, VmFailedError
from pyproxywasm.testing import Histogram, PluginHarness

from conftest import GO_HTTP, REQUEST, RESPONSE


def harness(config: str, **kw) -> PluginHarness:
    kw.setdefault("root_id", "root-a")
    kw.setdefault("name", "plugin-a")
    return PluginHarness(GO_HTTP, configuration=config, **kw)


def test_vm_and_plugin_configuration_reach_the_plugin():
    with harness("headers", vm_configuration="vm-cfg") as h:
        assert "vm_start: vm-cfg" in h.logs("info")
        assert "configure root-a: headers" in h.logs("info")


def test_configure_returning_false_is_a_clear_error():
    with pytest.raises(PluginStartError, match="proxy_on_configure returned false"):
        PluginHarness(GO_HTTP, configuration="headers fail")


def test_vm_start_returning_false_is_a_clear_error():
    with pytest.raises(PluginStartError, match="proxy_on_vm_start returned false"):
        PluginHarness(GO_HTTP, vm_configuration="fail-vm")


def test_request_and_response_headers_are_rewritten():
    with harness("headers") as h:
        s = h.http()
        req = REQUEST + [("x-replace", "old"), ("x-remove", "gone"), ("X-Wasm-Req", "client")]
        assert s.send_request_headers(req, end_stream=True) is Action.CONTINUE
        hdrs = s.request_headers
        assert hdrs.get("x-replace") == "replaced"
        assert "x-remove" not in hdrs
        # add appends: the client's value stays, the plugin's comes after it
        assert hdrs.get_all("x-wasm-req") == ["client", "root-a"]
        assert s.request_headers_forwarded and s.request_complete
        assert s.send_response_headers(RESPONSE + [("x-resp-remove", "1")], end_stream=True) is Action.CONTINUE
        assert s.response_headers.get("x-wasm-resp") == "root-a"
        assert "x-resp-remove" not in s.response_headers
        s.finish()
        assert "request path=/hello?x=1" in h.logs("info")
        assert "response status=200" in h.logs("info")


def test_local_response_ends_the_chain_and_runs_response_callbacks_like_envoy():
    with harness("headers") as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-deny", "1")]) is Action.PAUSE
        lr = s.local_response
        assert lr is not None and lr.status == 403 and lr.body == b"denied by wasm"
        assert lr.headers.get("x-deny-reason") == "test"
        # Envoy sends the local reply through the encoder chain: the plugin saw it.
        assert s.response_headers.get(":status") == "403"
        assert s.response_headers.get("x-wasm-resp") == "root-a"
        assert s.take_response_body() == b"denied by wasm"
        assert s.response_complete
        assert not s.request_headers_forwarded
        # more request data is dropped, upstream's late response is ignored
        assert s.send_request_body(b"ignored", end_stream=True) is Action.PAUSE
        assert s.take_request_body() == b""
        s.send_response_headers(RESPONSE)
        assert s.response_headers.get(":status") == "403"
        s.finish()
        assert "response status=403" in h.logs("info")


def test_trailers_both_directions():
    with harness("trailers") as h:
        s = h.http()
        s.send_request_headers(REQUEST)
        s.send_request_body(b"abc")
        assert s.send_request_trailers([("grpc-status", "0")]) is Action.CONTINUE
        assert s.request_trailers.get_all("x-wasm-trailer") == ["req"]
        assert s.take_request_body() == b"abc"
        assert s.request_complete
        s.send_response_headers(RESPONSE)
        s.send_response_trailers([("x-t", "1")])
        assert s.response_trailers.get("x-wasm-trailer") == "resp"
        assert s.response_complete
        s.finish()


def test_buffered_body_is_seen_whole_and_replaced():
    with harness("buffer") as h:
        s = h.http()
        s.send_request_headers(REQUEST)
        assert s.send_request_body(b"hello ") is Action.PAUSE
        assert s.held_request_body == b"hello "
        assert s.take_request_body() == b""
        assert s.send_request_body(b"world") is Action.PAUSE
        assert s.send_request_body(b"!", end_stream=True) is Action.CONTINUE
        assert s.take_request_body() == b"HELLO WORLD!"
        assert s.request_complete
        assert "request body=hello world!" in h.logs("info")
        s.send_response_headers(RESPONSE)
        s.send_response_body(b"resp", end_stream=False)
        s.send_response_body(b"onse", end_stream=True)
        assert s.take_response_body() == b"response-buffered"
        s.finish()


def test_streamed_body_chunks_are_edited_one_by_one():
    with harness("stream") as h:
        s = h.http()
        s.send_request_headers(REQUEST)
        assert s.send_request_body(b"a") is Action.CONTINUE
        assert s.take_request_body() == b"a|"
        assert s.send_request_body(b"b", end_stream=True) is Action.CONTINUE
        assert s.take_request_body() == b"b|"
        s.send_response_headers(RESPONSE)
        s.send_response_body(b"x")
        s.send_response_body(b"y", end_stream=True)
        assert s.take_response_body() == b">x>y"
        s.finish()


def test_pause_at_headers_holds_body_until_a_tick_resumes_it():
    with harness("pause stream tick=100") as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-pause", "1")]) is Action.PAUSE
        assert not s.request_headers_forwarded
        # StopAllIteration: body is held without calling the filter
        assert s.send_request_body(b"data", end_stream=True) is Action.PAUSE
        assert s.take_request_body() == b""
        h.advance(99)
        assert not s.refresh() & 256  # not forwarded before the tick
        h.advance(1)
        assert f"resumed {s.context_id}" in h.logs("info")
        s.refresh()
        assert s.request_headers_forwarded and s.request_complete
        # the held body went through the filter on continue ("stream" appends "|")
        assert s.take_request_body() == b"data|"
        s.finish()


def test_pause_response_resumed_by_tick():
    with harness("pause tick=50") as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-pause-response", "1")], end_stream=True)
        assert s.send_response_headers(RESPONSE) is Action.PAUSE
        assert s.response_paused
        h.advance(50)
        s.refresh()
        assert s.response_headers_forwarded and not s.response_paused
        s.finish()


def test_properties():
    with harness("props", vm_id="vm-1") as h:
        s = h.http(properties={"source.address": "10.0.0.1:34567", "source.port": 34567})
        s.send_request_headers(REQUEST, end_stream=True)
        hd = s.request_headers
        assert hd.get("x-plugin-name") == "plugin-a"
        assert hd.get("x-root-id") == "root-a"
        assert hd.get("x-vm-id") == "vm-1"
        assert hd.get("x-path") == "/hello?x=1"
        assert hd.get("x-method") == "GET"
        assert hd.get("x-host") == "example.com"
        assert hd.get("x-source") == "10.0.0.1:34567"
        assert hd.get("x-source-port") == "34567"
        assert hd.get("x-custom") == "v1"
        assert h.plugin.property("request.url_path", s.context_id) == b"/hello"
        assert h.plugin.property("request.query", s.context_id) == b"x=1"
        assert h.plugin.property(("request", "headers", "user-agent"), s.context_id) == b"pytest"
        # a root context has no stream attributes
        assert h.plugin.property("request.path") is None
        s.finish()


def test_properties_missing_without_stream_info():
    with harness("props") as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-source") == "missing"
        s.finish()


def test_metrics_counter_gauge_histogram():
    with harness("metrics") as h:
        for i in range(3):
            s = h.http()
            s.send_request_headers(REQUEST)
            assert h.metric("inflight") >= 1
            s.send_response_headers(RESPONSE)
            s.send_response_body(b"x" * (10 * (i + 1)), end_stream=True)
            s.finish()
        assert h.metric("requests_total") >= 3
        assert h.metric("inflight") == 0
        hist = h.metric("body_size")
        assert isinstance(hist, Histogram) and hist.count >= 3


def test_shared_data_cas_increments():
    with harness("shared", vm_id="shared-test") as h:
        for expected in range(1, 6):
            s = h.http()
            s.send_request_headers(REQUEST, end_stream=True)
            assert s.request_headers.get("x-count") == str(expected)
            s.finish()
        sv = h.shared_data("counter")
        value, cas = sv.value, sv.cas
        assert value == b"5" and cas > 0
        # a stale cas is refused, cas 0 always writes
        assert h.set_shared_data("counter", b"9", cas=cas + 1000) == 8
        assert h.set_shared_data("counter", b"9", cas=0) == 0
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-count") == "10"
        s.finish()


def test_shared_queue_notifications_are_asynchronous():
    with harness("queue", vm_id="queue-test") as h:
        for path in ("/a", "/b", "/c"):
            s = h.http()
            s.send_request_headers([(":method", "GET"), (":path", path)], end_stream=True)
            s.finish()
        # nothing is delivered inside enqueue
        assert not [m for m in h.logs("info") if m.startswith("dequeued")]
        assert h.queue_size("events") == 3
        assert h.dispatch() == 3  # one on_queue_ready per enqueue
        assert [m for m in h.logs("info") if m.startswith("dequeued")] == [
            "dequeued /a", "dequeued /b", "dequeued /c"]
        assert h.shared_data("dequeued").value == b"/a,/b,/c"
        assert h.queue_size("events") == 0


def test_ticks_follow_the_virtual_clock():
    with harness("tick=100", vm_id="tick") as h:
        assert h.plugin.tick_period_ms == 100
        h.advance(99)
        assert not [m for m in h.logs("info") if m.startswith("tick")]
        h.advance(1)
        h.advance(250)
        assert [m for m in h.logs("info") if m.startswith("tick")] == ["tick 1", "tick 2", "tick 3"]
        assert h.metric("ticks") >= 3


def test_foreign_function_from_python():
    calls = []

    def echo(args: bytes) -> bytes:
        calls.append(args)
        return b"echo:" + args

    with harness("foreign", foreign_functions={"echo": echo}) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-foreign") == "echo:/hello?x=1"
        assert calls == [b"/hello?x=1"]
        s.finish()


def test_unknown_foreign_function_is_not_found():
    with harness("foreign") as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-foreign").startswith("error:")
        s.finish()


def test_log_phase_reads_headers_and_teardown_order():
    with harness("log") as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        s.send_response_headers(RESPONSE, end_stream=True)
        s.finish()
        assert "done status=200" in h.logs("info")
        assert "done path=/hello?x=1" in h.logs("info")


def test_log_levels_map_to_python_logging():
    with harness("loglevels") as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        s.finish()
        for level, msg in zip(("trace", "debug", "info", "warn", "error", "critical"), "tdiwec"):
            assert msg in h.logs(level)


def test_panic_fails_the_stream_closed_and_the_vm():
    with harness("headers panic") as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-panic", "1")]) is Action.PAUSE
        assert s.failed
        lr = s.local_response
        assert lr.status == 503 and lr.details == "wasm_fail_stream"
        assert any("panic: boom" in m for m in h.logs("error"))
        assert h.plugin.vm.failed
        # Like Envoy (FAIL_CLOSED), later streams on the failed VM get the same 503.
        later = h.http()
        assert later.send_request_headers(REQUEST) is Action.PAUSE
        assert later.failed and later.local_response.status == 503
        later.finish()
        s.finish()


def test_several_plugins_share_one_vm_with_their_own_root_contexts():
    with harness("headers", vm_id="shared-vm") as h:
        second = h.add_plugin(configuration="headers", root_id="root-b", name="plugin-b")
        assert second.vm is h.plugin.vm
        assert second.context_id != h.plugin.context_id
        for plugin, root in ((h.plugin, "root-a"), (second, "root-b")):
            s = h.http(plugin)
            s.send_request_headers(REQUEST, end_stream=True)
            assert s.request_headers.get("x-wasm-req") == root
            s.finish()
        assert "configure root-b: headers" in h.logs("info")


def test_different_vm_config_gets_another_vm():
    vm1 = VmConfig(GO_HTTP, vm_id="one")
    vm2 = VmConfig(GO_HTTP, vm_id="two")
    with Host([PluginConfig(vm1, root_id="a", configuration="headers"),
               PluginConfig(vm1, root_id="b", configuration="headers"),
               PluginConfig(vm2, root_id="c", configuration="headers")]) as host:
        a, b, c = host.plugins
        assert a.vm is b.vm and a.vm is not c.vm
        assert len(host.vms) == 2


def test_context_ids_follow_envoys_per_vm_counter():
    with harness("headers") as h:
        root = h.plugin.context_id
        assert root == 1
        s1, s2 = h.http(), h.http()
        assert (s1.context_id, s2.context_id) == (2, 3)
        s1.finish()
        s2.finish()


def test_each_thread_gets_its_own_vm_and_streams_stay_on_theirs():
    with harness("headers") as h:
        mine = h.http()
        seen = {}

        def other():
            s = h.http()
            s.send_request_headers(REQUEST, end_stream=True)
            seen["vm"] = h.plugin.vm
            seen["root"] = h.plugin.context_id
            seen["header"] = s.request_headers.get("x-wasm-req")
            s.finish()
            try:
                mine.send_request_headers(REQUEST)  # a stream of the first thread's VM
            except Exception as e:  # noqa: BLE001
                seen["error"] = e
            h.host.release_thread()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen["vm"] is not h.plugin.vm
        assert seen["root"] == 1 and seen["header"] == "root-a"
        assert "another thread" in str(seen["error"])
        assert h.logs("info").count("configure root-a: headers") == 2
        mine.finish()


def test_computed_stream_attributes():
    import struct

    with harness("headers", start_time_ns=1_700_000_000_123_000_000) as h:
        s = h.http()
        s.send_request_headers(REQUEST + [("x-request-id", "rid-1"), ("referer", "r")])
        s.send_request_body(b"12345", end_stream=True)
        s.send_response_headers(RESPONSE + [("content-length", "2")])
        s.send_response_body(b"ok", end_stream=True)
        prop = lambda p: h.plugin.property(p, s.context_id)  # noqa: E731
        i64 = lambda p: struct.unpack("<q", prop(p))[0]  # noqa: E731
        assert prop("request.id") == b"rid-1" and prop("request.referer") == b"r"
        assert prop("request.useragent") == b"pytest" and prop("request.scheme") == b"http"
        assert i64("request.size") == 5 and i64("response.size") == 2
        assert i64("response.code") == 200
        assert i64("request.time") == 1_700_000_000_123_000_000
        # headers as they are now (the plugin's additions included) plus the body
        assert i64("request.total_size") == 5 + sum(len(k) + len(v) for k, v in s.request_headers)
        assert prop(("response", "headers", "content-type")) == b"text/plain"
        assert prop("response.code_details") is None
        s.finish()


def test_metrics_snapshot_and_prometheus_text():
    from pyproxywasm.metrics import snapshot

    with harness("metrics") as h:
        for body in (b"abc", b"x" * 700):
            s = h.http()
            s.send_request_headers(REQUEST)
            s.send_response_headers(RESPONSE)
            s.send_response_body(body, end_stream=True)
            s.finish()
        by_name = {m.name: m for m in snapshot(h.namespace)}
        assert by_name["requests_total"].kind == "counter" and by_name["requests_total"].value == 2
        assert by_name["body_size"].kind == "histogram" and by_name["body_size"].sum == 703
        cumulative = [0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
        bounds = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500",
                  "5000", "10000", "30000", "60000", "300000", "600000", "1800000", "3600000"]
        assert h.prometheus() == (
            "# TYPE requests_total counter\nrequests_total{} 2\n\n"
            "# TYPE inflight gauge\ninflight{} 0\n\n"
            "# TYPE body_size histogram\n"
            + "".join(f'body_size_bucket{{le="{b}"}} {n}\n' for b, n in zip(bounds, cumulative))
            + 'body_size_bucket{le="+Inf"} 2\nbody_size_sum{} 703\nbody_size_count{} 2\n\n')


def test_buffer_limit_ends_the_request_with_413():
    with harness("buffer headers", buffer_limit=1000) as h:
        s = h.http()
        s.send_request_headers(REQUEST)
        assert s.send_request_body(b"x" * 600) is Action.PAUSE
        assert s.send_request_body(b"x" * 600) is Action.PAUSE  # 1200 held > 1000
        lr = s.local_response
        assert (lr.status, lr.details) == (413, "request_payload_too_large")
        assert s.held_request_body == b"" and s.take_request_body() == b""
        # like Envoy's, the local reply went through the plugin's response callbacks
        assert s.response_headers.get(":status") == "413"
        assert s.response_headers.get("x-wasm-resp") == "root-a"
        s.finish()


def test_buffer_limit_on_the_response_is_a_500():
    with harness("buffer", buffer_limit=1000) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        s.send_response_headers(RESPONSE)
        s.send_response_body(b"y" * 2000)
        # response headers already went out: Envoy can only reset
        assert s.reset and s.local_response.status == 500
        s.finish()
