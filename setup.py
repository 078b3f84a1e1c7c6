"""Builds the C core (csrc/) into pyproxywasm._core with cffi, and HttpStream's per-event
path (pyproxywasm/_fast.c, optional at run time); metadata is in pyproject.toml."""
from setuptools import Extension, setup

setup(
    cffi_modules=["pyproxywasm/_build_core.py:ffibuilder"],
    ext_modules=[Extension("pyproxywasm._fast", ["pyproxywasm/_fast.c"],
                           extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])],
)
