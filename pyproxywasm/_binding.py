"""The raw C core: the cffi module, the process's engine, and the callbacks into Python.

Everything else in the package goes through here; nothing else touches `_core` directly.
The two callbacks are the only places the C core re-enters Python, both cold paths: a
plugin log line at an enabled level, and a foreign function call.
"""
from __future__ import annotations

import logging
from typing import Callable

from . import _wasmtime  # noqa: F401  (binds the C core to wasmtime's library first)
from ._core import ffi, lib
from .errors import ProxyWasmError, VmFailedError, WrongThreadError

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
    """Where one plugin's (or one VM's) log lines go; held alive by its owner."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
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


@ffi.def_extern()
def pw_py_log(handle, level, msg, length):  # pragma: no cover - exercised through plugins
    target: LogTarget = ffi.from_handle(handle)
    text = ffi.unpack(msg, length).decode("utf-8", errors="replace")
    target.logger.log(PY_LEVELS[level] if 0 <= level < 6 else logging.CRITICAL, "%s", text)


@ffi.def_extern()
def pw_py_foreign(handle, args, length, result):
    ff: ForeignFunction = ffi.from_handle(handle)
    try:
        out = ff.fn(ffi.unpack(ffi.cast("char *", args), length))
    except ForeignFunctionStatus as e:
        return e.status
    except Exception:
        _log.exception("foreign function %r raised", ff.name)
        return ST_INTERNAL_FAILURE
    if out:
        out = bytes(out)
        if lib.pw_result_set(result, out, len(out)) != 0:
            return ST_INTERNAL_FAILURE
    return ST_OK


@ffi.def_extern()
def pw_py_callout(handle, call):
    """A guest's outbound call (net/outbound.py VmCalls.start): OK or an ABI status."""
    try:
        return ffi.from_handle(handle).start(call)
    except Exception:
        _log.exception("starting an outbound call failed")
        return ST_INTERNAL_FAILURE


@ffi.def_extern()
def pw_py_callop(handle, token, op, data, length, end_stream):
    """A gRPC message, half-close or cancellation for a call in flight."""
    try:
        payload = ffi.buffer(data, length)[:] if length else b""
        ffi.from_handle(handle).op(token, op, payload, bool(end_stream))
    except Exception:
        _log.exception("an outbound call operation failed")


ERRORS = {
    lib.PW_ERR_FAILED: "the VM failed earlier and runs no more callbacks",
    lib.PW_ERR_THREAD: "this VM belongs to another thread (or is running one of its own "
                       "callbacks, which must not call back into it)",
    lib.PW_ERR_NO_CONTEXT: "no such context (already finished?)",
    lib.PW_ERR_STATE: "event out of order for this stream",
    lib.PW_ERR: "the C core could not complete the call",
}


def raise_for(code: int, vm=None) -> None:
    """Turns a negative/non-zero pw_* result into the matching exception."""
    code = abs(code)
    if code == lib.PW_ERR_THREAD:
        raise WrongThreadError(ERRORS[code])
    if code in (lib.PW_ERR_FAILED, lib.PW_ERR_TRAP) and vm is not None:
        raise VmFailedError(vm.error or ERRORS[lib.PW_ERR_FAILED])
    raise ProxyWasmError(ERRORS.get(code, f"C core error {code}"))



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
