"""The Go SDK network-filter test plugin (tests/plugins/go/tcpfilter)."""
from __future__ import annotations

from pyproxywasm import Action, PeerType
from pyproxywasm.testing import PluginHarness

from conftest import GO_TCP


def test_connection_lifecycle_and_data_both_ways():
    with PluginHarness(GO_TCP, configuration="") as h:
        c = h.tcp()
        assert "new connection" in h.logs("info")
        assert c.send_downstream(b"hello") is Action.CONTINUE
        assert c.take_downstream_data() == b"HELLO"
        assert c.send_upstream(b"world") is Action.CONTINUE
        assert c.take_upstream_data() == b"up:world"
        assert "downstream hello eos=false" in h.logs("info")
        assert "upstream world eos=false" in h.logs("info")
        assert h.metric("tcp_bytes_total") >= 10
        c.close_upstream(PeerType.REMOTE)
        assert "upstream close peer=2" in h.logs("info")
        assert not c.done  # teardown waits for the downstream side, as in Envoy
        c.close_downstream(PeerType.LOCAL)
        assert c.done
        logs = h.logs("info")
        assert "downstream close peer=1" in logs and "tcp done" in logs
        assert logs.index("downstream close peer=1") < logs.index("tcp done")


def test_end_of_stream_is_forwarded():
    with PluginHarness(GO_TCP) as h:
        c = h.tcp()
        c.send_downstream(b"bye", end_stream=True)
        assert c.take_downstream_data() == b"BYE"
        assert "downstream bye eos=true" in h.logs("info")
        c.finish()
        assert c.done and "tcp done" in h.logs("info")


def test_paused_data_accumulates_and_resumes_on_tick():
    with PluginHarness(GO_TCP, configuration="resume tick=10") as h:
        c = h.tcp()
        assert c.send_downstream(b"pause-") is Action.PAUSE
        assert c.take_downstream_data() == b""
        # like Envoy's read buffer, the next call sees everything held so far
        assert c.send_downstream(b"more") is Action.PAUSE
        assert "downstream pause-more eos=false" in h.logs("info")
        h.advance(10)
        assert f"resumed {c.context_id}" in h.logs("info")
        c.refresh()
        assert not c.downstream_paused
        assert c.take_downstream_data() == b"pause-more"
        c.finish()


def test_plugin_closes_the_connection():
    with PluginHarness(GO_TCP) as h:
        c = h.tcp()
        c.send_downstream(b"please close")
        assert c.close_requested
        c.close_downstream()
        assert c.done
