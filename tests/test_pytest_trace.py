"""`pytest --proxywasm-trace`: a failing test's report shows the harness's ABI trace and
plugin logs (run in a pytest of its own, with pytester)."""
from __future__ import annotations

from conftest import GO_HTTP

pytest_plugins = ["pytester"]


def test_a_failing_test_shows_the_trace_and_logs(pytester):
    pytester.makepyfile(f'''
        def test_fails(proxywasm):
            h = proxywasm({str(GO_HTTP)!r}, configuration="headers", root_id="r")
            s = h.http()
            s.send_request_headers({{":path": "/x"}}, end_stream=True)
            assert s.request_headers.get("x-missing") == "1"

        def test_passes(proxywasm):
            proxywasm({str(GO_HTTP)!r})
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider", "--proxywasm-trace")
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "proxywasm trace (harness 0)" in out
    assert "-> proxy_on_request_headers(" in out and "proxy_get_header_map_value(" in out
    assert "proxywasm logs (harness 0)" in out
    assert "[info] wasm log r: request path=/x" in out
    assert out.count("proxywasm trace (harness") == 1  # the passing test shows nothing


def test_without_the_option_only_logs_are_shown(pytester):
    pytester.makepyfile(f'''
        def test_fails(proxywasm):
            h = proxywasm({str(GO_HTTP)!r}, configuration="headers")
            assert h.tracing is False
            assert False
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "proxywasm trace" not in result.stdout.str()
    assert "proxywasm logs (harness 0)" in result.stdout.str()
