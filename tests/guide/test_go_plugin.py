"""Testing a Go plugin (proxy-wasm-go-sdk): headers, bodies, a local reply, ticks, shared
data, a queue, metrics and an outbound call, each on the committed test plugins."""
import json
import pathlib

from pyproxywasm import Action
from pyproxywasm.testing import PluginHarness

PLUGINS = pathlib.Path(__file__).parent.parent / "plugins" / "go"
FILTER = PLUGINS / "httpfilter.wasm"
CALLOUTS = PLUGINS / "callouts.wasm"
GET = {":method": "GET", ":path": "/hello", ":authority": "example.com"}


def test_headers_and_a_local_reply():
    with PluginHarness(FILTER, configuration="headers", root_id="root-a") as h:
        s = h.http()
        assert s.send_request_headers(GET) is Action.CONTINUE
        assert s.request_headers.get("x-wasm-req") == "root-a"
        s.send_response_headers({":status": "200"}, end_stream=True)
        s.finish()
        assert h.logs("info", stream=s) == ["request path=/hello", "response status=200"]

        denied = h.http()
        assert denied.send_request_headers({**GET, "x-deny": "1"}) is Action.PAUSE
        assert denied.local_response.status == 403
        assert denied.send_response_headers({":status": "200"}) is Action.DROPPED
        denied.finish()


def test_ticks_shared_data_queue_and_metrics():
    with PluginHarness(FILTER, configuration="tick=100 shared queue metrics", vm_id="v") as h:
        for path in ("/a", "/b"):
            with h.http() as s:  # finish() on exit: on_log, on_done, on_delete
                s.send_request_headers({**GET, ":path": path}, end_stream=True)
                s.send_response_headers({":status": "200"}, end_stream=True)
        assert h.shared_data("counter").value == b"2"
        assert h.queue_size("events") == 2
        h.dispatch()                      # on_queue_ready, later, as in Envoy
        assert h.shared_data("dequeued").value == b"/a,/b"
        h.advance(250)                    # the virtual clock: two ticks fall due
        assert [m for m in h.logs("info") if m.startswith("tick")] == ["tick 1", "tick 2"]
        assert h.metric("requests_total") == 2   # this harness's own metrics
        assert "# TYPE requests_total counter\nrequests_total{} 2\n" in h.prometheus()


def test_an_outbound_call_answered_by_the_test():
    config = json.dumps({"mode": "auth", "cluster": "auth", "path": "/check"})
    with PluginHarness(CALLOUTS, configuration=config) as h:
        s = h.http()
        assert s.send_request_headers({**GET, "x-user": "ann"}) is Action.PAUSE
        (call,) = h.http_calls            # recorded: nothing left the process
        assert call.cluster == "auth" and call.headers.get(":path") == "/check"
        call.respond(200, {"x-auth-user": "ann"}, b"ok")
        h.dispatch()                      # the answer reaches the plugin
        s.refresh()
        assert s.request_headers.get("x-auth-user") == "ann"
        assert not s.request_paused
        s.finish()
