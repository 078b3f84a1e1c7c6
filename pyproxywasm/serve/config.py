"""Envoy bootstrap (YAML or JSON) into the objects `serve` runs: listeners, routes, the
Wasm plugins (PluginConfig, as the library takes them) and clusters (net.Cluster, the same
objects plugins call).

What is read is what Envoy reads; anything else in the document is refused with its path
(`static_resources.listeners[0].filter_chains[0].filters[1]: unsupported filter ...`)
rather than silently ignored, since a proxy that skips a filter it was told to run is
wrong in ways nobody notices. Files named in the config are relative to the config file.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml  # type: ignore[import-untyped]

from ..config import RUNTIMES, PluginConfig, VmConfig
from ..errors import ConfigError
from ..net.cluster import Cluster, TlsSettings
from ..policy import FailurePolicy
from .node import BootstrapError, Node

TYPE_PREFIX = "type.googleapis.com/"
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_WASM = "envoy.extensions.filters.http.wasm.v3.Wasm"
NET_WASM = "envoy.extensions.filters.network.wasm.v3.Wasm"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
WASM_SERVICE = "envoy.extensions.wasm.v3.WasmService"
TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")
STRING_VALUE = "google.protobuf.StringValue"
BYTES_VALUE = "google.protobuf.BytesValue"
STRUCT = "google.protobuf.Struct"

DEFAULT_ROUTE_TIMEOUT = 15.0  # Envoy's route timeout when none is given


# ---- the model ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeaderMatch:
    """Envoy's HeaderMatcher: one of exact/prefix/suffix/contains/regex/present, maybe inverted."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    regex: re.Pattern[str] | None = None
    present: bool | None = None
    invert: bool = False

    def matches(self, values: list[str]) -> bool:
        if self.present is not None:
            ok = bool(values) == self.present
        elif not values:
            ok = False
        else:
            v = ",".join(values)  # Envoy matches multiple values joined by ","
            if self.exact is not None:
                ok = v == self.exact
            elif self.prefix is not None:
                ok = v.startswith(self.prefix)
            elif self.suffix is not None:
                ok = v.endswith(self.suffix)
            elif self.contains is not None:
                ok = self.contains in v
            elif self.regex is not None:
                ok = self.regex.fullmatch(v) is not None
            else:
                ok = True
        return ok != self.invert


@dataclass(frozen=True)
class RouteMatch:
    prefix: str | None = None
    path: str | None = None
    regex: re.Pattern[str] | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True)
class RouteAction:
    cluster: str
    prefix_rewrite: str | None = None
    host_rewrite: str | None = None
    auto_host_rewrite: bool = False
    timeout: float | None = DEFAULT_ROUTE_TIMEOUT  # None: no timeout (Envoy's 0s)


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: bytes = b""


@dataclass(frozen=True)
class Route:
    match: RouteMatch
    action: RouteAction | None = None
    direct: DirectResponse | None = None
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)  # filter_metadata


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class WasmFilter:
    """One envoy.filters.{http,network}.wasm entry: the plugin and what a failed VM does."""

    plugin: PluginConfig
    fail_open: bool = False


@dataclass(frozen=True)
class HttpListener:
    """A listener whose filter chain is an http_connection_manager."""

    name: str
    host: str
    port: int
    virtual_hosts: tuple[VirtualHost, ...]
    filters: tuple[WasmFilter, ...]
    stat_prefix: str = ""
    server_name: str = "envoy"  # the `server` response header (Envoy's default)
    server_header_transformation: str = "OVERWRITE"  # or APPEND_IF_ABSENT, PASS_THROUGH
    generate_request_id: bool = True  # x-request-id for requests without one


@dataclass(frozen=True)
class TcpListener:
    """A listener whose filter chain is wasm network filters then tcp_proxy."""

    name: str
    host: str
    port: int
    filters: tuple[WasmFilter, ...]
    cluster: str
    stat_prefix: str = ""


@dataclass(frozen=True)
class StatsTag:
    name: str
    regex: re.Pattern[str] | None  # None: a fixed value
    fixed_value: str | None = None


@dataclass(frozen=True)
class Bootstrap:
    listeners: tuple[HttpListener | TcpListener, ...]
    clusters: dict[str, Cluster]
    services: tuple[PluginConfig, ...] = ()
    admin: tuple[str, int] | None = None
    stats_tags: tuple[StatsTag, ...] = ()
    cluster_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""

    @property
    def plugins(self) -> list[PluginConfig]:
        """Every plugin (services first), each once: what a Host is built from."""
        out: list[PluginConfig] = list(self.services)
        for lst in self.listeners:
            for f in lst.filters:
                if f.plugin not in out:
                    out.append(f.plugin)
        return out

    def listener_keys(self) -> list[str]:
        """Each listener's name, or listener_<i> for one without: the key its resolved port
        is kept under (Server.ports, Supervisor.ports)."""
        return [lst.name or f"listener_{i}" for i, lst in enumerate(self.listeners)]

    def listener_addresses(self, ports: dict[str, int]) -> list[tuple[str, str, int]]:
        """(name, address, port) of each listener, with port 0 as resolved in `ports`: the
        admin's /listeners."""
        return [(key, lst.host, ports.get(key, lst.port))
                for key, lst in zip(self.listener_keys(), self.listeners)]


# ---- reading --------------------------------------------------------------------------------
def load(path: str | os.PathLike[str]) -> Bootstrap:
    """Reads a bootstrap file (.yaml/.yml/.json); relative filenames resolve beside it."""
    p = pathlib.Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    return loads(text, base_dir=p.resolve().parent, source=str(p))


def loads(text: str, base_dir: str | os.PathLike[str] = ".", source: str = "") -> Bootstrap:
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        raise ConfigError(f"{source or 'config'}: not valid YAML/JSON: {e}") from None
    if data is None:
        data = {}
    return _Reader(pathlib.Path(base_dir)).bootstrap(Node(data, ""), source)


class _Reader:
    def __init__(self, base_dir: pathlib.Path) -> None:
        self.base = base_dir

    # -- top level
    def bootstrap(self, n: Node, source: str) -> Bootstrap:
        n.ignore("node", "layered_runtime", "overload_manager")
        services = tuple(self.service(e) for e in n.nodes("bootstrap_extensions"))
        sr = n.node("static_resources")
        listeners: list[HttpListener | TcpListener] = []
        clusters: dict[str, Cluster] = {}
        metadata: dict[str, dict[str, Any]] = {}
        if sr is not None:
            for c in sr.nodes("clusters"):
                cluster, meta = self.cluster(c)
                if cluster.name in clusters:
                    raise BootstrapError(c.at("name"), f"duplicate cluster {cluster.name!r}")
                clusters[cluster.name] = cluster
                if meta:
                    metadata[cluster.name] = meta
            listeners = [self.listener(ln) for ln in sr.nodes("listeners")]
            sr.done()
        admin = None
        a = n.node("admin")
        if a is not None:
            a.ignore("access_log_path", "access_log", "profile_path")
            admin = self.address(a.node("address", required=True))
            a.done()
        tags: tuple[StatsTag, ...] = ()
        sc = n.node("stats_config")
        if sc is not None:
            tags = tuple(self.stats_tag(t) for t in sc.nodes("stats_tags"))
            sc.get("use_all_default_tags", True, bool)
            sc.done()
        n.done()
        seen: dict[tuple[str, int], str] = {}
        for i, lst in enumerate(listeners):
            key = (lst.host, lst.port)
            if lst.port and (key in seen or key == admin):
                raise BootstrapError(f"static_resources.listeners[{i}].address",
                                     f"{lst.host}:{lst.port} is already used")
            seen[key] = lst.name
        for i, lst in enumerate(listeners):
            names = [lst.cluster] if isinstance(lst, TcpListener) else [
                r.action.cluster for vh in lst.virtual_hosts for r in vh.routes if r.action]
            for name in names:
                if name not in clusters:
                    raise BootstrapError(f"static_resources.listeners[{i}]", f"unknown cluster {name!r}")
        return Bootstrap(tuple(listeners), clusters, services, admin, tags, metadata, source)

    def address(self, n: Node) -> tuple[str, int]:
        sa = n.node("socket_address", required=True)
        n.done()
        host = sa.get("address", "0.0.0.0", str)
        port = sa.get("port_value", 0, int)
        sa.enum("protocol", ("TCP",), "TCP")
        sa.ignore("ipv4_compat")
        sa.done()
        if not 0 <= port < 65536:
            raise BootstrapError(sa.at("port_value"), f"port {port} out of range")
        return host, port

    def typed(self, n: Node, expected: tuple[str, ...]) -> Node:
        """A typed_config: checks its @type (unwrapping a TypedStruct) and returns the body."""
        tc = n.node("typed_config", required=True)
        url = tc.need("@type", str)
        name = url[len(TYPE_PREFIX):] if url.startswith(TYPE_PREFIX) else url
        if name in TYPED_STRUCTS:
            inner = tc.need("type_url", str)
            value = tc.get("value", {}, dict)
            tc.done()
            iname = inner.split("/", 1)[1] if "/" in inner else inner
            if iname not in expected:
                raise BootstrapError(tc.at("type_url"), f"unexpected type {inner!r} (expected {expected[0]})")
            return Node(value, tc.at("value"))
        if name not in expected:
            raise BootstrapError(tc.at("@type"), f"unexpected type {url!r} (expected {TYPE_PREFIX}{expected[0]})")
        return tc

    # -- listeners
    def listener(self, n: Node) -> HttpListener | TcpListener:
        name = n.get("name", "", str)
        host, port = self.address(n.node("address", required=True))
        n.ignore("per_connection_buffer_limit_bytes", "traffic_direction")
        chains = list(n.nodes("filter_chains"))
        if len(chains) != 1:
            raise BootstrapError(n.at("filter_chains"), f"expected one filter chain, got {len(chains)}")
        chain = chains[0]
        chain.ignore("name")
        filters = list(chain.nodes("filters"))
        chain.done()
        n.done()
        wasm: list[WasmFilter] = []
        for i, f in enumerate(filters):
            fname = f.need("name", str)
            last = i == len(filters) - 1
            if fname in ("envoy.filters.network.wasm",) or self._is(f, NET_WASM):
                wasm.append(self.wasm_filter(self.typed(f, (NET_WASM,))))
                f.done()
            elif fname in ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager") or self._is(f, HCM):
                if not last or wasm:
                    raise BootstrapError(f.path, "http_connection_manager must be the only network filter")
                vhs, hf, prefix, server = self.hcm(self.typed(f, (HCM,)))
                f.done()
                return HttpListener(name, host, port, vhs, hf, prefix, *server)
            elif fname in ("envoy.filters.network.tcp_proxy", "envoy.tcp_proxy") or self._is(f, TCP_PROXY):
                if not last:
                    raise BootstrapError(f.path, "tcp_proxy must be the last network filter")
                t = self.typed(f, (TCP_PROXY,))
                f.done()
                cluster = t.need("cluster", str)
                prefix = t.get("stat_prefix", "", str)
                t.ignore("access_log")
                t.done()
                return TcpListener(name, host, port, tuple(wasm), cluster, prefix)
            else:
                raise BootstrapError(f.path, f"unsupported filter {fname}")
        raise BootstrapError(n.at("filter_chains[0].filters"),
                             "needs an http_connection_manager or a tcp_proxy as its last filter")

    @staticmethod
    def _is(f: Node, type_name: str) -> bool:
        tc = f.data.get("typed_config")
        return isinstance(tc, dict) and tc.get("@type") == TYPE_PREFIX + type_name

    def hcm(self, n: Node) -> tuple[tuple[VirtualHost, ...], tuple[WasmFilter, ...], str, tuple[str, str, bool]]:
        prefix = n.get("stat_prefix", "", str)
        n.enum("codec_type", ("AUTO", "HTTP1"), "AUTO")  # HTTP/1.1 downstream (uvicorn)
        n.ignore("access_log", "use_remote_address")
        server = (n.get("server_name", "envoy", str) or "envoy",
                  n.enum("server_header_transformation", ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"),
                         "OVERWRITE"),
                  n.get("generate_request_id", True, bool))
        rc = n.node("route_config", required=True)
        rc.ignore("name", "validate_clusters")
        vhs = tuple(self.virtual_host(v) for v in rc.nodes("virtual_hosts"))
        rc.done()
        filters: list[WasmFilter] = []
        hfs = list(n.nodes("http_filters"))
        n.done()
        for i, f in enumerate(hfs):
            fname = f.need("name", str)
            if fname == "envoy.filters.http.wasm" or self._is(f, HTTP_WASM):
                filters.append(self.wasm_filter(self.typed(f, (HTTP_WASM,))))
            elif fname in ("envoy.filters.http.router", "envoy.router") or self._is(f, ROUTER):
                if f.has("typed_config"):
                    self.typed(f, (ROUTER,)).done()
                if i != len(hfs) - 1:
                    raise BootstrapError(f.path, "the router must be the last http filter")
            else:
                raise BootstrapError(f.path, f"unsupported filter {fname}")
            f.done()
        if not hfs or hfs[-1].data.get("name") not in ("envoy.filters.http.router", "envoy.router") \
                and not self._is(hfs[-1], ROUTER):
            raise BootstrapError(n.at("http_filters"), "must end with envoy.filters.http.router")
        return vhs, tuple(filters), prefix, server

    def virtual_host(self, n: Node) -> VirtualHost:
        name = n.get("name", "", str)
        domains = tuple(d.lower() for d in n.items("domains"))
        if not domains:
            raise BootstrapError(n.at("domains"), "is required")
        for i, d in enumerate(domains):
            if "*" in d and d != "*" and not (d.startswith("*") ^ d.endswith("*")) or d.count("*") > 1:
                raise BootstrapError(f"{n.at('domains')}[{i}]", f"bad domain {d!r} (use exact, *.suffix, prefix.* or *)")
        routes = tuple(self.route(r) for r in n.nodes("routes"))
        n.done()
        return VirtualHost(name, domains, routes)

    def route(self, n: Node) -> Route:
        name = n.get("name", "", str)
        m = n.node("match", required=True)
        kinds = [k for k in ("prefix", "path", "safe_regex") if m.has(k)]
        if len(kinds) != 1:
            bad = [k for k in m.data if k not in ("headers", "case_sensitive", "query_parameters")]
            raise BootstrapError(m.path, "needs exactly one of prefix, path, safe_regex"
                                 + (f" (unsupported: {', '.join(bad)})" if bad and not kinds else ""))
        case = m.get("case_sensitive", True, bool)
        regex = None
        if m.has("safe_regex"):
            regex = self.regex(m.child("safe_regex"), flags=0 if case else re.IGNORECASE)
        match = RouteMatch(prefix=m.get("prefix", None, str), path=m.get("path", None, str),
                           regex=regex, case_sensitive=case,
                           headers=tuple(self.header_match(h) for h in m.nodes("headers")))
        m.done()
        action = direct = None
        if n.has("route") and n.has("direct_response"):
            raise BootstrapError(n.path, "has both route and direct_response")
        if n.has("route"):
            r = n.child("route")
            cluster = r.need("cluster", str)
            host_rewrite = r.get("host_rewrite_literal", None, str)
            auto = r.get("auto_host_rewrite", False, bool)
            timeout = r.duration("timeout", DEFAULT_ROUTE_TIMEOUT)
            action = RouteAction(cluster, r.get("prefix_rewrite", None, str), host_rewrite, auto,
                                 None if timeout == 0 else timeout)
            r.done()
        elif n.has("direct_response"):
            d = n.child("direct_response")
            status = d.need("status", int)
            if not 200 <= status < 600:
                raise BootstrapError(d.at("status"), f"status {status} out of range 200..599")
            body = self.data_source(d.child("body")) if d.has("body") else b""
            direct = DirectResponse(status, body)
            d.done()
        else:
            raise BootstrapError(n.path, "needs route or direct_response (redirect is not supported)")
        meta: dict[str, Any] = {}
        md = n.node("metadata")
        if md is not None:
            meta = md.get("filter_metadata", {}, dict)
            md.done()
        n.done()
        return Route(match, action, direct, name, meta)

    def regex(self, n: Node, flags: int = 0) -> re.Pattern[str]:
        n.ignore("google_re2")
        src = n.need("regex", str)
        n.done()
        try:
            return re.compile(src, flags)
        except re.error as e:
            raise BootstrapError(n.at("regex"), f"bad regex {src!r}: {e}") from None

    def header_match(self, n: Node) -> HeaderMatch:
        name = n.need("name", str).lower()
        invert = n.get("invert_match", False, bool)
        kw: dict[str, Any] = {}
        for key in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
            if n.has(key):
                kw[key.split("_")[0]] = n.get(key, kind=str)
        if n.has("safe_regex_match"):
            kw["regex"] = self.regex(n.child("safe_regex_match"))
        if n.has("present_match"):
            kw["present"] = n.get("present_match", kind=bool)
        if n.has("string_match"):
            sm = n.child("string_match")
            sm.get("ignore_case", False, bool)
            if sm.data.get("ignore_case"):
                raise BootstrapError(sm.at("ignore_case"), "unsupported field")
            for key in ("exact", "prefix", "suffix", "contains"):
                if sm.has(key):
                    kw[key] = sm.get(key, kind=str)
            if sm.has("safe_regex"):
                kw["regex"] = self.regex(sm.child("safe_regex"))
            sm.done()
        if len(kw) > 1:
            raise BootstrapError(n.path, "more than one match kind")
        n.done()
        return HeaderMatch(name, invert=invert, **kw)

    # -- Wasm
    def wasm_filter(self, n: Node) -> WasmFilter:
        """The Wasm proto of an http or network filter: {config: PluginConfig}."""
        c = n.node("config", required=True)
        n.done()
        plugin, fail_open = self.plugin_config(c, singleton=False)
        return WasmFilter(plugin, fail_open)

    def service(self, e: Node) -> PluginConfig:
        name = e.need("name", str)
        if name != "envoy.bootstrap.wasm":
            raise BootstrapError(e.path, f"unsupported bootstrap extension {name}")
        t = self.typed(e, (WASM_SERVICE,))
        e.done()
        singleton = t.get("singleton", False, bool)
        plugin, _ = self.plugin_config(t.node("config", required=True), singleton=singleton)
        t.done()
        if not singleton:
            raise BootstrapError(t.at("singleton"), "only singleton Wasm services are supported")
        return plugin

    def plugin_config(self, c: Node, singleton: bool) -> tuple[PluginConfig, bool]:
        name = c.get("name", "", str)
        root_id = c.get("root_id", "", str)
        configuration = self.any_value(c.child("configuration")) if c.has("configuration") else b""
        # Envoy: failure_policy (1.33) wins over the older fail_open when both are given.
        policy = "FAIL_OPEN" if c.get("fail_open", False, bool) else "FAIL_CLOSED"
        if c.has("failure_policy"):
            chosen = c.enum("failure_policy", ("FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD", "UNSPECIFIED"),
                            "UNSPECIFIED")
            if chosen != "UNSPECIFIED":
                policy = chosen
        fail_open = policy == "FAIL_OPEN"
        vm = c.node("vm_config", required=True)
        c.done()
        vm_id = vm.get("vm_id", "", str)
        runtime = vm.get("runtime", "envoy.wasm.runtime.wasmtime", str)
        if runtime not in RUNTIMES:
            raise BootstrapError(vm.at("runtime"), f"unsupported runtime {runtime!r}")
        vm_cfg = self.any_value(vm.child("configuration")) if vm.has("configuration") else b""
        code = self.code(vm.node("code", required=True))
        env: dict[str, str] = {}
        ev = vm.node("environment_variables")
        if ev is not None:
            if ev.data.get("host_env_keys"):
                for k in ev.items("host_env_keys"):
                    if k in os.environ:
                        env[k] = os.environ[k]
            kv = ev.get("key_values", {}, dict)
            env.update({str(k): str(v) for k, v in kv.items()})
            ev.done()
        vm.ignore("allow_precompiled", "nack_on_code_cache_miss")
        vm.done()
        try:
            return PluginConfig(VmConfig(code, vm_id, runtime, vm_cfg, env), name, root_id,
                                configuration, singleton, failure_policy=FailurePolicy(policy)), fail_open
        except ConfigError as e:
            raise BootstrapError(vm.path, str(e)) from None

    def code(self, n: Node) -> bytes | str:
        local = n.node("local")
        if local is None:
            bad = next(iter(n.data), "code")
            raise BootstrapError(n.at(bad) if n.data else n.path,
                                 "only code.local is supported (remote code is not fetched)")
        n.done()
        if local.has("filename"):
            fn = pathlib.Path(local.need("filename", str))
            local.done()
            p = fn if fn.is_absolute() else self.base / fn
            if not p.is_file():
                raise BootstrapError(local.at("filename"), f"file not found: {p}")
            return str(p)
        return self.data_source(local)

    def data_source(self, n: Node) -> bytes:
        """Envoy's DataSource: inline_string, inline_bytes (base64) or filename."""
        keys = [k for k in ("inline_string", "inline_bytes", "filename") if n.has(k)]
        if len(keys) != 1:
            raise BootstrapError(n.path, "needs one of inline_string, inline_bytes, filename")
        out: bytes
        if n.has("inline_string"):
            out = n.get("inline_string", kind=str).encode()
        elif n.has("inline_bytes"):
            try:
                out = base64.b64decode(n.get("inline_bytes", kind=str), validate=True)
            except ValueError:
                raise BootstrapError(n.at("inline_bytes"), "not base64") from None
        else:
            fn = pathlib.Path(n.get("filename", kind=str))
            p = fn if fn.is_absolute() else self.base / fn
            try:
                out = p.read_bytes()
            except OSError as e:
                raise BootstrapError(n.at("filename"), f"cannot read {p}: {e.strerror}") from None
        n.done()
        return out

    def any_value(self, n: Node) -> bytes:
        """A google.protobuf.Any configuration as the plugin receives it: the string or
        bytes of a StringValue/BytesValue; a Struct as its JSON text (what Envoy hands over)."""
        url = n.need("@type", str)
        name = url[len(TYPE_PREFIX):] if url.startswith(TYPE_PREFIX) else url
        out: bytes
        if name == STRING_VALUE:
            out = n.get("value", "", str).encode()
        elif name == BYTES_VALUE:
            try:
                out = base64.b64decode(n.get("value", "", str), validate=True)
            except ValueError:
                raise BootstrapError(n.at("value"), "not base64") from None
        elif name == STRUCT:
            body = {k: v for k, v in n.data.items() if k != "@type"}
            n.ignore(*body)
            if set(body) == {"value"} and isinstance(body["value"], dict):
                body = body["value"]  # {"@type": Struct, value: {...}}
            out = json.dumps(body, separators=(",", ":")).encode()
        else:
            raise BootstrapError(n.at("@type"), f"unsupported configuration type {url!r} "
                                 f"(supported: {STRING_VALUE}, {BYTES_VALUE}, {STRUCT})")
        n.done()
        return out

    # -- clusters
    def cluster(self, n: Node) -> tuple[Cluster, dict[str, Any]]:
        name = n.need("name", str)
        kind = n.enum("type", ("STATIC", "STRICT_DNS", "LOGICAL_DNS"), "STATIC")
        n.enum("lb_policy", ("ROUND_ROBIN",), "ROUND_ROBIN")
        n.enum("dns_lookup_family", ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"), "AUTO")
        connect_timeout = n.duration("connect_timeout", 5.0) or 0.0  # 0: refused by Cluster
        meta_node = n.node("metadata")
        meta: dict[str, Any] = {}
        if meta_node is not None:
            meta = meta_node.get("filter_metadata", {}, dict)
            meta_node.done()
        endpoints: list[str] = []
        la = n.node("load_assignment", required=True)
        la.get("cluster_name", "", str)
        for e in la.nodes("endpoints"):
            e.ignore("locality", "priority", "load_balancing_weight")
            for lb in e.nodes("lb_endpoints"):
                lb.ignore("load_balancing_weight", "health_status")
                ep = lb.node("endpoint", required=True)
                ep.ignore("hostname")
                host, port = self.address(ep.node("address", required=True))
                ep.done()
                lb.done()
                endpoints.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            e.done()
        la.done()
        if not endpoints:
            raise BootstrapError(la.at("endpoints"), "no endpoints")
        if kind == "LOGICAL_DNS" and len(endpoints) != 1:
            raise BootstrapError(la.at("endpoints"), "LOGICAL_DNS takes exactly one endpoint")
        http2 = False
        if n.has("http2_protocol_options"):
            n.get("http2_protocol_options", {}, dict)
            http2 = True
        teo = n.node("typed_extension_protocol_options")
        if teo is not None:
            for key in list(teo.data):
                if key != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions":
                    raise BootstrapError(teo.at(key), "unsupported protocol options")
                po = Node(teo.get(key, kind=dict), teo.at(key))
                url = po.need("@type", str)
                if url != TYPE_PREFIX + HTTP_OPTIONS:
                    raise BootstrapError(po.at("@type"), f"unexpected type {url!r}")
                ec = po.node("explicit_http_config")
                if ec is not None:
                    if ec.has("http2_protocol_options"):
                        ec.get("http2_protocol_options")
                        http2 = True
                    ec.get("http_protocol_options")
                    ec.done()
                po.done()
            teo.done()
        tls = None
        ts = n.node("transport_socket")
        if ts is not None:
            tname = ts.need("name", str)
            if tname not in ("envoy.transport_sockets.tls", "tls"):
                raise BootstrapError(ts.at("name"), f"unsupported transport socket {tname}")
            tls = self.tls(self.typed(ts, (TLS,)))
            ts.done()
        n.done()
        try:
            return Cluster(name, tuple(endpoints), connect_timeout=connect_timeout, tls=tls,
                           http2=http2), meta
        except ConfigError as e:
            raise BootstrapError(n.path, str(e)) from None

    def tls(self, n: Node) -> TlsSettings:
        sni = n.get("sni", None, str)
        ctx = n.node("common_tls_context")
        n.done()
        ca = cert = key = None
        verify = True
        alpn: tuple[str, ...] = ()
        if ctx is not None:
            alpn = tuple(ctx.items("alpn_protocols"))
            vc = ctx.node("validation_context")
            if vc is not None:
                if vc.has("trusted_ca"):
                    ca = self.path_source(vc.child("trusted_ca"))
                vc.done()
            else:
                verify = False  # Envoy verifies nothing without a validation context
            certs = list(ctx.nodes("tls_certificates"))
            if len(certs) > 1:
                raise BootstrapError(ctx.at("tls_certificates"), "at most one client certificate")
            for c in certs:
                cert = self.path_source(c.node("certificate_chain", required=True))
                key = self.path_source(c.node("private_key", required=True))
                c.done()
            ctx.done()
        else:
            verify = False
        try:
            return TlsSettings(ca_file=ca, sni=sni, verify=verify, cert_file=cert, key_file=key, alpn=alpn)
        except ConfigError as e:
            raise BootstrapError(n.path, str(e)) from None

    def path_source(self, n: Node) -> str:
        fn = pathlib.Path(n.need("filename", str))
        n.done()
        return str(fn if fn.is_absolute() else self.base / fn)

    def stats_tag(self, n: Node) -> StatsTag:
        name = n.need("tag_name", str)
        if n.has("fixed_value"):
            value = n.get("fixed_value", kind=str)
            n.done()
            return StatsTag(name, None, value)
        src = n.need("regex", str)
        n.done()
        try:
            return StatsTag(name, re.compile(src))
        except re.error as e:
            raise BootstrapError(n.at("regex"), f"bad regex {src!r}: {e}") from None
