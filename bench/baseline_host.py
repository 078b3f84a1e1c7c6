"""Benchmark baseline: a plain wasmtime-py Proxy-Wasm host.

This is the "obvious" way to host a Proxy-Wasm plugin from Python: wasmtime-py
runs the module and every ``env.proxy_*`` hostcall is a Python callback.  The
benchmarks compare pyproxywasm's C core against it for the same HTTP stream
lifecycle, so it is meant to be a fair, reasonably efficient host rather than
a strawman:

* the module is compiled once and instantiated once; exports (the memory and
  every ``proxy_on_*`` callback) are looked up once;
* only the imports the module actually declares are defined;
* hostcalls touch linear memory directly through the raw data pointer
  (``ctypes.string_at`` / ``ctypes.memmove``) instead of going through
  ``Memory.read``/``Memory.write`` (which build intermediate bytearrays);
* header maps are plain ``list[tuple[bytes, bytes]]``.

It implements a deliberately small subset of the ABI (see docs/ARCHITECTURE.md):
``proxy_log``, ``proxy_get_header_map_value``, ``proxy_add_header_map_value``,
``proxy_replace_header_map_value``, ``proxy_remove_header_map_value``,
``proxy_get_header_map_pairs`` and ``proxy_get_buffer_bytes`` (VM and plugin
configuration only).  Stream callbacks' return values (Pause etc.) are ignored;
callbacks the plugin does not export are skipped; the HTTP teardown order is
Envoy's log -> done -> delete.  Request headers are writable only during
on_request_headers, response headers only during on_response_headers, and both
are read-only in on_log (ABI.md §5.4).

Nearly all of the per-lifecycle cost is wasmtime-py's generic call machinery:
``Func.__call__`` re-queries the function type and converts every argument
through ``Val`` on each call, and each hostcall goes through the generic
``trampoline`` (a ``Caller`` plus ``Val`` conversions).  That is the public API,
so it is what a straightforward wasmtime-py host pays.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
from collections import deque
from pathlib import Path

from wasmtime import Engine, FuncType, Linker, Module, Store, ValType

# Status codes (ABI.md §3.1).
OK = 0
NOT_FOUND = 1
BAD_ARGUMENT = 2
INVALID_MEMORY_ACCESS = 6

# Map types (ABI.md §3.3).
HTTP_REQUEST_HEADERS = 0
HTTP_RESPONSE_HEADERS = 2
_MAX_MAP_TYPE = 7

# Buffer types (ABI.md §3.4).
VM_CONFIGURATION = 6
PLUGIN_CONFIGURATION = 7
_MAX_BUFFER_TYPE = 8

_U32 = 0xFFFFFFFF
_string_at = ctypes.string_at
_memmove = ctypes.memmove
_pack_u32 = struct.Struct("<I").pack
_pack_ii = struct.Struct("<II").pack
_ZERO_U32 = b"\x00\x00\x00\x00"


def _i32s(n: int) -> list:
    return [ValType.i32()] * n


def _serialize_pairs(pairs: list) -> bytes:
    """ABI.md §6.1 pairs encoding."""
    parts = [_pack_u32(len(pairs))]
    parts.extend(_pack_ii(len(k), len(v)) for k, v in pairs)
    for k, v in pairs:
        parts.append(k)
        parts.append(b"\x00")
        parts.append(v)
        parts.append(b"\x00")
    return b"".join(parts)


class BaselineHost:
    """One VM, one plugin (root context 1), HTTP streams run synchronously."""

    def __init__(self, wasm: bytes, plugin_config: bytes = b"") -> None:
        self._engine = Engine()
        self._store = store = Store(self._engine)
        self._module = module = Module(self._engine, wasm)

        self._vm_config = b""
        self._plugin_config = bytes(plugin_config)
        self._in_configure = False
        self.logs: deque = deque(maxlen=1024)  # (level, message) of proxy_log
        # Map availability per map type: the list, or None when unavailable.
        self._maps: list = [None] * (_MAX_MAP_TYPE + 1)
        self._maps_writable = False

        # Imports: define exactly those the module declares.
        hostcalls = {
            "proxy_log": (self._h_log, 3),
            "proxy_get_header_map_value": (self._h_get_header_map_value, 5),
            "proxy_add_header_map_value": (self._h_add_header_map_value, 5),
            "proxy_replace_header_map_value": (self._h_replace_header_map_value, 5),
            "proxy_remove_header_map_value": (self._h_remove_header_map_value, 3),
            "proxy_get_header_map_pairs": (self._h_get_header_map_pairs, 3),
            "proxy_get_buffer_bytes": (self._h_get_buffer_bytes, 5),
        }
        linker = Linker(self._engine)
        for imp in module.imports:
            entry = hostcalls.get(imp.name) if imp.module == "env" else None
            if entry is None:
                raise RuntimeError(
                    f"baseline host does not implement import {imp.module}.{imp.name}")
            fn, nparams = entry
            linker.define_func("env", imp.name,
                               FuncType(_i32s(nparams), _i32s(1)), fn,
                               access_caller=True)
        instance = linker.instantiate(store, module)
        exports = instance.exports(store)

        def export(name: str, required: bool = True):
            try:
                return exports[name]
            except KeyError:
                if required:
                    raise RuntimeError(f"plugin does not export {name}") from None
                return None

        self._memory = export("memory")
        self._alloc = export("proxy_on_memory_allocate", False) or export("malloc", False)
        if self._alloc is None:
            raise RuntimeError("plugin exports neither proxy_on_memory_allocate nor malloc")
        # Like cpp-host, a callback the plugin does not export is skipped
        # (and a missing on_vm_start/on_configure counts as success).
        self._on_context_create = export("proxy_on_context_create", False)
        self._on_vm_start = export("proxy_on_vm_start", False)
        self._on_configure = export("proxy_on_configure", False)
        self._on_request_headers = export("proxy_on_request_headers", False)
        self._on_response_headers = export("proxy_on_response_headers", False)
        self._on_log = export("proxy_on_log", False)
        self._on_done = export("proxy_on_done", False)
        self._on_delete = export("proxy_on_delete", False)
        # ABI 0.1.0 header callbacks take (ctx, n) with no end_of_stream.
        self._headers_eos = not any(
            f is not None and len(f.type(store).params) == 2
            for f in (self._on_request_headers, self._on_response_headers))

        init = export("_initialize", False)
        if init is not None:
            init(store)
        else:
            start = export("_start", False)
            if start is not None:
                start(store)

        # Root (plugin) context.
        self._root_id = 1
        self._next_id = 2
        if self._on_context_create is not None:
            self._on_context_create(store, self._root_id, 0)
        if (self._on_vm_start is not None
                and not self._on_vm_start(store, self._root_id, len(self._vm_config))):
            raise RuntimeError("proxy_on_vm_start failed")
        ok = 1
        if self._on_configure is not None:
            self._in_configure = True
            try:
                ok = self._on_configure(store, self._root_id, len(self._plugin_config))
            finally:
                self._in_configure = False
        if not ok:
            raise RuntimeError("proxy_on_configure rejected the plugin configuration")

    # ------------------------------------------------------------------ stream

    def run_lifecycle(self, request_headers: list[tuple[bytes, bytes]],
                      response_headers: list[tuple[bytes, bytes]]) -> tuple[list, list]:
        store = self._store
        maps = self._maps
        req = list(request_headers)
        resp = list(response_headers)
        ctx = self._next_id
        self._next_id = ctx + 1

        if self._on_context_create is not None:
            self._on_context_create(store, ctx, self._root_id)

        self._maps_writable = True
        f = self._on_request_headers
        if f is not None:
            maps[HTTP_REQUEST_HEADERS] = req
            try:
                if self._headers_eos:
                    f(store, ctx, len(req), 1)
                else:
                    f(store, ctx, len(req))
            finally:
                maps[HTTP_REQUEST_HEADERS] = None
        f = self._on_response_headers
        if f is not None:
            maps[HTTP_RESPONSE_HEADERS] = resp
            try:
                if self._headers_eos:
                    f(store, ctx, len(resp), 1)
                else:
                    f(store, ctx, len(resp))
            finally:
                maps[HTTP_RESPONSE_HEADERS] = None
        self._maps_writable = False

        # Teardown, Envoy HTTP order. on_log sees read-only request and
        # response headers.
        if self._on_log is not None:
            maps[HTTP_REQUEST_HEADERS] = req
            maps[HTTP_RESPONSE_HEADERS] = resp
            try:
                self._on_log(store, ctx)
            finally:
                maps[HTTP_REQUEST_HEADERS] = None
                maps[HTTP_RESPONSE_HEADERS] = None
        if self._on_done is not None:
            self._on_done(store, ctx)
        if self._on_delete is not None:
            self._on_delete(store, ctx)
        return req, resp

    # ------------------------------------------------------- memory helpers

    def _mem(self, caller):
        """(base address, size) of linear memory; re-read after any guest call."""
        mem = self._memory
        return (ctypes.cast(mem.data_ptr(caller), ctypes.c_void_p).value or 0,
                mem.data_len(caller))

    def _return_bytes(self, caller, value: bytes, base: int, size: int,
                      ptr_out: int, size_out: int) -> int:
        """The allocation dance of ABI.md §6.2."""
        if ptr_out + 4 > size or size_out + 4 > size:
            return INVALID_MEMORY_ACCESS
        n = len(value)
        if n == 0:
            _memmove(base + ptr_out, _ZERO_U32, 4)
            _memmove(base + size_out, _ZERO_U32, 4)
            return OK
        p = self._alloc(caller, n) & _U32
        base, size = self._mem(caller)  # the allocator may have grown memory
        if p == 0 or p + n > size:
            return INVALID_MEMORY_ACCESS
        _memmove(base + p, value, n)
        _memmove(base + ptr_out, _pack_u32(p), 4)
        _memmove(base + size_out, _pack_u32(n), 4)
        return OK

    # ------------------------------------------------------------ hostcalls

    def _h_log(self, caller, level, msg_ptr, msg_size):
        level &= _U32
        if level > 5:
            return BAD_ARGUMENT
        msg_ptr &= _U32
        msg_size &= _U32
        base, size = self._mem(caller)
        if msg_ptr + msg_size > size:
            return INVALID_MEMORY_ACCESS
        self.logs.append((level, _string_at(base + msg_ptr, msg_size)))
        return OK

    def _h_get_header_map_value(self, caller, map_type, key_ptr, key_size,
                                ptr_out, size_out):
        map_type &= _U32
        if map_type > _MAX_MAP_TYPE:
            return BAD_ARGUMENT
        m = self._maps[map_type]
        if m is None:
            return BAD_ARGUMENT
        key_ptr &= _U32
        key_size &= _U32
        base, size = self._mem(caller)
        if key_ptr + key_size > size:
            return INVALID_MEMORY_ACCESS
        key = _string_at(base + key_ptr, key_size).lower()
        for k, v in m:
            if k == key:
                return self._return_bytes(caller, v, base, size,
                                          ptr_out & _U32, size_out & _U32)
        return NOT_FOUND

    def _read_key_value(self, caller, key_ptr, key_size, val_ptr, val_size):
        key_ptr &= _U32
        key_size &= _U32
        val_ptr &= _U32
        val_size &= _U32
        base, size = self._mem(caller)
        if key_ptr + key_size > size or val_ptr + val_size > size:
            return None
        return (_string_at(base + key_ptr, key_size).lower(),
                _string_at(base + val_ptr, val_size))

    def _writable_map(self, map_type):
        map_type &= _U32
        if map_type > _MAX_MAP_TYPE or not self._maps_writable:
            return None
        return self._maps[map_type]

    def _h_add_header_map_value(self, caller, map_type, key_ptr, key_size,
                                val_ptr, val_size):
        m = self._writable_map(map_type)
        if m is None:
            return BAD_ARGUMENT
        kv = self._read_key_value(caller, key_ptr, key_size, val_ptr, val_size)
        if kv is None:
            return INVALID_MEMORY_ACCESS
        m.append(kv)
        return OK

    def _h_replace_header_map_value(self, caller, map_type, key_ptr, key_size,
                                    val_ptr, val_size):
        m = self._writable_map(map_type)
        if m is None:
            return BAD_ARGUMENT
        kv = self._read_key_value(caller, key_ptr, key_size, val_ptr, val_size)
        if kv is None:
            return INVALID_MEMORY_ACCESS
        key = kv[0]
        for i, (k, _) in enumerate(m):
            if k == key:
                m[i] = kv
                tail = m[i + 1:]
                if tail:
                    m[i + 1:] = [e for e in tail if e[0] != key]
                return OK
        m.append(kv)
        return OK

    def _h_remove_header_map_value(self, caller, map_type, key_ptr, key_size):
        m = self._writable_map(map_type)
        if m is None:
            return BAD_ARGUMENT
        key_ptr &= _U32
        key_size &= _U32
        base, size = self._mem(caller)
        if key_ptr + key_size > size:
            return INVALID_MEMORY_ACCESS
        key = _string_at(base + key_ptr, key_size).lower()
        m[:] = [e for e in m if e[0] != key]
        return OK

    def _h_get_header_map_pairs(self, caller, map_type, ptr_out, size_out):
        map_type &= _U32
        if map_type > _MAX_MAP_TYPE:
            return BAD_ARGUMENT
        m = self._maps[map_type]
        data = _serialize_pairs(m) if m else b""  # empty/unavailable: ptr 0 / size 0
        base, size = self._mem(caller)
        return self._return_bytes(caller, data, base, size,
                                  ptr_out & _U32, size_out & _U32)

    def _h_get_buffer_bytes(self, caller, buffer_type, start, max_size,
                            ptr_out, size_out):
        buffer_type &= _U32
        if buffer_type > _MAX_BUFFER_TYPE:
            return BAD_ARGUMENT
        if buffer_type == VM_CONFIGURATION:
            buf = self._vm_config
        elif buffer_type == PLUGIN_CONFIGURATION and self._in_configure:
            buf = self._plugin_config
        else:
            return NOT_FOUND
        start &= _U32
        max_size &= _U32
        data = buf[start:start + max_size] if start < len(buf) else b""
        base, size = self._mem(caller)
        return self._return_bytes(caller, data, base, size,
                                  ptr_out & _U32, size_out & _U32)


if __name__ == "__main__":
    wasm_path = (Path(__file__).resolve().parent.parent
                 / "tests" / "plugins" / "wat" / "bench_filter.wasm")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    host = BaselineHost(wasm_path.read_bytes())
    req_in = [(b":method", b"GET"), (b":path", b"/"),
              (b":authority", b"example.com"), (b"user-agent", b"bench")]
    resp_in = [(b":status", b"200"), (b"server", b"upstream")]

    for _ in range(50):  # warm-up
        host.run_lifecycle(req_in, resp_in)
    t0 = time.perf_counter()
    for _ in range(n):
        req, resp = host.run_lifecycle(req_in, resp_in)
    dt = time.perf_counter() - t0

    assert (b"x-wasm-filter", b"1") in req, req
    assert dict(resp)[b"server"] == b"pyproxywasm", resp
    assert [v for k, v in resp if k == b"server"] == [b"pyproxywasm"], resp
    print(f"wasmtime-py baseline: {n} lifecycles, "
          f"{dt / n * 1e6:.2f} us per lifecycle")
    print("request headers: ", req)
    print("response headers:", resp)
