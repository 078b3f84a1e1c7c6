"""The GIL across core calls (CORE_CALL in pyproxywasm/_fast.h): kept while at most one
thread runs VMs, released on every call once more do; a guest call that runs for a tick
gives it up, and Python callbacks and calls nested inside a call find it as they expect."""
from __future__ import annotations

import gc
import logging
import threading
import time

import pytest

from pyproxywasm import Action, Host, PluginConfig, VmConfig
from pyproxywasm import http as http_mod

from conftest import REQUEST, WAT, BusyThread

pytestmark = pytest.mark.skipif(http_mod._fast is None, reason="the C event path is not built")
fast = http_mod._fast
SPIN = WAT / "spin_log.wasm"
BENCH = WAT / "bench_filter.wasm"
RESPONSE = [(":status", "200"), ("content-type", "text/plain")]


def _policy() -> bool:
    """The choice the count of VM threads calls for."""
    return len(http_mod._vm_threads) <= 1


def test_the_gil_is_kept_with_one_vm_thread_and_released_with_two():
    main = threading.get_ident()
    base = dict(http_mod._vm_threads)  # states earlier tests left on this thread, if any
    with Host([PluginConfig(VmConfig(BENCH), root_id="bench")]) as one:
        s = one.plugins[0].http_stream()
        s.send_request_headers(REQUEST, end_stream=True)
        s.finish()
        assert http_mod._vm_threads[main] == base.get(main, 0) + 1
        assert fast.holds_gil() == _policy()
        with Host([PluginConfig(VmConfig(BENCH), root_id="bench")], concurrency=2) as two:
            workers = [w.call(threading.get_ident).result(10) for w in two.workers]
            assert all(http_mod._vm_threads.get(t) == 1 for t in workers)
            assert not fast.holds_gil()
            # Requests on the worker threads are unchanged by the choice.
            plugin = two.plugins[0]

            def request() -> str | None:
                s = plugin.http_stream()
                s.send_request_headers(REQUEST, end_stream=True)
                added = s.request_headers.get("x-wasm-filter")
                s.finish()
                return added

            assert [w.call(request).result(10) for w in two.workers] == ["1", "1"]
        assert not any(t in http_mod._vm_threads for t in workers)
        assert fast.holds_gil() == _policy()
    assert http_mod._vm_threads == base and fast.holds_gil() == _policy()
    if not base:
        assert fast.holds_gil()


def test_a_long_guest_call_gives_the_gil_to_other_threads(caplog, hold_gil):
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    with Host([PluginConfig(VmConfig(SPIN), configuration="300", name="spin", deadline_ms=5000)]) as host:
        s = host.plugins[0].http_stream()
        with BusyThread() as other:
            time.sleep(0.01)
            t0 = time.monotonic()
            assert s.send_request_headers(REQUEST) is Action.CONTINUE  # spins 300 ms
            took = time.monotonic() - t0
        s.finish()
    assert took >= 0.3
    # The other thread ran while the guest spun: the core gave the GIL up after a tick.
    during = [t for t in other.stamps if t0 + 0.05 < t < t0 + 0.25]
    assert len(during) > 20, len(during)
    # The log line the guest wrote after spinning reached Python, which took the GIL back.
    assert "spin_log after" in caplog.text


def test_calls_nested_in_a_log_handler_before_and_after_the_gil_is_given_up(caplog, hold_gil):
    """A log handler that drives another plugin's stream from inside a guest call: the
    nested call runs with the GIL kept (the outer call still holds it: on_response_headers
    logs before it spins) and after the outer call gave it up (on_request_headers spins
    first, then logs), and the outer call finds the GIL as it left it."""
    caplog.set_level(logging.INFO, logger="pyproxywasm")
    with Host([PluginConfig(VmConfig(SPIN), configuration="5", name="spin"),
               PluginConfig(VmConfig(BENCH), root_id="bench", name="bench")]) as host:
        spin, bench = host.plugins
        nested: list[tuple[str, str | None]] = []

        class Drive(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                s = bench.http_stream()
                s.send_request_headers(REQUEST, end_stream=True)
                added = s.request_headers.get("x-wasm-filter")
                s.send_response_headers(RESPONSE, end_stream=True)
                s.finish()
                gc.collect()  # Python that needs the GIL, inside the outer guest call
                nested.append((record.getMessage(), added))

        handler = Drive()
        spin.logger.addHandler(handler)
        try:
            with BusyThread():  # another thread wanting the GIL all along
                for _ in range(5):
                    s = spin.http_stream()
                    assert s.send_request_headers(REQUEST) is Action.CONTINUE
                    assert s.send_response_headers(RESPONSE) is Action.CONTINUE
                    s.finish()
                    gc.collect()
        finally:
            spin.logger.removeHandler(handler)
    assert nested == [("spin_log after", "1"), ("spin_log before", "1")] * 5


_FLIP = """
import logging, sys
from pyproxywasm import Action, Host, PluginConfig, VmConfig
from pyproxywasm import http as H

spin, how = sys.argv[1:]
host = Host([PluginConfig(VmConfig(spin), configuration="0", name="outer"),
             PluginConfig(VmConfig(spin, vm_id="inner"), configuration="20", name="inner")])
outer, inner = host.plugins
H._fast.set_hold_gil(True)
seen = []

class Flip(logging.Handler):
    def emit(self, record):
        s = inner.http_stream()      # spins 20 ms: the core offers the GIL back many times
        if how == "flip":
            H._fast.set_hold_gil(False)  # as when another thread starts VMs meanwhile
            seen.append(s.send_request_headers([(":path", "/")]))
        else:  # through cffi, which releases the GIL itself
            seen.append(s._general_headers(0, [(":path", "/")], False))
        s.finish()

outer.logger.addHandler(Flip())
outer.logger.setLevel(logging.INFO)
s = outer.http_stream()
assert s.send_request_headers([(":path", "/")]) is Action.CONTINUE
s.finish()
assert seen == [Action.CONTINUE], seen
host.close()
print("ok")
"""


@pytest.mark.parametrize("how", ["flip", "cffi"])
def test_a_call_nested_in_a_callback_gives_up_no_gil_it_does_not_hold(how):
    """An outer call keeps the GIL; a log handler inside it makes a call that releases the
    GIL itself: after the choice flipped (another thread started VMs), or through cffi.
    The core's yields during that inner call must not give the GIL up a second time (a
    fatal error). In a subprocess: a regression kills the interpreter."""
    import subprocess
    import sys
    import tempfile

    # From outside the checkout: the installed package, not the source tree.
    p = subprocess.run([sys.executable, "-c", _FLIP, str(SPIN), how], capture_output=True, text=True,
                       timeout=60, cwd=tempfile.gettempdir())
    assert p.returncode == 0 and p.stdout.strip() == "ok", (p.returncode, p.stdout, p.stderr[-2000:])
