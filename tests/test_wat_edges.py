"""ABI edge cases through hand-written WAT plugins (tests/plugins/wat)."""
from __future__ import annotations

import logging

import pytest
import wasmtime

from pyproxywasm import Action, ModuleError, PluginStartError, VmFailedError
from pyproxywasm.module import inspect
from pyproxywasm.testing import PluginHarness

from conftest import REQUEST, WAT, wat

OK, NOT_FOUND, BAD_ARGUMENT, INVALID_MEMORY_ACCESS, EMPTY, UNIMPLEMENTED = 0, 1, 2, 6, 7, 12


@pytest.mark.parametrize("path", sorted(WAT.glob("*.wat")), ids=lambda p: p.stem)
def test_committed_wasm_matches_its_source(path):
    assert path.with_suffix(".wasm").read_bytes() == wasmtime.wat2wasm(path.read_text())


def test_hostcall_statuses_for_bad_input():
    with PluginHarness(wat("edge"), configuration="cfg") as h:
        s = h.http()
        sent = REQUEST + [("x-empty", ""), ("x-bad-alloc", "yes")]
        assert s.send_request_headers(sent, end_stream=True) is Action.CONTINUE
        got = dict(s.request_headers)
        assert got == {**dict(sent),
            # out-of-range guest pointers never crash the host
            "x-log-oob": str(INVALID_MEMORY_ACCESS),
            "x-get-key-oob": str(INVALID_MEMORY_ACCESS),
            "x-get-ret-oob": str(INVALID_MEMORY_ACCESS),
            # an empty value: OK, written as ptr 0 / size 0, and no zero-byte allocation
            "x-empty-status": str(OK),
            "x-empty-ptr-size": "0",
            "x-missing-status": str(NOT_FOUND),
            # the plugin configuration is only a buffer during on_configure
            "x-plugin-config": str(NOT_FOUND),
            "x-buffer-type": str(BAD_ARGUMENT),
            "x-map-type": str(BAD_ARGUMENT),
            # malformed pairs are refused, and leave the map alone
            "x-bad-pairs": str(BAD_ARGUMENT),
            "x-log-level-bad": str(BAD_ARGUMENT),
            "x-effective": str(BAD_ARGUMENT),
            "x-done": str(NOT_FOUND),
            "x-empty-path": str(NOT_FOUND),
            "x-continue-bad": str(BAD_ARGUMENT),
            "x-continue-up": str(UNIMPLEMENTED),
            "x-http-call": str(BAD_ARGUMENT),  # no such upstream cluster
            "x-shared-missing": str(NOT_FOUND),
            "x-dequeue-unknown": str(NOT_FOUND),
            "x-resolve-unknown": str(NOT_FOUND),
            "x-queue-id-nonzero": "1",
            "x-dequeue-empty": str(EMPTY),
            "x-metric-type": str(BAD_ARGUMENT),
            "x-metric-unknown": str(NOT_FOUND),
            "x-counter-zero": str(BAD_ARGUMENT),
            "x-log-level": "0",  # the harness captures everything: TRACE
            "x-set-body": str(NOT_FOUND),
            # an allocator answering an out-of-range block
            "x-bad-alloc-status": str(INVALID_MEMORY_ACCESS),
            "x-pairs-count": str(len(sent) + 28),  # 28 reports before this one
        }
        assert not h.plugin.vm.failed
        s.finish()


def test_abi_0_1_0():
    with PluginHarness(wat("abi_0_1_0"), vm_configuration="the-vm-config") as h:
        assert h.plugin.vm.abi_version == "0.1.0"
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        got = s.request_headers
        assert got.get("x-abi") == "0.1.0"
        assert got.get("x-missing-status") == str(OK)  # 0.1.0: missing is OK + empty
        assert got.get("x-config") == "the-vm-config"
        assert got.get("x-continue") == str(OK)
        s.finish()


def test_abi_0_2_0():
    with PluginHarness(wat("abi_0_2_0"), configuration="plugin-config") as h:
        assert h.plugin.vm.abi_version == "0.2.0"
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        got = s.request_headers
        assert got.get("x-missing-status") == str(NOT_FOUND)
        assert got.get("x-config") == "plugin-config"
        assert got.get("x-eos") == "1"
        s.finish()


def test_abi_0_2_1_log_level_follows_the_logger():
    with PluginHarness(wat("abi_0_2_1")) as h:
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-log-level") == "0"
        s.finish()
        logging.getLogger("pyproxywasm").setLevel(logging.WARNING)
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        assert s.request_headers.get("x-log-level") == "3"
        s.finish()


def test_a_trap_fails_the_vm_and_later_use_is_refused():
    with PluginHarness(wat("trap")) as h:
        ok = h.http()
        assert ok.send_request_headers(REQUEST) is Action.CONTINUE
        bad = h.http()
        assert bad.send_request_headers(REQUEST + [("x-trap", "1")]) is Action.PAUSE
        assert bad.failed and bad.local_response.status == 503
        assert h.plugin.vm.failed
        assert "unreachable" in h.plugin.vm.error
        assert any("trapped" in m for m in h.logs("critical"))
        # a stream already in flight keeps its data but the plugin is not called again
        assert ok.send_response_headers([(":status", "200")]) in (Action.CONTINUE, Action.PAUSE)
        # a new stream on the failed VM: FAIL_CLOSED's 503, and no guest code runs
        later = h.http()
        assert later.send_request_headers(REQUEST) is Action.PAUSE
        assert later.local_response.status == 503 and "grpc-status" not in later.response_headers
        with pytest.raises(VmFailedError):
            h.plugin.tick()
        ok.finish()
        bad.finish()


def test_proc_exit_zero_in_start_is_a_normal_end():
    with PluginHarness(wat("start_exit")) as h:
        assert not h.plugin.vm.failed


def test_proc_exit_nonzero_in_start_fails_the_vm():
    code = bytearray(wat("start_exit"))
    # the data segment holds the exit code: find the lone "\0" after the data header
    text = (WAT / "start_exit.wat").read_text().replace('"\\00"', '"\\03"')
    with pytest.raises(PluginStartError, match="exited with code 3"):
        PluginHarness(wasmtime.wat2wasm(text))
    assert code  # the committed module is untouched


def test_missing_import_is_named():
    with pytest.raises(ModuleError, match="proxy_does_not_exist"):
        PluginHarness(wat("missing_import"))


def test_wrong_export_type_is_named():
    with pytest.raises(ModuleError, match=r"proxy_on_request_headers has type \(i32\) -> \(i32\)"):
        PluginHarness(wat("bad_export"))


def test_missing_abi_marker():
    with pytest.raises(ModuleError, match="missing or unknown Proxy-Wasm ABI version"):
        PluginHarness(wat("no_marker"))


def test_not_wasm_at_all():
    with pytest.raises(ModuleError, match="not a valid WebAssembly module"):
        PluginHarness(b"\0asm\x01\0\0\0\x01\xff")
    with pytest.raises(ModuleError, match="bad magic"):
        inspect(b"hello")


def test_code_from_a_missing_path():
    with pytest.raises(ModuleError, match="cannot read plugin code"):
        PluginHarness("/nonexistent/plugin.wasm")


def test_traps_do_not_depend_on_signal_handlers():
    # The engine installs no SIGSEGV/SIGILL handlers, so a handler installed after it (here
    # Python's faulthandler, as pytest and many apps enable it) cannot turn a trap into a
    # crash of the host.
    import faulthandler

    faulthandler.enable()
    with PluginHarness(wat("trap")) as h:
        s = h.http()
        assert s.send_request_headers(REQUEST + [("x-trap", "1")]) is Action.PAUSE
        assert s.failed and h.plugin.vm.failed
        s.finish()


def test_shared_queue_used_during_start_up():
    with PluginHarness(wat("start_queue"), vm_id="start-queue") as h:
        assert h.queue_size("start-queue") == 1
        assert h.dispatch() == 0  # no root registered it: the notice is dropped, nothing breaks
