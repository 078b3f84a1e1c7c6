"""Outbound calls over real networking: the WAT callout plugin (tests/plugins/wat/callout.wat)
calling real servers on 127.0.0.1 (tests/servers.py), in the harness and in workers."""
from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import REQUEST, wat
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm.net import Cluster, TlsSettings
from pyproxywasm.testing import PluginHarness
from servers import *  # noqa: F401,F403 - the server fixtures
from servers import refused_endpoint as _refused

CALL = REQUEST + [("x-call", "h")]


@pytest.fixture
def silent_endpoint():
    """A listener whose connections are accepted by the kernel and never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def harness(*clusters: Cluster, **kw) -> PluginHarness:
    return PluginHarness(wat("callout"), clusters=list(clusters), **kw)


def body_of(logs: list[str]) -> dict:
    (body,) = [line[len("body="):] for line in logs if line.startswith("body=")]
    return json.loads(body)


def test_auth_pattern_against_a_real_server(http1_server):
    with harness(Cluster("svc", (http1_server.endpoint,))) as h:
        s = h.http()
        assert s.send_request_headers(CALL, end_stream=True) == 1
        assert h.settle(5)
        assert "status=200" in h.logs() and h.logs()[-1] == "get_status 0"
        echoed = body_of(h.logs())
        assert echoed["method"] == "GET" and echoed["path"] == "/check"
        assert echoed["authority"] == "svc" and echoed["body"] == "ping"
        assert ["content-length", "4"] in echoed["headers"]
        assert s.refresh() & 64  # the request went on


def test_connection_reuse_across_calls(http1_server):
    with harness(Cluster("svc", (http1_server.endpoint,))) as h:
        for _ in range(5):
            h.http().send_request_headers(CALL, end_stream=True)
            assert h.settle(5)
        assert h.logs().count("status=200") == 5
        assert http1_server.connections == 1


def test_refused_connection_is_a_failure():
    with harness(Cluster("svc", (_refused(),), connect_timeout=1)) as h:
        s = h.http()
        s.send_request_headers(CALL, end_stream=True)
        assert h.settle(5)
        assert h.logs()[1:] == ["response 0", "response 0", "response 0", "get_status 11"]
        assert s.refresh() & 64


def test_server_that_never_answers_times_out(silent_endpoint):
    # The plugin's timeout is 1000 ms.
    with harness(Cluster("svc", (silent_endpoint,))) as h:
        h.http().send_request_headers(CALL, end_stream=True)
        start = time.monotonic()
        assert h.settle(5)
        assert 0.9 < time.monotonic() - start < 3
        assert h.logs()[-1] == "get_status 11"


def test_tls_cluster_verifies_the_server(http1_tls_server, tls_ca):
    good = Cluster("svc", (http1_tls_server.endpoint,), tls=TlsSettings(ca_file=tls_ca.ca_file, sni="localhost"))
    with harness(good) as h:
        h.http().send_request_headers(CALL, end_stream=True)
        assert h.settle(5) and "status=200" in h.logs()
    bad = Cluster("svc", (http1_tls_server.endpoint,), tls=TlsSettings(ca_file=tls_ca.other_ca_file))
    with harness(bad) as h:
        h.http().send_request_headers(CALL, end_stream=True)
        assert h.settle(5) and h.logs()[-1] == "get_status 11"


def test_allow_any_host_calls_host_port_directly(http1_server):
    # The plugin calls cluster "svc": make "svc" no cluster and let allow_any_host resolve
    # only host:port names: an unknown plain name stays unknown.
    with PluginHarness(wat("callout"), clusters=[], allow_any_host=True) as h:
        h.http().send_request_headers(CALL, end_stream=True)
        assert h.logs()[-1] == "call 2"  # "svc" is not host:port


def test_root_delete_cancels_a_real_call(silent_endpoint):
    with harness(Cluster("svc", (silent_endpoint,))) as h:
        h.http().send_request_headers(CALL, end_stream=True)
        assert h.calls_in_flight() == 1
        assert h.plugin.close()
        assert h.calls_in_flight() == 0
        time.sleep(1.2)  # past the plugin's 1 s timeout: a failure would have come by now
        h.dispatch()
        assert h.logs() == ["call 0"]  # no callback into the deleted root


def test_workers_with_real_calls(http1_server):
    cluster = Cluster("svc", (http1_server.endpoint,))
    with Host([PluginConfig(VmConfig(wat("callout")))], concurrency=2, clusters=[cluster]) as host:
        def start(n: int) -> list:
            out = []
            for _ in range(n):
                s = host.plugins[0].http_stream()
                assert s.send_request_headers(CALL, end_stream=True) == 1
                out.append(s)
            return out

        streams = [w.call(start, 100).result() for w in host.workers]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = [w.call(lambda ss: sum(1 for s in ss if s.refresh() & 64), ss).result()
                    for w, ss in zip(host.workers, streams)]
            if done == [100, 100]:
                break
            time.sleep(0.02)
        assert done == [100, 100]
        assert http1_server.requests == 200
