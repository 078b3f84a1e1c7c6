"""Reads a module's imports and exports straight from the Wasm binary, without compiling.

The loader uses it to detect the Proxy-Wasm ABI version and to reject, before compiling,
a module whose `proxy_on_*` exports have the wrong type (the C core calls exports
unchecked, so their types must be right). `pyproxywasm inspect` prints it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
             0x70: "funcref", 0x6F: "externref"}
_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

ABI_MARKERS = {
    "proxy_abi_version_0_1_0": "0.1.0",
    "proxy_abi_version_0_2_0": "0.2.0",
    "proxy_abi_version_0_2_1": "0.2.1",
}


class WasmFormatError(ValueError):
    """The bytes are not a WebAssembly module this reader understands."""


@dataclass(frozen=True)
class FuncType:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    kind: str
    type: FuncType | None = None


@dataclass(frozen=True)
class Export:
    name: str
    kind: str
    type: FuncType | None = None


@dataclass
class ModuleInfo:
    imports: list[Import] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)

    @property
    def abi_version(self) -> str | None:
        """The first ABI marker function in export order, as cpp-host picks it."""
        for e in self.exports:
            if e.kind == "func" and e.name in ABI_MARKERS:
                return ABI_MARKERS[e.name]
        return None

    def export(self, name: str) -> Export | None:
        for e in self.exports:
            if e.name == name:
                return e
        return None


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmFormatError("unexpected end of module")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise WasmFormatError("LEB128 value too long")

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise WasmFormatError("unexpected end of module")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def name(self) -> str:
        return self.take(self.uleb()).decode("utf-8", errors="replace")

    def valtype(self) -> str:
        b = self.byte()
        if b in (0x63, 0x64):  # (ref null? heaptype) from the GC/function-references proposals
            self.uleb()
            return "ref"
        if b not in _VALTYPES:
            raise WasmFormatError(f"unknown value type 0x{b:02x}")
        return _VALTYPES[b]

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()


def parse(data: bytes) -> ModuleInfo:
    """Parses the type, import, function and export sections of a module."""
    if data[:4] != b"\0asm":
        raise WasmFormatError("not a WebAssembly binary (bad magic number)")
    if data[4:8] != b"\x01\0\0\0":
        raise WasmFormatError("unsupported WebAssembly binary version (a component?)")
    r = _Reader(data, 8)
    types: list[FuncType | None] = []
    funcs: list[int] = []  # type index of each function, imported ones first
    info = ModuleInfo()
    raw_exports: list[tuple[str, int, int]] = []
    while r.pos < r.end:
        section, size = r.byte(), r.uleb()
        s = _Reader(data, r.pos, r.pos + size)
        r.pos += size
        if section == 1:
            for _ in range(s.uleb()):
                form = s.byte()
                if form != 0x60:
                    raise WasmFormatError(f"unsupported type form 0x{form:02x}")
                params = tuple(s.valtype() for _ in range(s.uleb()))
                results = tuple(s.valtype() for _ in range(s.uleb()))
                types.append(FuncType(params, results))
        elif section == 2:
            for _ in range(s.uleb()):
                module, name, kind = s.name(), s.name(), s.byte()
                ftype = None
                if kind == 0:
                    idx = s.uleb()
                    ftype = types[idx] if idx < len(types) else None
                    funcs.append(idx)
                elif kind == 1:
                    s.valtype()
                    s.limits()
                elif kind == 2:
                    s.limits()
                elif kind == 3:
                    s.valtype()
                    s.byte()
                elif kind == 4:
                    s.byte()
                    s.uleb()
                else:
                    raise WasmFormatError(f"unknown import kind {kind}")
                info.imports.append(Import(module, name, _KINDS[kind], ftype))
        elif section == 3:
            funcs.extend(s.uleb() for _ in range(s.uleb()))
        elif section == 7:
            for _ in range(s.uleb()):
                name, kind, idx = s.name(), s.byte(), s.uleb()
                raw_exports.append((name, kind, idx))
    for name, kind, idx in raw_exports:
        ftype = None
        if kind == 0 and idx < len(funcs) and funcs[idx] < len(types):
            ftype = types[funcs[idx]]
        info.exports.append(Export(name, _KINDS.get(kind, f"kind{kind}"), ftype))
    return info
