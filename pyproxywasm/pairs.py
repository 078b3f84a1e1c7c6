"""The header-map wire format (ABI.md §6.1), and header lists as Python sees them.

Headers cross into the C core as one packed buffer per event. Names and values may be str
(UTF-8) or bytes; what comes back is str, decoded as UTF-8 with surrogateescape so that
any byte survives a round trip.
"""
from __future__ import annotations

import struct
from typing import Iterable, Mapping, Tuple, Union

HeaderValue = Union[str, bytes]
HeaderItems = Union[Iterable[Tuple[HeaderValue, HeaderValue]], Mapping[HeaderValue, HeaderValue]]

_u32 = struct.Struct("<I")


def _b(v: HeaderValue) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")


def encode_headers(items: HeaderItems) -> tuple[bytes, int]:
    """Headers for the C core: (data, n) where n >= 0 means n pairs in the flat form
    "k\\0v\\0k\\0v", and n = -1 means data is the pairs wire format (bytes given as is,
    or names/values that contain NUL, which the flat form cannot carry)."""
    if isinstance(items, (bytes, bytearray)):
        return bytes(items), -1
    if isinstance(items, Mapping):
        items = items.items()
    flat = [s for pair in items for s in pair]
    if len(flat) & 1:
        raise ValueError("header items must be (name, value) pairs")
    try:
        data = "\0".join(flat).encode("utf-8", "surrogateescape")
    except TypeError:  # some are bytes
        data = b"\0".join([s if s.__class__ is bytes else _b(s) for s in flat])
    if data.count(b"\0") != len(flat) - 1 and flat:
        return encode_pairs(list(zip(flat[::2], flat[1::2]))), -1
    return data, len(flat) >> 1


def encode_pairs(items: HeaderItems) -> bytes:
    """Serializes header items; an already encoded buffer (bytes) passes through."""
    if isinstance(items, (bytes, bytearray)):
        return bytes(items)
    if isinstance(items, Mapping):
        items = items.items()
    flat = [s if s.__class__ is bytes else _b(s) for pair in items for s in pair]
    if not flat:
        return b"\0\0\0\0"
    if len(flat) & 1:
        raise ValueError("header items must be (name, value) pairs")
    return _lens(len(flat)).pack(len(flat) >> 1, *map(len, flat)) + b"\0".join(flat) + b"\0"


_lens_cache: dict[int, struct.Struct] = {}


def _lens(n: int) -> struct.Struct:
    s = _lens_cache.get(n)
    if s is None:
        s = _lens_cache[n] = struct.Struct(f"<{n + 1}I")
    return s


def decode_pairs(data: bytes) -> "Headers":
    out = Headers()
    if len(data) < 4:
        return out
    (n,) = _u32.unpack_from(data, 0)
    lens = struct.unpack_from(f"<{2 * n}I", data, 4)
    off = 4 + 8 * n
    for i in range(n):
        kl, vl = lens[2 * i], lens[2 * i + 1]
        k = data[off:off + kl].decode("utf-8", "surrogateescape")
        off += kl + 1
        v = data[off:off + vl].decode("utf-8", "surrogateescape")
        off += vl + 1
        out.append((k, v))
    return out


class Headers(list):
    """A header list in order, duplicates kept; lookups are by lowercase name."""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self if k == name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            return self.get(name) is not None
        return super().__contains__(name)
