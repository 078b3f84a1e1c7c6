"""Loading modules: ABI detection, export validation and compilation (cached per code).

Validation happens here, before compiling, because the C core calls the guest's exports
without type checks: a `proxy_on_*` export of the wrong type must fail the load with an
error that names it, never reach the core.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
from typing import Any
import weakref
from dataclasses import dataclass

from . import diagnose, wasmbin
from ._binding import core, ffi, lib
from ._wasmtime import WASMTIME_VERSION
from .errors import ModuleError

ABI_IDS = {"0.1.0": lib.PW_ABI_0_1_0, "0.2.0": lib.PW_ABI_0_2_0, "0.2.1": lib.PW_ABI_0_2_1}

_I = "i32"
_HEADER_CALLBACKS = ("proxy_on_request_headers", "proxy_on_response_headers")
# Every export the core calls or checks, with its type, from the core's own declarations
# (csrc/abi.h). The header callbacks' arity depends on the ABI version: checked below.
_EXPORT_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (t.params, t.results) for name, t in diagnose.host_exports().items()
    if name not in _HEADER_CALLBACKS}


@dataclass(frozen=True)
class ModuleSpec:
    """What the loader learned about a module before compiling it."""

    digest: str
    abi_version: str
    header_arity: int
    info: wasmbin.ModuleInfo
    flags: int = 0  # PW_MOD_*: adaptations for the AssemblyScript SDK


# The AssemblyScript SDK's gRPC imports lack the initial-metadata pair; the core links such
# modules against adapted hostcalls instead of refusing them.
_AS_GRPC_SHAPES = {"proxy_grpc_call": 10, "proxy_grpc_stream": 7}


def _as_flags(info: wasmbin.ModuleInfo) -> int:
    flags = 0
    for imp in info.imports:
        if imp.module == "env" and imp.type is not None and \
                _AS_GRPC_SHAPES.get(imp.name) == len(imp.type.params):
            flags |= lib.PW_MOD_AS_GRPC
    # Builds of the AssemblyScript SDK from before the spec (proxy-runtime 0.1.1) number the
    # gRPC and HTTP-call maps one higher; they are the ones exporting this callback.
    if info.export("proxy_on_grpc_create_initial_metadata") is not None:
        flags |= lib.PW_MOD_AS_MAPS
    return flags


def read_code(code: bytes | str | os.PathLike[str]) -> bytes:
    """Module bytes from bytes, or from a path to a .wasm file."""
    if isinstance(code, (bytes, bytearray, memoryview)):
        return bytes(code)
    try:
        with open(code, "rb") as f:
            return f.read()
    except OSError as e:
        raise ModuleError(f"cannot read plugin code {os.fspath(code)!r}: {e.strerror}") from e


def inspect(wasm: bytes) -> ModuleSpec:
    """Parses and validates a module as a Proxy-Wasm plugin; raises ModuleError."""
    what = diagnose.not_wasm(wasm)
    if what is not None:
        raise ModuleError(f"not a Proxy-Wasm plugin: {what}")
    try:
        info = wasmbin.parse(wasm)
    except wasmbin.WasmFormatError as e:
        raise ModuleError(f"not a valid WebAssembly module: {e}") from e
    abi = info.abi_version
    if abi is None:
        what = diagnose.kind_of(info)
        if what is not None:
            raise ModuleError(f"not a Proxy-Wasm plugin: {what}")
        raise ModuleError(
            "missing or unknown Proxy-Wasm ABI version: the module exports none of "
            + ", ".join(wasmbin.ABI_MARKERS)
        )
    memory = info.export("memory")
    if memory is None or memory.kind != "memory":
        raise ModuleError('the module does not export its memory as "memory"')
    if info.export("proxy_on_memory_allocate") is None and info.export("malloc") is None:
        raise ModuleError("the module exports neither proxy_on_memory_allocate nor malloc")
    for ex in info.exports:
        expected = _EXPORT_TYPES.get(ex.name)
        if expected is None or ex.kind != "func":
            continue
        if ex.type is None or (ex.type.params, ex.type.results) != expected:
            want = wasmbin.FuncType(*expected)
            raise ModuleError(f"export {ex.name} has type {ex.type}, expected {want}")
    # Header callbacks: 3 parameters from 0.2.0 on; old 0.1.0 builds have 2 (or 3).
    arities: set[int] = set()
    for name in _HEADER_CALLBACKS:
        cb = info.export(name)
        if cb is None or cb.kind != "func":
            continue
        params = cb.type.params if cb.type else ()
        ok = cb.type is not None and cb.type.results == (_I,) and set(params) <= {_I}
        allowed = (2, 3) if abi == "0.1.0" else (3,)
        if not ok or len(params) not in allowed:
            raise ModuleError(
                f"export {name} has type {cb.type}, expected "
                + " or ".join(f"({', '.join([_I] * n)}) -> (i32)" for n in allowed)
            )
        arities.add(len(params))
    if len(arities) > 1:
        raise ModuleError("proxy_on_request_headers and proxy_on_response_headers disagree on arity")
    arity = arities.pop() if arities else (2 if abi == "0.1.0" else 3)
    return ModuleSpec(hashlib.sha256(wasm).hexdigest(), abi, arity, info, _as_flags(info))


class CompiledModule:
    """A compiled, linked module: what every VM of this code is instantiated from. Freed
    (pw_module_free) when no Vm and no cache entry holds it any more."""

    def __init__(self, spec: ModuleSpec, ptr: Any) -> None:
        self.spec = spec
        self.ptr = ffi.gc(ptr, lib.pw_module_free)


# Compiled modules by code digest, shared by every host and thread of the process, held
# weakly: a module lives while a Vm (on any thread) holds it. Guarded by _cache_lock.
_cache: "weakref.WeakValueDictionary[str, CompiledModule]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()

# The disk cache: at most this many bytes of compiled modules (least recently used go
# first); PYPROXYWASM_CACHE_MAX_BYTES changes it.
DEFAULT_DISK_CACHE_BYTES = 256 << 20
_MAGIC = b"PYPWCWASM1\n"
_KEY_FILE = "cache.key"


def default_cache_dir() -> str | None:
    """$PYPROXYWASM_CACHE_DIR ("" turns the cache off), else ~/.cache/pyproxywasm."""
    env = os.environ.get("PYPROXYWASM_CACHE_DIR")
    if env is not None:
        return env or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyproxywasm")


def _private_dir(cache_dir: str) -> bool:
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        st = os.lstat(cache_dir)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & 0o022)


def _cache_path(cache_dir: str, spec: ModuleSpec) -> str | None:
    """The cache file for a module, in a directory only this user can write: a compiled
    module is native code, so a file someone else could have planted is never loaded."""
    if not _private_dir(cache_dir):
        return None
    name = (f"{spec.digest}-wasmtime-{WASMTIME_VERSION}-nosignals-epoch-abi{spec.abi_version}"
            f"-{spec.header_arity}.cwasm")
    return os.path.join(cache_dir, name)


def _open_private(path: str, flags: int) -> int:
    """Opens a regular file of ours without following a symlink (OSError otherwise)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        raise OSError(f"{path} is not a private regular file")
    return fd


def _key(cache_dir: str) -> bytes | None:
    """This cache's secret: compiled files carry an HMAC under it, so a corrupt, truncated
    or foreign file is never handed to the deserializer."""
    path = os.path.join(cache_dir, _KEY_FILE)
    try:
        fd = _open_private(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            key = f.read()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    except OSError:
        return None
    key = os.urandom(32)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        os.link(tmp, path)  # the first writer wins; others read its key
    except FileExistsError:
        os.unlink(tmp)
        return _key(cache_dir) if os.path.exists(path) else None
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    os.unlink(tmp)
    return key


def _load_cached(path: str | None, spec: ModuleSpec) -> Any:
    if path is None:
        return ffi.NULL
    key = _key(os.path.dirname(path))
    if key is None:
        return ffi.NULL
    try:
        fd = _open_private(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError:
        return ffi.NULL
    head = len(_MAGIC) + 32
    payload = data[head:]
    tag = hmac.new(key, payload, hashlib.sha256).digest()
    if data[:len(_MAGIC)] != _MAGIC or not hmac.compare_digest(data[len(_MAGIC):head], tag):
        try:  # corrupt or not ours: never deserialized, and replaced by a fresh compile
            os.unlink(path)
        except OSError:
            pass
        return ffi.NULL
    err = ffi.new("char[512]")
    ptr = lib.pw_module_deserialize(core.engine, payload, len(payload), ABI_IDS[spec.abi_version],
                                    spec.header_arity, spec.flags, err, 512)
    if ptr != ffi.NULL:
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
    return ptr


def _disk_cache_bytes() -> int:
    try:
        return int(os.environ.get("PYPROXYWASM_CACHE_MAX_BYTES", DEFAULT_DISK_CACHE_BYTES))
    except ValueError:
        return DEFAULT_DISK_CACHE_BYTES


def evict(cache_dir: str, max_bytes: int | None = None) -> int:
    """Removes the least recently used compiled modules until the directory holds at most
    max_bytes of them; returns how many files went."""
    limit = _disk_cache_bytes() if max_bytes is None else max_bytes
    files = []
    try:
        with os.scandir(cache_dir) as it:
            for e in it:
                if e.name.endswith(".cwasm") and e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    files.append((st.st_mtime, st.st_size, e.path))
    except OSError:
        return 0
    total = sum(f[1] for f in files)
    removed = 0
    for _mtime, size, path in sorted(files):
        if total <= limit:
            break
        try:
            os.unlink(path)
            total -= size
            removed += 1
        except OSError:
            pass
    return removed


def _store_cached(path: str | None, ptr: Any) -> None:
    if path is None:
        return
    key = _key(os.path.dirname(path))
    if key is None:
        return
    out, n = ffi.new("uint8_t **"), ffi.new("size_t *")
    if lib.pw_module_serialize(ptr, out, n) != lib.PW_OK:
        return
    try:
        data = ffi.buffer(out[0], n[0])[:]
    finally:
        lib.pw_bytes_free(out[0])
    if len(data) > _disk_cache_bytes():
        return
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hmac.new(key, data, hashlib.sha256).digest() + data)
        os.replace(tmp, path)  # readers see the whole file or none
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return
    evict(os.path.dirname(path))


def compile_module(wasm: bytes, cache_dir: str | None = "default") -> CompiledModule:
    """Validates and compiles `wasm`, or returns the process's earlier compile of it; with
    a cache directory, a compile from an earlier process is loaded instead of compiling.
    The module is parsed once: a compile already in the process is found by digest."""
    digest = hashlib.sha256(wasm).hexdigest()
    with _cache_lock:
        hit = _cache.get(digest)
        if hit is not None:
            return hit
    spec = inspect(wasm)
    with _cache_lock:
        hit = _cache.get(spec.digest)
        if hit is not None:
            return hit
        directory = default_cache_dir() if cache_dir == "default" else cache_dir
        path = _cache_path(directory, spec) if directory else None
        ptr = _load_cached(path, spec)
        if ptr == ffi.NULL:
            err = ffi.new("char[1024]")
            ptr = lib.pw_module_new(core.engine, wasm, len(wasm), ABI_IDS[spec.abi_version],
                                    spec.header_arity, spec.flags, err, 1024)
            if ptr == ffi.NULL:
                message = ffi.string(err).decode(errors="replace")
                if "unknown import" in message or "incompatible import" in message:
                    problems = diagnose.import_mismatches(spec.info, bool(spec.flags & lib.PW_MOD_AS_GRPC))
                    message = ("the plugin " + "; ".join(problems) if problems else
                               "the plugin imports something this host does not provide: " + message)
                raise ModuleError(message)
            _store_cached(path, ptr)
        compiled = CompiledModule(spec, ptr)
        _cache[spec.digest] = compiled
        return compiled


def forget_compiled() -> None:
    """Drops the in-process compile cache (benchmarks measure cold and cached starts)."""
    with _cache_lock:
        _cache.clear()
