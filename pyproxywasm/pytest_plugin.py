"""pytest fixtures for plugin authors (loaded automatically once pyproxywasm is installed).

    def test_adds_header(proxywasm):
        h = proxywasm("filter.wasm", configuration="...")
        s = h.http()
        s.send_request_headers({":path": "/"}, end_stream=True)
        assert s.request_headers.get("x-added") == "1"

Each call of the fixture makes a PluginHarness (a real host around the real module, with a
virtual clock and captured logs); all of them are closed when the test ends.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from .testing import PluginHarness


@pytest.fixture
def proxywasm() -> Iterator[Callable[..., PluginHarness]]:
    made: list[PluginHarness] = []

    def factory(code: Any, **kwargs: Any) -> PluginHarness:
        harness = PluginHarness(code, **kwargs)
        made.append(harness)
        return harness

    yield factory
    for harness in reversed(made):
        harness.close()
