"""Load errors that say what is wrong: which import differs from this host's, and what a
module is when it is not a Proxy-Wasm plugin."""
from __future__ import annotations

import pytest
from wasmtime import wat2wasm

from pyproxywasm.errors import ModuleError
from pyproxywasm.module import compile_module

PLUGIN_TAIL = """
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
"""


def load(wat: str) -> None:
    compile_module(bytes(wat2wasm(wat)), cache_dir=None)


def error_of(wasm: bytes) -> str:
    with pytest.raises(ModuleError) as e:
        compile_module(wasm, cache_dir=None)
    return str(e.value)


def test_an_import_with_the_wrong_arity_is_named_with_both_counts():
    wat = ('(module (import "env" "proxy_grpc_call" (func (param i32 i32 i32 i32 i32 i32 i32 '
           'i32 i32 i32 i32) (result i32)))' + PLUGIN_TAIL + ")")
    assert error_of(bytes(wat2wasm(wat))) == (
        "the plugin imports proxy_grpc_call with 11 parameters; this host provides 12")


def test_an_import_with_the_wrong_types_and_an_unknown_one():
    wat = ('(module (import "env" "proxy_log" (func (param i32 i64 i32) (result i32)))'
           '(import "env" "proxy_teleport" (func (param i32) (result i32)))' + PLUGIN_TAIL + ")")
    assert error_of(bytes(wat2wasm(wat))) == (
        "the plugin imports proxy_log with type (i32, i64, i32) -> (i32); this host provides "
        "(i32, i32, i32) -> (i32); imports proxy_teleport, which this host does not provide")


def test_the_assemblyscript_grpc_shapes_are_adapted_and_then_named():
    ten = ('(import "env" "proxy_grpc_call" (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32 '
           'i32) (result i32)))')
    load("(module " + ten + PLUGIN_TAIL + ")")  # the AssemblyScript SDK's shape: adapted
    # next to it, a proxy_grpc_stream of neither shape is named against the adapted table
    eight = '(import "env" "proxy_grpc_stream" (func (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))'
    assert error_of(bytes(wat2wasm("(module " + ten + eight + PLUGIN_TAIL + ")"))) == (
        "the plugin imports proxy_grpc_stream with 8 parameters; this host provides 7")


@pytest.mark.parametrize("data, says", [
    (b"", "the file is empty (0 bytes)"),
    (b"\0asm\x0d\x00\x01\x00", "a WebAssembly component"),
    (b'(module (func (export "proxy_abi_version_0_2_1")))', "WebAssembly text (WAT)"),
])
def test_not_a_module(data, says):
    assert says in error_of(data)


@pytest.mark.parametrize("wat, says", [
    ('(module (import "http_handler" "get_uri" (func (param i32 i32) (result i32)))'
     ' (memory (export "memory") 1) (func (export "handle_request") (result i64) (i64.const 0)))',
     "an http-wasm guest"),
    ('(module (import "env" "abortOnCannotGrowMemory" (func (result i32)))'
     ' (memory (export "memory") 1) (func (export "_proxy_onStart")) (func (export "_malloc")'
     ' (param i32) (result i32) (i32.const 0)))', "an Emscripten build for Envoy's early Wasm"),
    ("(module)", "an empty WebAssembly module"),
    ('(module (memory (export "memory") 1) (func (export "_start")))', "a WASI program"),
])
def test_not_a_proxy_wasm_plugin_says_what_it_is(wat, says):
    message = error_of(bytes(wat2wasm(wat)))
    assert message.startswith("not a Proxy-Wasm plugin: ") and says in message


def test_a_plugin_without_its_abi_marker_is_told_so():
    wat = ('(module (memory (export "memory") 1) (func (export "proxy_on_vm_start") (param i32 i32)'
           ' (result i32) (i32.const 1)))')
    assert error_of(bytes(wat2wasm(wat))).startswith(
        "missing or unknown Proxy-Wasm ABI version: the module exports none of proxy_abi_version_0_1_0")
