"""Why a module cannot load, said plainly: what kind of module it is when it is not a
Proxy-Wasm plugin, and which import differs from what this host provides.

module.py asks here only once loading has failed, so none of this is on the load path.
"""
from __future__ import annotations

from typing import Any, Callable

from . import wasmbin
from ._binding import ffi, lib

def _read_table(call: Callable[[Any, Any], int]) -> dict[str, wasmbin.FuncType]:
    """A table of "name params results" lines from the core, by name."""
    out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
    if call(out, n) != lib.PW_OK:
        return {}
    try:
        text = ffi.buffer(out[0], n[0])[:].decode()
    finally:
        lib.pw_bytes_free(out[0])
    table = {}
    for line in text.splitlines():
        name, params, results = line.split(" ")
        table[name] = wasmbin.FuncType(
            tuple("i64" if c == "I" else "i32" for c in params.strip("-")),
            tuple("i64" if c == "I" else "i32" for c in results.strip("-")))
    return table


def host_imports(as_grpc: bool = False) -> dict[str, wasmbin.FuncType]:
    """The Proxy-Wasm functions ("env" module) the host defines, by name."""
    return _read_table(lambda out, n: int(lib.pw_host_imports(int(as_grpc), out, n)))


def host_exports() -> dict[str, wasmbin.FuncType]:
    """The exports the host calls or checks, with the type each must have, by name: the
    C core's declarations (csrc/abi.h), so the loader and the core never disagree."""
    return _read_table(lambda out, n: int(lib.pw_host_exports(out, n)))


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def import_mismatches(info: wasmbin.ModuleInfo, as_grpc: bool = False) -> list[str]:
    """One sentence per Proxy-Wasm import the host does not provide as the module wants."""
    table = host_imports(as_grpc)
    problems = []
    for imp in info.imports:
        if imp.module != "env" or imp.kind != "func" or not imp.name.startswith("proxy_"):
            continue
        have = table.get(imp.name)
        if have is None:
            problems.append(f"imports {imp.name}, which this host does not provide")
        elif imp.type is not None and imp.type != have:
            if len(imp.type.params) != len(have.params):
                problems.append(f"imports {imp.name} with {_count(len(imp.type.params), 'parameter')};"
                                f" this host provides {len(have.params)}")
            else:
                problems.append(f"imports {imp.name} with type {imp.type}; this host provides {have}")
    return problems


def not_wasm(data: bytes) -> str | None:
    """What the bytes are when they are not a core WebAssembly module, or None."""
    if not data:
        return "the file is empty (0 bytes), not a WebAssembly module"
    if data[:4] == b"\0asm" and data[4:8] == b"\x0d\x00\x01\x00":
        return ("it is a WebAssembly component (the component model), not a core module: "
                "Proxy-Wasm plugins are core modules (build for wasm32-wasip1 / wasm32-unknown-unknown, "
                "not wasm32-wasip2)")
    head = data[:64].lstrip()
    if head.startswith(b"(module") or head.startswith(b";;"):
        return "it is WebAssembly text (WAT), not a binary module: compile it with wat2wasm first"
    return None


def kind_of(info: wasmbin.ModuleInfo) -> str | None:
    """What a module is when it is not a Proxy-Wasm plugin (no ABI version marker)."""
    imports = {(i.module, i.name) for i in info.imports}
    exports = {e.name for e in info.exports}
    if any(m == "http_handler" for m, _ in imports) or {"handle_request", "handle_response"} & exports:
        return ("it is an http-wasm guest (it imports the http_handler module and exports "
                "handle_request), not a Proxy-Wasm plugin: it needs an http-wasm host")
    if any(e.startswith("_proxy_on") for e in exports) or any(
            n.startswith(("_emscripten", "emscripten_", "abortOnCannotGrowMemory", "___syscall"))
            for _, n in imports):
        return ("it is an Emscripten build for Envoy's early Wasm interface (before the "
                "Proxy-Wasm ABI: _proxy_on* exports, emscripten imports): rebuild it with a "
                "Proxy-Wasm SDK")
    if any(e.startswith("proxy_on_") for e in exports):
        return None  # a plugin without its marker: the loader's own message says which
    if "_start" in exports and not any(m == "env" and n.startswith("proxy_") for m, n in imports):
        return "it is a WASI program (it exports _start), not a Proxy-Wasm plugin"
    if not info.exports and not info.imports:
        return "it is an empty WebAssembly module (no imports, no exports)"
    return None
