"""Envoy's built-in foreign functions, as plugins call them with proxy_call_foreign_function.

Envoy registers these for every Wasm plugin; SDKs and third-party plugins call them by
name. Each answers what Envoy answers (arguments and statuses as in Envoy's Wasm
extension):

- compress / uncompress: zlib streams (RFC 1950) at the default level, as zlib's
  compress() and uncompress(); data that is not one answers SERIALIZATION_FAILURE.
- declare_property: a DeclarePropertyArguments protobuf (name 1, readonly 2, type 3,
  schema 4, span 5). OK the first time a context declares a name, BAD_ARGUMENT after that
  or for a message that does not parse. The plugin then sets and reads the property with
  proxy_set_property / proxy_get_property (in a stream; a root context has no filter
  state). A property a root context declares read-only takes one value per stream: a
  later proxy_set_property on it answers BAD_ARGUMENT and keeps the value, as Envoy does.
  Envoy stores a declaration on the context that made it and looks only at the root's
  when a stream sets the property, so one made from a stream context changes nothing.
- set_envoy_filter_state: a SetEnvoyFilterStateArguments protobuf (path 1, value 2, span
  3). NOT_FOUND for a key Envoy has no object factory for (FILTER_STATE_KEYS here, more
  with Host(filter_state_keys=...)), BAD_ARGUMENT for a value its factory refuses (ports
  and timeouts must be integers), NOT_FOUND from a root context (no stream); else OK, and
  the stream's `filter_state.<key>` property reads the value back.
- clear_route_cache: OK, always. Envoy asks the connection manager to pick the route again
  on the next look-up; there is no router here, so it only counts the calls per stream
  (`route_cache_clears`).
- expr_create / expr_evaluate / expr_delete: CEL through cel-python (`pip install
  pyproxywasm[cel]`). expr_create takes the expression text and answers a token (u32
  little-endian; BAD_ARGUMENT if it does not parse); expr_evaluate takes the token
  (BAD_ARGUMENT unless 4 bytes, NOT_FOUND if unknown) and answers the value serialized as
  Envoy does: strings and bytes raw, integers and doubles 8 bytes little-endian, booleans
  one byte, maps and lists in the pairs format; INTERNAL_FAILURE if evaluation fails.
  The expression sees the attributes `request`, `response`, `source`, `destination`,
  `connection`, `upstream`, `node`, `xds`, `plugin_name`, `plugin_root_id`,
  `plugin_vm_id`, `cluster_name`, `route_name`, `listener_direction` as the plugin's
  proxy_get_property reads them. Without cel-python these three are not registered, which
  is what Envoy answers when built without CEL: NOT_FOUND.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import protobuf
from ._binding import ForeignFunction, ForeignFunctionStatus, ffi, lib
from .abi import Status
from .pairs import decode_pairs

if TYPE_CHECKING:
    from .host import Vm

#: Filter state keys Envoy registers an object factory for, and how each checks its value
#: (None: any string).
FILTER_STATE_KEYS: dict[str, Callable[[bytes], bool] | None] = {
    "envoy.string": None,
    "envoy.hashable_string": None,
    "envoy.tcp_proxy.cluster": None,
    "envoy.network.upstream_server_name": None,
    "envoy.network.application_protocols": None,
    "envoy.network.upstream_subject_alt_names": None,
    "envoy.network.network_namespace": None,
    "envoy.upstream.dynamic_host": None,
    "envoy.upstream.dynamic_port": lambda v: v.isdigit() and 0 < int(v) < 65536,
    "envoy.tcp_proxy.per_connection_idle_timeout_ms": lambda v: v.isdigit(),
    "envoy.network.transport_socket.original_dst_address": lambda v: b":" in v,
    "envoy.filters.listener.original_dst.local_ip": lambda v: b":" in v,
    "envoy.filters.listener.original_dst.remote_ip": lambda v: b":" in v,
}

WASM_TYPES = ("bytes", "string", "flatbuffers", "protobuf")
LIFE_SPANS = ("filter_chain", "downstream_request", "downstream_connection")


def parse_protobuf(data: bytes) -> dict[int, int | bytes]:
    """The fields of a flat protobuf message (varint and length-delimited; the last
    occurrence wins). ValueError if it does not parse."""
    return protobuf.last_fields(data)


@dataclass(frozen=True)
class DeclaredProperty:
    name: str
    readonly: bool
    type: str  # one of WASM_TYPES
    schema: bytes
    span: str  # one of LIFE_SPANS


def _bytes(v: int | bytes | None) -> bytes:
    return v if isinstance(v, bytes) else b""


def _int(v: int | bytes | None) -> int:
    return v if isinstance(v, int) else 0


def compress(args: bytes) -> bytes:
    return zlib.compress(args)


def uncompress(args: bytes) -> bytes:
    try:
        return zlib.decompress(args)
    except zlib.error:
        raise ForeignFunctionStatus(Status.SERIALIZATION_FAILURE) from None


# ---- CEL ---------------------------------------------------------------------------------
_INT_ATTRS = {("request", "size"), ("request", "total_size"), ("request", "duration"),
              ("request", "time"), ("response", "code"), ("response", "size"),
              ("response", "total_size"), ("response", "flags"), ("source", "port"),
              ("destination", "port"), ("connection", "id"), ("upstream", "port"),
              ("listener_direction",)}
_MAP_ATTRS = {("request", "headers"), ("response", "headers"), ("response", "trailers")}
_CEL_ROOTS = {
    "request": ("path", "url_path", "host", "scheme", "method", "headers", "referer",
                "useragent", "time", "id", "protocol", "query", "size", "total_size",
                "duration"),
    "response": ("code", "code_details", "flags", "grpc_status", "headers", "trailers",
                 "size", "total_size"),
    "source": ("address", "port"),
    "destination": ("address", "port"),
    "connection": ("id", "mtls", "requested_server_name", "tls_version"),
    "upstream": ("address", "port"),
    "node": ("id", "cluster"),
    "xds": ("cluster_name", "route_name", "listener_direction"),
}
_CEL_LEAVES = ("plugin_name", "plugin_root_id", "plugin_vm_id", "cluster_name", "route_name",
               "listener_direction")


def _cel_available() -> bool:
    try:
        import celpy  # noqa: F401
    except ImportError:
        return False
    return True


def _serialize(value: Any) -> bytes:
    """A CEL value as Envoy hands it to the plugin."""
    import celpy

    if isinstance(value, celpy.celtypes.BoolType) or isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, celpy.celtypes.UintType):
        return struct.pack("<Q", int(value))
    if isinstance(value, int):
        return struct.pack("<q", int(value))
    if isinstance(value, float):
        return struct.pack("<d", float(value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        from .pairs import encode_pairs
        return encode_pairs([(_serialize(k), _serialize(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        from .pairs import encode_pairs
        return encode_pairs([(_serialize(v), b"") for v in value])
    raise ForeignFunctionStatus(Status.SERIALIZATION_FAILURE)


#: Contexts whose built-in records (declared properties, filter state, route cache clears)
#: a host keeps per table; past it the oldest go. Nothing tells this table when a stream
#: ends, and a proxy serves streams without end: kept unbounded, every request that calls
#: clear_route_cache (say) would leave an entry until its VM is freed.
MAX_CONTEXT_RECORDS = 16384


def _room(table: dict[Any, Any], key: Any) -> None:
    """Makes room for `key` in a per-context table (oldest context first out)."""
    if key not in table and len(table) >= MAX_CONTEXT_RECORDS:
        del table[next(iter(table))]


class Builtins:
    """Envoy's foreign functions for one host; what they did, per VM and context."""

    def __init__(self, filter_state_keys: Iterable[str] = ()) -> None:
        self.filter_state_keys = dict(FILTER_STATE_KEYS)
        self.filter_state_keys.update({k: None for k in filter_state_keys})
        # (vm key, context id) -> ...; only the VM's own thread touches its entries.
        self.declared: dict[tuple[int, int], dict[str, DeclaredProperty]] = {}
        self.filter_state: dict[tuple[int, int], dict[str, bytes]] = {}
        self.route_cache_clears: dict[tuple[int, int], int] = {}
        self._exprs: dict[int, dict[int, Any]] = {}
        self._next_token: dict[int, int] = {}
        self.cel = _cel_available()

    def for_vm(self, vm: "Vm") -> list[ForeignFunction]:
        """The functions to register on a VM (each knows the VM, to find its context)."""
        key = lib.pw_vm_key(vm.ptr)
        kind = ffi.new("int *")

        def ctx() -> int:
            return int(lib.pw_vm_current_context(vm.ptr, kind))

        def stream_ctx() -> int:
            """The calling stream's context id; 0 from a root context (no stream)."""
            cid = ctx()
            return cid if kind[0] in (lib.PW_CTX_HTTP, lib.PW_CTX_TCP) else 0

        def declare_property(args: bytes) -> None:
            try:
                f = parse_protobuf(args)
                d = DeclaredProperty(_bytes(f.get(1)).decode(), bool(_int(f.get(2))),
                                     WASM_TYPES[_int(f.get(3))] if _int(f.get(3)) < 4 else "bytes",
                                     _bytes(f.get(4)),
                                     LIFE_SPANS[_int(f.get(5))] if _int(f.get(5)) < 3 else "filter_chain")
            except (ValueError, UnicodeDecodeError):
                raise ForeignFunctionStatus(Status.BAD_ARGUMENT) from None
            cid = ctx()
            _room(self.declared, (key, cid))
            seen = self.declared.setdefault((key, cid), {})
            if d.name in seen:
                raise ForeignFunctionStatus(Status.BAD_ARGUMENT)
            seen[d.name] = d
            # Envoy keeps the declaration on the called context, and proxy_set_property
            # consults the root's: a read-only one declared by a root binds its streams.
            if d.readonly:
                name = d.name.encode()
                if lib.pw_vm_declare_readonly(vm.ptr, name, len(name)) != lib.PW_OK:
                    raise ForeignFunctionStatus(Status.INTERNAL_FAILURE)

        def set_envoy_filter_state(args: bytes) -> None:
            try:
                f = parse_protobuf(args)
                path = _bytes(f.get(1)).decode()
            except (ValueError, UnicodeDecodeError):
                raise ForeignFunctionStatus(Status.BAD_ARGUMENT) from None
            value = _bytes(f.get(2))
            if path not in self.filter_state_keys:
                raise ForeignFunctionStatus(Status.NOT_FOUND)
            check = self.filter_state_keys[path]
            if check is not None and not check(value):
                raise ForeignFunctionStatus(Status.BAD_ARGUMENT)
            cid = stream_ctx()
            p = b"filter_state\0" + path.encode()
            if not cid or lib.pw_set_host_property(vm.ptr, cid, p, len(p), value, len(value)) != 0:
                raise ForeignFunctionStatus(Status.NOT_FOUND)  # a root context: no stream
            _room(self.filter_state, (key, cid))
            self.filter_state.setdefault((key, cid), {})[path] = value

        def clear_route_cache(args: bytes) -> None:
            k = (key, ctx())
            _room(self.route_cache_clears, k)
            self.route_cache_clears[k] = self.route_cache_clears.get(k, 0) + 1

        fns: dict[str, Callable[[bytes], bytes | None]] = {
            "compress": compress, "uncompress": uncompress,
            "declare_property": declare_property,
            "set_envoy_filter_state": set_envoy_filter_state,
            "clear_route_cache": clear_route_cache,
        }
        if self.cel:
            fns.update(self._cel_functions(vm, key, ctx))
        return [ForeignFunction(name, fn) for name, fn in fns.items()]

    # ---- CEL ------------------------------------------------------------------------------
    def _cel_functions(self, vm: "Vm", key: int,
                       ctx: Callable[[], int]) -> dict[str, Callable[[bytes], bytes | None]]:
        import celpy

        env = celpy.Environment()
        exprs = self._exprs.setdefault(key, {})

        def read(path: tuple[str, ...]) -> Any:
            raw = b"\0".join(s.encode() for s in path)
            out, n = ffi.new("const uint8_t **"), ffi.new("size_t *")
            if lib.pw_get_property(vm.ptr, ctx(), raw, len(raw), out, n) != 0:
                return None
            data = ffi.buffer(out[0], n[0])[:]
            if path in _MAP_ATTRS:
                return dict(decode_pairs(data))
            if path in _INT_ATTRS and len(data) == 8:
                return struct.unpack("<q", data)[0]
            return data.decode("utf-8", "replace")

        def activation() -> dict[str, Any]:
            act: dict[str, Any] = {}
            for root, leaves in _CEL_ROOTS.items():
                m = {leaf: v for leaf in leaves if (v := read((root, leaf))) is not None}
                act[root] = celpy.json_to_cel(m)
            for leaf in _CEL_LEAVES:
                v = read((leaf,))
                if v is not None:
                    act[leaf] = celpy.json_to_cel(v)
            return act

        def expr_create(args: bytes) -> bytes:
            try:
                program = env.program(env.compile(args.decode()))
            except Exception:  # noqa: BLE001 - a parse or compile error, as Envoy's
                raise ForeignFunctionStatus(Status.BAD_ARGUMENT) from None
            token = self._next_token.get(key, 0)
            while token in exprs:
                token = (token + 1) & 0xFFFFFFFF
            self._next_token[key] = (token + 1) & 0xFFFFFFFF
            exprs[token] = program
            return struct.pack("<I", token)

        def token_of(args: bytes) -> int:
            if len(args) != 4:
                raise ForeignFunctionStatus(Status.BAD_ARGUMENT)
            return int(struct.unpack("<I", args)[0])

        def expr_evaluate(args: bytes) -> bytes:
            program = exprs.get(token_of(args))
            if program is None:
                raise ForeignFunctionStatus(Status.NOT_FOUND)
            try:
                value = program.evaluate(activation())
            except Exception:  # noqa: BLE001 - an evaluation error, as Envoy's
                raise ForeignFunctionStatus(Status.INTERNAL_FAILURE) from None
            if isinstance(value, celpy.CELEvalError):
                raise ForeignFunctionStatus(Status.INTERNAL_FAILURE)
            return _serialize(value)

        def expr_delete(args: bytes) -> None:
            exprs.pop(token_of(args), None)

        return {"expr_create": expr_create, "expr_evaluate": expr_evaluate,
                "expr_delete": expr_delete}

    def forget_vm(self, vm_key: int) -> None:
        """Drops what a freed VM's contexts left."""
        for d in (self.declared, self.filter_state, self.route_cache_clears):
            for k in [k for k in d if k[0] == vm_key]:
                del d[k]
        self._exprs.pop(vm_key, None)
        self._next_token.pop(vm_key, None)
