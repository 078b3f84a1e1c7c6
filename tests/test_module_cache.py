"""The compiled-module cache on disk, and how the loader treats it."""
from __future__ import annotations

import os

from pyproxywasm import module
from pyproxywasm.testing import PluginHarness

from conftest import REQUEST, wat


def _files(d) -> list:
    return sorted(p for p in os.listdir(d) if p.endswith(".cwasm"))


def test_compile_is_stored_and_loaded_later(tmp_path):
    wasm = wat("bench_filter")
    module.forget_compiled()
    module.compile_module(wasm, str(tmp_path))
    (name,) = _files(tmp_path)
    assert name.startswith(module.inspect(wasm).digest)
    module.forget_compiled()
    compiled = module.compile_module(wasm, str(tmp_path))  # from the file this time
    assert compiled.spec.abi_version == "0.2.1"


def test_a_corrupt_cache_file_is_replaced(tmp_path):
    wasm = wat("bench_filter")
    module.forget_compiled()
    module.compile_module(wasm, str(tmp_path))
    (name,) = _files(tmp_path)
    (tmp_path / name).write_bytes(b"not a compiled module")
    module.forget_compiled()
    module.compile_module(wasm, str(tmp_path))
    assert (tmp_path / name).read_bytes() != b"not a compiled module"


def test_a_directory_others_can_write_is_not_used(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    module.forget_compiled()
    module.compile_module(wat("bench_filter"), str(shared))
    assert _files(shared) == []


def test_empty_environment_variable_turns_the_cache_off(monkeypatch, tmp_path):
    monkeypatch.setenv("PYPROXYWASM_CACHE_DIR", "")
    assert module.default_cache_dir() is None
    module.forget_compiled()
    with PluginHarness(wat("trap")) as h:  # compiles without a cache, and works
        s = h.http()
        s.send_request_headers(REQUEST, end_stream=True)
        s.finish()
    monkeypatch.setenv("PYPROXYWASM_CACHE_DIR", str(tmp_path))
    assert module.default_cache_dir() == str(tmp_path)
