"""Reading the few protobuf messages plugins hand the host (Envoy's GrpcService in a gRPC
call's upstream, the arguments of Envoy's built-in foreign functions), without generated
code: the wire format's fields, in order."""
from __future__ import annotations


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) for each field of a message, in order: varints as int,
    length-delimited fields as bytes; fixed32/fixed64 fields are skipped. ValueError if
    the bytes are not a well-formed message."""
    out: list[tuple[int, int | bytes]] = []
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    while i < n:
        key = varint()
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            out.append((num, varint()))
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            out.append((num, data[i:i + size]))
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > n:
                raise ValueError("truncated field")
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def last_fields(data: bytes) -> dict[int, int | bytes]:
    """The fields of a flat message, the last occurrence of each winning (proto3's rule
    for singular fields)."""
    return dict(fields(data))
