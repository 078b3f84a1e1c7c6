"""The header-map wire format (ABI.md §6.1), and header lists as Python sees them.

Headers cross into the C core as one packed buffer per event. Names and values may be str
(UTF-8) or bytes; what comes back is str, decoded as UTF-8 with surrogateescape so that
any byte survives a round trip.
"""
from __future__ import annotations

import struct
from itertools import chain
from collections.abc import Mapping
from typing import Iterable, Tuple, Union

from .errors import InvalidHeaderError

HeaderValue = Union[str, bytes]
# bytes: an already encoded pairs buffer, passed through as is
HeaderItems = Union[bytes, Iterable[Tuple[HeaderValue, HeaderValue]], Mapping[HeaderValue, HeaderValue]]

_u32 = struct.Struct("<I")
_chain = chain.from_iterable


def _b(v: HeaderValue) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")


def encode_headers(items: HeaderItems) -> tuple[bytes, int]:
    """Headers for the C core: (data, n) where n >= 0 means n pairs in the flat form
    "k\\0v\\0k\\0v", and n = -1 means data is the pairs wire format (bytes given as is,
    or names/values that contain NUL, which the flat form cannot carry)."""
    cls = items.__class__
    if cls is not list and cls is not tuple:  # the common cases skip the checks below
        if isinstance(items, (bytes, bytearray, memoryview)):
            return bytes(items), -1
        items = list(items.items() if isinstance(items, Mapping) else items)
    n = len(items)  # type: ignore[arg-type]  # a list or tuple by now
    if not n:
        return b"", 0
    if not all(x.__class__ in _PAIR_CLASSES for x in items):  # ["ab", "cd"] is not two headers
        return encode_pairs(items), -1
    try:
        data = "\0".join(_chain(items)).encode()  # type: ignore[arg-type]
    except (TypeError, UnicodeEncodeError):  # bytes among them, or surrogate escapes
        flat = [_b(s) for pair in items for s in pair]  # type: ignore[arg-type, union-attr]
        data = b"\0".join(flat)
    # One separator fewer than names and values: otherwise an item was not a pair, or a
    # name/value holds a NUL; the pairs format says exactly what was meant (or raises).
    if data.count(b"\0") != 2 * n - 1:
        return encode_pairs(items), -1
    return data, n  # empty names, CR and LF are refused by the C core (InvalidHeaderError)


_PAIR_CLASSES = frozenset((tuple, list))  # (the usual forms take pyproxywasm._fast instead)


def encode_pairs(items: HeaderItems) -> bytes:
    """The pairs wire format; an already encoded buffer (bytes) passes through."""
    if isinstance(items, (bytes, bytearray)):
        return bytes(items)
    if isinstance(items, Mapping):
        items = items.items()
    flat: list[bytes] = []
    for pair in items:
        if isinstance(pair, (str, bytes, bytearray, memoryview)):
            raise InvalidHeaderError(f"a header must be a (name, value) pair, not {pair!r}")
        try:
            k, v = pair
        except (TypeError, ValueError):
            raise InvalidHeaderError(f"a header must be a (name, value) pair, not {pair!r}") from None
        flat.append(_b(k))
        flat.append(_b(v))
    if not flat:
        return b"\0\0\0\0"
    return _lens(len(flat)).pack(len(flat) >> 1, *map(len, flat)) + b"\0".join(flat) + b"\0"


_lens_cache: dict[int, struct.Struct] = {}


def _lens(n: int) -> struct.Struct:
    s = _lens_cache.get(n)
    if s is None:
        s = _lens_cache[n] = struct.Struct(f"<{n + 1}I")
    return s


def decode_pairs_bytes(data: bytes) -> list[tuple[bytes, bytes]]:
    """The pairs wire format as (name, value) bytes, for data the C core produced."""
    if len(data) < 4:
        return []
    (n,) = _u32.unpack_from(data, 0)
    lens = struct.unpack_from(f"<{2 * n}I", data, 4)
    off, out = 4 + 8 * n, []
    for i in range(n):
        kl, vl = lens[2 * i], lens[2 * i + 1]
        k = data[off:off + kl]
        off += kl + 1
        out.append((k, data[off:off + vl]))
        off += vl + 1
    return out


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


class Headers(list[tuple[str, str]]):
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
