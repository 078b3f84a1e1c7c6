"""Builds the C core (csrc/) into pyproxywasm._core with cffi; metadata is in pyproject.toml."""
from setuptools import setup

setup(
    cffi_modules=["pyproxywasm/_build_core.py:ffibuilder"],
    # The extension uses only the limited API (cffi's py_limited_api): tag the wheel abi3,
    # usable by every CPython from 3.10 on.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
