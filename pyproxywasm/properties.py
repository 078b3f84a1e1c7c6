"""Encoding host-provided properties the way Envoy serializes attribute values.

Strings are raw UTF-8, integers 8-byte little-endian, booleans one byte, floats IEEE-754
doubles, maps and lists the pairs format (ABI.md §6.4). Paths are NUL-joined segments;
a dotted string ("source.address") is split on dots, a tuple is taken as segments.
"""
from __future__ import annotations

import struct
from typing import Any, Iterator, Mapping, Sequence, Union

from .pairs import encode_pairs

Path = Union[str, Sequence[str]]


def encode_path(path: Path) -> bytes:
    segments = path.split(".") if isinstance(path, str) else list(path)
    return b"\0".join(s.encode() if isinstance(s, str) else bytes(s) for s in segments)


def encode_value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return struct.pack("<q" if value < 0 else "<Q", value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, Mapping):
        return encode_pairs([(encode_value(k), encode_value(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return encode_pairs([(encode_value(v), b"") for v in value])
    raise TypeError(f"cannot encode a property value of type {type(value).__name__}")


def flatten(properties: Mapping[Path, Any]) -> Iterator[tuple[bytes, bytes]]:
    """(path, value) records: a map is stored whole and under each of its keys, so both
    ["node"] and ["node", "id"] resolve."""
    for path, value in properties.items():
        base = encode_path(path)
        yield base, encode_value(value)
        if isinstance(value, Mapping):
            # A nested key is one segment: "envoy.filters.http.wasm" is not four.
            for sub_path, sub_value in flatten({(k,): v for k, v in value.items()}):
                yield base + b"\0" + sub_path, sub_value
