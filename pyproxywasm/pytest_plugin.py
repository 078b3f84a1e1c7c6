"""pytest fixtures for plugin authors (loaded automatically once pyproxywasm is installed).

    def test_adds_header(proxywasm):
        h = proxywasm("filter.wasm", configuration="...")
        s = h.http()
        s.send_request_headers({":path": "/"}, end_stream=True)
        assert s.request_headers.get("x-added") == "1"

Each call of the fixture makes a PluginHarness (a real host around the real module, with a
virtual clock and captured logs); all of them are closed when the test ends.

`pytest --proxywasm-trace` records the ABI call trace of every harness the fixture makes
(or pass trace=True to one): when such a test fails, its report shows each harness's
trace (every hostcall with its arguments and status, every callback) and plugin logs.
"""
from __future__ import annotations

from typing import Any, Callable, Generator, Iterator

import pytest

from .testing import PluginHarness

_HARNESSES = pytest.StashKey[list[PluginHarness]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--proxywasm-trace", action="store_true", default=False,
                     help="record the Proxy-Wasm ABI call trace of the proxywasm fixture's "
                          "harnesses and show it when a test fails")


@pytest.fixture
def proxywasm(request: pytest.FixtureRequest) -> Iterator[Callable[..., PluginHarness]]:
    made: list[PluginHarness] = []
    request.node.stash[_HARNESSES] = made
    trace = bool(request.config.getoption("--proxywasm-trace"))

    def factory(code: Any, **kwargs: Any) -> PluginHarness:
        if trace:
            kwargs.setdefault("trace", True)
        harness = PluginHarness(code, **kwargs)
        made.append(harness)
        return harness

    yield factory
    for harness in reversed(made):
        harness.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    harnesses = item.stash[_HARNESSES] if _HARNESSES in item.stash else []
    for i, h in enumerate(harnesses):
        try:
            if h.tracing:
                report.sections.append((f"proxywasm trace (harness {i})", h.format_trace()))
            logs = "\n".join(f"[{r.level}] {r.envoy_prefix}{r.message}" for r in h.log_records())
            report.sections.append((f"proxywasm logs (harness {i})", logs or "(none)"))
        except Exception as e:  # noqa: BLE001 - a report must not fail on a closed harness
            report.sections.append((f"proxywasm (harness {i})", f"unavailable: {e}"))
