"""Builds the C core (csrc/) into pyproxywasm._core with cffi; metadata is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["pyproxywasm/_build_core.py:ffibuilder"])
