"""Builds the C core (csrc/) into pyproxywasm._core with cffi, and HttpStream's per-event
path (pyproxywasm/_fast.c, optional at run time); metadata is in pyproject.toml."""
from setuptools import Extension, setup

setup(
    cffi_modules=["pyproxywasm/_build_core.py:ffibuilder"],
    ext_modules=[Extension("pyproxywasm._fast", ["pyproxywasm/_fast.c", "pyproxywasm/_fast_exchange.c"],
                           depends=["pyproxywasm/_fast.h", "csrc/pw.h"], py_limited_api=True,
                           extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])],
    # Both extensions use only the limited API (cffi's py_limited_api, _fast.c's
    # Py_LIMITED_API): tag the wheel abi3, usable by every CPython from 3.10 on.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
