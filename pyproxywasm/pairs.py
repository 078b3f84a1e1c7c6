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


def encode_pairs(items: HeaderItems) -> bytes:
    """Serializes header items; an already encoded buffer (bytes) passes through."""
    if isinstance(items, (bytes, bytearray)):
        return bytes(items)
    if isinstance(items, Mapping):
        items = items.items()
    flat: list[bytes] = []
    for k, v in items:
        flat.append(_b(k))
        flat.append(_b(v))
    n = len(flat) // 2
    lens = struct.pack(f"<{2 * n + 1}I", n, *map(len, flat))
    return lens + b"\0".join(flat) + b"\0" if n else lens


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
