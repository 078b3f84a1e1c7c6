"""Binds the C core to the pinned wasmtime wheel, once, at import.

The wheel ships `_libwasmtime.so` but no headers, so csrc/wt.h declares what the core uses.
Here we make sure those declarations fit the installed library: the version must be the
pinned one and our struct sizes must equal the ctypes structs wasmtime-py itself uses.
Any mismatch fails the import with one message naming the expected version.
"""
from __future__ import annotations

import ctypes
import importlib.metadata

from ._core import ffi, lib

WASMTIME_VERSION = "50.0.1"


class WasmtimeMismatch(ImportError):
    """The installed wasmtime is not the one the C core was written against."""


def _fail(why: str) -> None:
    raise WasmtimeMismatch(
        f"pyproxywasm needs wasmtime=={WASMTIME_VERSION} (pip install "
        f"'wasmtime=={WASMTIME_VERSION}'): {why}"
    )


def _bind() -> None:
    try:
        installed = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        _fail("wasmtime is not installed")
    if installed != WASMTIME_VERSION:
        _fail(f"found wasmtime {installed}")
    from wasmtime import _bindings, _ffi  # the library wasmtime-py loaded

    libpath = _ffi.dll._name
    sizes = ffi.new("size_t[6]")
    lib.pw_wt_struct_sizes(sizes)
    expected = [
        ctypes.sizeof(_bindings.wasmtime_func_t),
        ctypes.sizeof(_bindings.wasmtime_memory_t),
        ctypes.sizeof(_bindings.wasmtime_instance_t),
        ctypes.sizeof(_bindings.wasmtime_extern_t),
        ctypes.sizeof(_bindings.wasmtime_val_raw_t),
        ctypes.sizeof(_bindings.wasm_byte_vec_t),
    ]
    if list(sizes) != expected:
        _fail(f"C API struct sizes differ (ours {list(sizes)}, wasmtime-py {expected})")
    err = ffi.new("char[512]")
    if lib.pw_wt_bind(libpath.encode(), err, 512) != 0:
        _fail(ffi.string(err).decode(errors="replace"))


_bind()
