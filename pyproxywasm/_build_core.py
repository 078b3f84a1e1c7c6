"""cffi build script for the C core: `pip install .` runs it through setup.py.

The cdef is the part of csrc/pw.h between its cdef markers, so the C header stays the one
source of truth for the API Python sees.
"""
from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sysconfig

from cffi import FFI

_HERE = pathlib.Path(__file__).resolve().parent
_ROOT = _HERE.parent
_CSRC = "csrc"

_SOURCES = [
    "backend.c",
    "buf.c",
    "callout.c",
    "context.c",
    "dispatcher.c",
    "epoch.c",
    "hmap.c",
    "hostcalls.c",
    "http.c",
    "metrics.c",
    "namespace.c",
    "props.c",
    "queue.c",
    "redis.c",
    "shared.c",
    "shm.c",
    "signals.c",
    "siphash.c",
    "tcp.c",
    "trace.c",
    "vm.c",
    "wasi.c",
    "wt.c",
]


def _hiredis() -> tuple[list[str], list[str]]:
    """Compiler flags and libraries for the Redis backend (csrc/redis.c) when hiredis is
    installed (Debian: libhiredis-dev), else none: redis.c then builds as a stub whose
    open says how to get Redis support. PYPROXYWASM_REDIS=0 builds without it."""
    if os.environ.get("PYPROXYWASM_REDIS") == "0":
        return [], []
    try:
        found = subprocess.run(["pkg-config", "--cflags", "--libs", "hiredis"],
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        found = []
        cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
        try:
            subprocess.run(cc + ["-E", "-x", "c", "-"], input="#include <hiredis/hiredis.h>\n",
                           capture_output=True, text=True, check=True)
            found = ["-lhiredis"]
        except (OSError, subprocess.CalledProcessError):
            return [], []
    cflags = ["-DPW_HAVE_HIREDIS"] + [f for f in found if not f.startswith("-l")]
    return cflags, [f[2:] for f in found if f.startswith("-l")]


_REDIS_CFLAGS, _REDIS_LIBS = _hiredis()


def _cdef() -> str:
    text = (_ROOT / _CSRC / "pw.h").read_text()
    return text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]


ffibuilder = FFI()
ffibuilder.cdef(
    _cdef()
    + """
extern "Python" void pw_py_log(void *handle, int level, const char *msg, size_t len);
extern "Python" int pw_py_foreign(void *handle, const uint8_t *args, size_t len, void *result);
extern "Python" int pw_py_callout(void *handle, const pw_callout *call);
extern "Python" int pw_py_callop(void *handle, uint32_t token, int op, const uint8_t *data,
                                  size_t len, int end_stream);
"""
)
ffibuilder.set_source(
    "pyproxywasm._core",
    '#include "pw.h"\n',
    sources=[f"{_CSRC}/{name}" for name in _SOURCES],
    include_dirs=[_CSRC],
    libraries=["dl", "pthread", "rt"] + _REDIS_LIBS,
    # Only the module's init function is exported: the C core's pw_* API is called by the
    # cffi glue inside this one shared object, never from outside.
    extra_compile_args=[
        "-std=c11",
        "-D_GNU_SOURCE",
        "-O2",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        # cffi's generated glue has unused parameters; ours must not (checked by
        # `make -C csrc check`, which builds the core alone with the full warning set).
        "-Wno-unused-parameter",
    ]
    + _REDIS_CFLAGS
    # Warnings are errors in development and CI builds only (PYPROXYWASM_WERROR=1, set by
    # .ci/run and `make -C csrc`), never in a user's `pip install` with another compiler.
    + (["-Werror"] if os.environ.get("PYPROXYWASM_WERROR") == "1" else []),
    # The core uses only the limited API through cffi: one abi3 wheel for every CPython.
    py_limited_api=True,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
