"""The hostcall fuzzer's interpreter guest (tests/plugins/wat/fuzz_guest.wat) is generated
from the host's own import tables by csrc/fuzz/gen_guest.py: it must be current, so that a
hostcall added to csrc/hostcalls.c or csrc/wasi.c is fuzzed too, and it must be a plugin
the Python loader accepts (with no script every callback answers its default)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from pyproxywasm.testing import PluginHarness

from conftest import wat

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _gen():
    if not (ROOT / "csrc" / "fuzz" / "gen_guest.py").exists():
        # CI also runs the tests against an installed wheel, with tests/ copied alone
        pytest.skip("needs the source tree (csrc/)")
    spec = importlib.util.spec_from_file_location("gen_guest", ROOT / "csrc" / "fuzz" / "gen_guest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_guest_is_generated_from_the_current_hostcall_tables():
    gen = _gen()
    committed = (ROOT / "tests" / "plugins" / "wat" / "fuzz_guest.wat").read_text()
    assert committed == gen.render(), "run: python csrc/fuzz/gen_guest.py && python tests/plugins/wat/build.py"
    # every proxy_* hostcall the host defines is imported
    names = {name for _, name, _, _ in gen.imports()}
    assert {"proxy_log", "proxy_get_header_map_pairs", "proxy_set_buffer_bytes", "fd_write"} <= names


def test_guest_loads_and_passes_traffic_without_a_script():
    with PluginHarness(wat("fuzz_guest")) as h:
        s = h.http()
        s.send_request_headers([(":path", "/")], end_stream=True)
        s.send_response_headers([(":status", "200")], end_stream=True)
        assert s.request_headers == [(":path", "/")]
        assert s.response_complete
        s.finish()
