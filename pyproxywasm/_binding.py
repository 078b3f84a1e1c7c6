"""The raw C core: the cffi module, the process's engine, and the callbacks into Python.

Everything else in the package goes through here; nothing else touches `_core` directly.
The two callbacks are the only places the C core re-enters Python, both cold paths: a
plugin log line at an enabled level, and a foreign function call.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, NoReturn

from . import _wasmtime  # noqa: F401  (binds the C core to wasmtime's library first)
try:
    from ._core import ffi, lib
except ImportError as e:  # pragma: no cover - a checkout whose core was never built
    raise ImportError(
        "pyproxywasm's C core (pyproxywasm._core) is not built here: install the package "
        "(pip install .), or, to work on a checkout, pip install -e '.[test]' (it builds the "
        "core in place; after C changes: python setup.py build_ext --inplace)") from e

__all__ = ["ffi", "lib", "core", "PY_LEVELS", "ERRORS", "LogTarget", "ForeignFunction",
           "ForeignFunctionStatus", "proxy_level", "raise_for", "error_for"]
from .errors import (HostClosedError, InvalidHeaderError, ProxyWasmError, ReentrantCallError, StreamClosedError,
                     StreamStateError, ThreadStackError, VmFailedError, WrongThreadError)

# Proxy-Wasm log levels (TRACE..CRITICAL) as Python logging levels.
PY_LEVELS = (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
logging.addLevelName(5, "TRACE")

ST_OK = 0
ST_INTERNAL_FAILURE = 10

_log = logging.getLogger("pyproxywasm")


def proxy_level(logger: logging.Logger) -> int:
    """The Proxy-Wasm level (0..6, 6 = off) matching a logger's effective level."""
    level = logger.getEffectiveLevel()
    for i, py in enumerate(PY_LEVELS):
        if level <= py:
            return i
    return 6


class LogTarget:
    """Where one plugin's (or one VM's) log lines go; held alive by its owner. Records get
    Envoy's prefix as `extra` fields: proxywasm_plugin, proxywasm_root_id, proxywasm_vm_id
    (Envoy writes "wasm log <plugin> <root_id> <vm_id>: ") and proxywasm_context_id, the
    context (stream, or root) whose callback logged."""

    def __init__(self, logger: logging.Logger, plugin: str = "", root_id: str = "",
                 vm_id: str = "") -> None:
        self.logger = logger
        self.extra = {"proxywasm_plugin": plugin, "proxywasm_root_id": root_id,
                      "proxywasm_vm_id": vm_id}
        self.vm: Any = None  # the pw_vm, once it exists (for the context id)
        self.handle = ffi.new_handle(self)


class ForeignFunction:
    """A Python function plugins call with proxy_call_foreign_function."""

    def __init__(self, name: str, fn: Callable[[bytes], bytes | None]) -> None:
        self.name = name
        self.fn = fn
        self.handle = ffi.new_handle(self)


class ForeignFunctionStatus(Exception):
    """Raised by a foreign function to answer the guest with a specific ABI status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_kind = ffi.new("int *")  # out-parameter of pw_vm_current_context (GIL-guarded)


@ffi.def_extern()  # type: ignore[untyped-decorator]
def pw_py_log(handle: Any, level: int, msg: Any, length: int) -> None:  # pragma: no cover - exercised through plugins
    target: LogTarget = ffi.from_handle(handle)
    text = ffi.unpack(msg, length).decode("utf-8", errors="replace")
    ctx = lib.pw_vm_current_context(target.vm, _kind) if target.vm is not None else 0
    target.logger.log(PY_LEVELS[level] if 0 <= level < 6 else logging.CRITICAL, "%s", text,
                      extra={**target.extra, "proxywasm_context_id": ctx})


@ffi.def_extern(error=ST_INTERNAL_FAILURE)  # type: ignore[untyped-decorator]  # anything escaping: a failure
def pw_py_foreign(handle: Any, args: Any, length: int, result: Any) -> int:
    ff: ForeignFunction = ffi.from_handle(handle)
    try:
        out = ff.fn(ffi.unpack(ffi.cast("char *", args), length))
        if out is None:
            return ST_OK
        if not isinstance(out, (bytes, bytearray, memoryview)):
            # bytes(5) would be five NUL bytes and a str has no one encoding: refuse both.
            raise TypeError(f"foreign function {ff.name!r} returned {type(out).__name__}; "
                            "it must return bytes (or None)")
        out = bytes(out)
        if out and lib.pw_result_set(result, out, len(out)) != 0:
            return ST_INTERNAL_FAILURE
        return ST_OK
    except ForeignFunctionStatus as e:
        return e.status if 0 <= e.status <= 0xFFFF else ST_INTERNAL_FAILURE
    except Exception:
        _log.exception("foreign function %r failed", ff.name)
        return ST_INTERNAL_FAILURE


@ffi.def_extern()  # type: ignore[untyped-decorator]
def pw_py_callout(handle: Any, call: Any) -> int:
    """A guest's outbound call (net/outbound.py VmCalls.start): OK or an ABI status."""
    try:
        return int(ffi.from_handle(handle).start(call))
    except Exception:
        _log.exception("starting an outbound call failed")
        return ST_INTERNAL_FAILURE


@ffi.def_extern()  # type: ignore[untyped-decorator]
def pw_py_callop(handle: Any, token: int, op: int, data: Any, length: int, end_stream: int) -> int:
    """A gRPC message, half-close or cancellation for a call in flight: OK, or for a message
    BAD_ARGUMENT when its stream's send buffer is full."""
    try:
        payload = ffi.buffer(data, length)[:] if length else b""
        return int(ffi.from_handle(handle).op(token, op, payload, bool(end_stream)))
    except Exception:
        _log.exception("an outbound call operation failed")
        return ST_OK


ERRORS = {
    lib.PW_ERR_FAILED: "the VM failed earlier and runs no more callbacks",
    lib.PW_ERR_THREAD: "this VM belongs to another thread",
    lib.PW_ERR_REENTRANT: "a VM cannot be called from inside one of its own callbacks "
                          "(a log handler or foreign function)",
    lib.PW_ERR_NO_CONTEXT: "no such stream or context (already finished?)",
    lib.PW_ERR_STATE: "event out of order for this stream",
    lib.PW_ERR_CLOSED: "the host was closed: this object can no longer be used",
    lib.PW_ERR_STACK: "this thread's stack has no room for a guest call",
    lib.PW_ERR_BAD_HEADERS: "malformed headers: an empty name, or NUL, CR or LF in a name or value",
    lib.PW_ERR: "the C core could not complete the call",
}

_CLASSES: dict[int, type[ProxyWasmError]] = {
    lib.PW_ERR_THREAD: WrongThreadError,
    lib.PW_ERR_REENTRANT: ReentrantCallError,
    lib.PW_ERR_NO_CONTEXT: StreamClosedError,
    lib.PW_ERR_STATE: StreamStateError,
    lib.PW_ERR_CLOSED: HostClosedError,
    lib.PW_ERR_STACK: ThreadStackError,
    lib.PW_ERR_BAD_HEADERS: InvalidHeaderError,
    lib.PW_ERR_FAILED: VmFailedError,
    lib.PW_ERR_TRAP: VmFailedError,
}


def error_for(code: int, vm: Any = None) -> ProxyWasmError:
    """The one mapping from a pw_* result code (either sign) to an exception."""
    code = abs(code)
    cls = _CLASSES.get(code, ProxyWasmError)
    if cls is VmFailedError and vm is not None:
        try:
            message = vm.error
        except Exception:  # noqa: BLE001 - the VM may be gone; the generic text will do
            message = ""
        return VmFailedError(message or ERRORS[lib.PW_ERR_FAILED])
    return cls(ERRORS.get(code, f"C core error {code}"))


def raise_for(code: int, vm: Any = None) -> NoReturn:
    """Raises the exception for a non-zero pw_* result."""
    raise error_for(code, vm)


class _Core:
    """The process-wide engine (and its linker with every host function defined)."""

    def __init__(self) -> None:
        lib.pw_set_callbacks(lib.pw_py_log, lib.pw_py_foreign)
        lib.pw_set_callout_callbacks(lib.pw_py_callout, lib.pw_py_callop)
        err = ffi.new("char[512]")
        self.engine = lib.pw_engine_new(err, 512)
        if self.engine == ffi.NULL:
            raise RuntimeError("cannot create the wasmtime engine: " + ffi.string(err).decode())


core = _Core()
