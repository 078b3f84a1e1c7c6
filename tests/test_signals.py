"""Signal-based traps stay contained whatever signal handlers Python installs later.

The engine compiles guest code without explicit bounds checks: an out-of-bounds access
faults (SIGSEGV), `unreachable` raises SIGILL, and the core's handler turns both into traps
(csrc/signals.c). Each case runs in a subprocess, so a host crash is a failed test (with
its exit signal) rather than a dead pytest.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REQUEST, WAT

PRELUDE = f"""
import faulthandler, sys, threading, time
sys.path.insert(0, {str(WAT.parent.parent)!r})
from pyproxywasm import Host, PluginConfig, VmConfig
from pyproxywasm._binding import lib

FAULT = {str(WAT / "fault.wasm")!r}
REQUEST = {REQUEST!r}

def run(host, vm_id, header):
    plugin = host.add_plugin(PluginConfig(VmConfig(FAULT, vm_id=vm_id), name=vm_id))
    s = plugin.http_stream()
    s.send_request_headers(REQUEST + [(header, "1")], True)
    lr = s.local_response
    vm = plugin.vm
    s.finish()
    return s.failed, lr.status if lr else None, vm.error
"""


def _run(body: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _alive(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, (f"host died (exit {p.returncode}, "
                               f"{signal.Signals(-p.returncode).name if p.returncode < 0 else ''})"
                               f"\nstdout: {p.stdout}\nstderr: {p.stderr[-3000:]}")
    return p.stdout


def test_the_engine_uses_signal_based_traps():
    out = _alive(_run("""
        with Host() as host:
            host.add_plugin(PluginConfig(VmConfig(FAULT)))
            print("enabled", lib.pw_signals_enabled())
    """))
    assert "enabled 1" in out


@pytest.mark.parametrize("wait", [False, True], ids=["at-once", "after-a-tick"])
def test_faulthandler_enabled_after_start_cannot_crash_the_host(wait):
    """faulthandler installed after the host started (and before any check could see it,
    or after the ticker put the core's handler back in front): a trap and an out-of-bounds
    access in guest code are traps; the host serves on."""
    out = _alive(_run(f"""
        with Host() as host:
            print("ok", run(host, "warm", "x-none"))
            faulthandler.enable()
            if {wait!r}:
                time.sleep(0.05)
            for header in ("x-trap", "x-oob", "x-div", "x-recurse"):
                failed, status, error = run(host, header, header)
                print(header, failed, status, error.splitlines()[0][:120])
            print("after", run(host, "after", "x-none"))
            print("repairs", lib.pw_signals_repairs())
    """))
    assert "ok (False, None, '')" in out
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["x-trap"].startswith("True 503") and "unreachable" in lines["x-trap"]
    assert lines["x-oob"].startswith("True 503") and "memory fault" in lines["x-oob"]
    assert lines["x-div"].startswith("True 503") and "divide by zero" in lines["x-div"]
    assert lines["x-recurse"].startswith("True 503") and "stack" in lines["x-recurse"]
    assert lines["after"] == "(False, None, '')"
    assert int(lines["repairs"]) >= 1  # the core's handler went back in front


def test_a_later_handler_that_does_not_chain_is_put_behind_the_core():
    """A Python-level SIGSEGV handler (it never chains: alone it would loop on the fault)
    installed after start: once the ticker has run, guest faults are traps again."""
    out = _alive(_run("""
        import signal
        with Host() as host:
            run(host, "warm", "x-none")
            signal.signal(signal.SIGSEGV, lambda *a: None)
            signal.signal(signal.SIGILL, lambda *a: None)
            time.sleep(0.05)
            print("oob", run(host, "oob", "x-oob")[:2])
            print("trap", run(host, "trap", "x-trap")[:2])
    """, timeout=60))
    assert "oob (True, 503)" in out and "trap (True, 503)" in out


def test_a_real_host_crash_still_crashes_and_faulthandler_reports_it():
    """The core's handler does not swallow faults outside guest code: a NULL read in the
    host, with faulthandler enabled after start, still ends the process with SIGSEGV and
    faulthandler's report."""
    p = _run("""
        import ctypes
        with Host() as host:
            run(host, "warm", "x-none")
            faulthandler.enable()
            time.sleep(0.05)
            print("crashing", flush=True)
            ctypes.string_at(0)
            print("survived")
    """, timeout=60)
    assert p.returncode == -signal.SIGSEGV, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "survived" not in p.stdout
    assert "Fatal Python error: Segmentation fault" in p.stderr


def test_deep_recursion_on_a_small_thread_stack_is_contained():
    """With signals on, a guest on a thread whose stack cannot hold the wasm stack is
    refused before it runs (contain's check), and on a big enough one its recursion ends
    in a stack-exhausted trap: never a SIGSEGV of the host. faulthandler, enabled before
    the VMs were made, is put behind the core's handler when they are: it reports nothing."""
    p = _run("""
        faulthandler.enable()
        results = {}
        def worker(name, size):
            threading.stack_size(size)
            def body():
                with Host() as host:
                    try:
                        results[name] = run(host, name, "x-recurse")
                    except Exception as e:
                        results[name] = (True, None, str(e))
            t = threading.Thread(target=body)
            t.start()
            t.join()
        worker("small", 256 * 1024)
        worker("big", 8 << 20)
        for k, (failed, status, error) in sorted(results.items()):
            print(k, failed, status, error.splitlines()[0][:160])
    """)
    lines = dict(line.split(" ", 1) for line in _alive(p).splitlines())
    assert lines["small"].startswith("True None") and "stack has" in lines["small"]
    assert lines["big"].startswith("True 503") and "call stack exhausted" in lines["big"]
    assert "Fatal Python error" not in p.stderr


def test_explicit_checks_remain_selectable():
    out = _alive(_run("""
        with Host() as host:
            print("enabled", lib.pw_signals_enabled())
            print("oob", run(host, "oob", "x-oob")[:2])
    """, env={"PYPROXYWASM_SIGNALS": "0"}))
    assert "enabled 0" in out and "oob (True, 503)" in out
