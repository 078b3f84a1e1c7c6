"""The Envoy bootstrap reader: each supported field, and the path-named error for what is not."""
from __future__ import annotations

import base64
import json
import textwrap

import pytest

from pyproxywasm.serve import BootstrapError, loads
from pyproxywasm.serve.config import HttpListener, TcpListener

from conftest import GO_HTTP, GO_TCP

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def wasm_filter(config: dict | None = None, **vm) -> dict:
    cfg = {"vm_config": {"code": {"local": {"filename": str(GO_HTTP)}}, **vm}}
    cfg.update(config or {})
    return {"name": "envoy.filters.http.wasm", "typed_config": {"@type": WASM, "config": cfg}}


def boot(routes=None, filters=None, clusters=None, vhosts=None, **top) -> dict:
    vhosts = vhosts or [{"name": "all", "domains": ["*"], "routes": routes or [
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
    hcm = {"@type": HCM, "stat_prefix": "in", "route_config": {"virtual_hosts": vhosts},
           "http_filters": (filters or []) + [ROUTER]}
    doc = {"static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": clusters if clusters is not None else [cluster("up")]}}
    doc.update(top)
    return doc


def cluster(name: str, *ports: int, **extra) -> dict:
    eps = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
           for p in (ports or (8080,))]
    return {"name": name, "connect_timeout": "0.25s", "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}, **extra}


def read(doc: dict):
    return loads(json.dumps(doc))


def error(doc: dict) -> str:
    with pytest.raises(BootstrapError) as e:
        read(doc)
    return str(e.value)


LISTENER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


# ---- what is read ---------------------------------------------------------------------------
def test_listener_routes_and_cluster():
    b = read(boot())
    (lst,) = b.listeners
    assert isinstance(lst, HttpListener) and (lst.host, lst.port) == ("127.0.0.1", 0)
    assert lst.virtual_hosts[0].routes[0].action.cluster == "up"
    assert lst.virtual_hosts[0].routes[0].action.timeout == 15.0  # Envoy's default
    c = b.clusters["up"]
    assert c.endpoints == ("127.0.0.1:8080",) and c.connect_timeout == 0.25 and not c.http2 and c.tls is None


def test_route_match_kinds_and_actions():
    routes = [
        {"match": {"path": "/exact"}, "direct_response": {"status": 201, "body": {"inline_string": "hi"}}},
        {"match": {"safe_regex": {"google_re2": {}, "regex": "/r/[0-9]+"}},
         "route": {"cluster": "up", "timeout": "0s", "host_rewrite_literal": "example.org"}},
        {"match": {"prefix": "/api", "case_sensitive": False,
                   "headers": [{"name": "X-Env", "exact_match": "canary"},
                               {"name": "x-p", "present_match": True},
                               {"name": "x-s", "string_match": {"suffix": "z"}, "invert_match": True}]},
         "route": {"cluster": "up", "prefix_rewrite": "/v2", "auto_host_rewrite": True, "timeout": "1.5s"}},
        {"match": {"prefix": "/b"}, "direct_response": {"status": 200, "body": {"inline_bytes": base64.b64encode(b"\x00\x01").decode()}}},
    ]
    r = read(boot(routes=routes)).listeners[0].virtual_hosts[0].routes
    assert r[0].match.path == "/exact" and r[0].direct.status == 201 and r[0].direct.body == b"hi"
    assert r[1].match.regex.pattern == "/r/[0-9]+" and r[1].action.timeout is None
    assert r[1].action.host_rewrite == "example.org"
    assert not r[2].match.case_sensitive and r[2].action.prefix_rewrite == "/v2"
    assert r[2].action.auto_host_rewrite and r[2].action.timeout == 1.5
    h = r[2].match.headers
    assert h[0].name == "x-env" and h[0].matches(["canary"]) and not h[0].matches(["prod"])
    assert h[1].matches(["anything"]) and not h[1].matches([])
    assert h[2].matches(["a"]) and not h[2].matches(["z"])
    assert r[3].direct.body == b"\x00\x01"


def test_wasm_filter_fields_and_configuration_kinds():
    filters = [
        wasm_filter({"name": "one", "root_id": "r1", "fail_open": True,
                     "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "plain"}},
                    vm_id="vm1", runtime="envoy.wasm.runtime.v8",
                    configuration={"@type": "type.googleapis.com/google.protobuf.BytesValue",
                                   "value": base64.b64encode(b"\xffbin").decode()}),
        wasm_filter({"failure_policy": "FAIL_CLOSED",
                     "configuration": {"@type": "type.googleapis.com/google.protobuf.Struct",
                                       "value": {"a": 1, "b": ["x"]}}}),
    ]
    f1, f2 = read(boot(filters=filters)).listeners[0].filters
    p = f1.plugin
    assert (p.name, p.root_id, p.configuration, f1.fail_open) == ("one", "r1", b"plain", True)
    assert p.vm_config.vm_id == "vm1" and p.vm_config.runtime == "envoy.wasm.runtime.v8"
    assert p.vm_config.configuration == b"\xffbin"
    assert p.vm_config.code == str(GO_HTTP) and not p.singleton
    assert json.loads(f2.plugin.configuration) == {"a": 1, "b": ["x"]} and not f2.fail_open
    assert p.failure_policy.value == "FAIL_OPEN" and f2.plugin.failure_policy.value == "FAIL_CLOSED"
    f3 = read(boot(filters=[wasm_filter({"fail_open": True, "failure_policy": "FAIL_RELOAD"})])).listeners[0].filters[0]
    assert f3.plugin.failure_policy.value == "FAIL_RELOAD" and not f3.fail_open  # failure_policy wins


def test_typed_struct_wrapper_and_inline_code(tmp_path):
    code = GO_HTTP.read_bytes()
    f = {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "value": {"config": {"vm_config": {"code": {"local": {"inline_bytes": base64.b64encode(code).decode()}}}}}}}
    (flt,) = read(boot(filters=[f])).listeners[0].filters
    assert flt.plugin.vm_config.code == code


def test_relative_filenames_resolve_beside_the_config(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "f.wasm").write_bytes(GO_HTTP.read_bytes())
    doc = boot(filters=[wasm_filter()])
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0][
        "typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = "plugins/f.wasm"
    from pyproxywasm.serve import load
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(doc))
    (flt,) = load(path).listeners[0].filters
    assert flt.plugin.vm_config.code == str(tmp_path / "plugins" / "f.wasm")


def test_clusters_dns_http2_tls_and_metadata(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    clusters = [
        cluster("up", 1, 2, type="strict_dns", lb_policy="round_robin",
                typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                metadata={"filter_metadata": {"location": {"region": "eu"}}}),
        cluster("tls", 443, type="LOGICAL_DNS", http2_protocol_options={}, transport_socket={
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "example.org",
                "common_tls_context": {"validation_context": {"trusted_ca": {"filename": str(ca)}},
                                       "alpn_protocols": ["h2"]}}}),
    ]
    b = read(boot(clusters=clusters))
    up, tls = b.clusters["up"], b.clusters["tls"]
    assert up.endpoints == ("127.0.0.1:1", "127.0.0.1:2") and up.http2
    assert b.cluster_metadata["up"] == {"location": {"region": "eu"}}
    assert tls.http2 and tls.tls.sni == "example.org" and tls.tls.ca_file == str(ca) and tls.tls.verify
    assert tls.tls.alpn == ("h2",) and tls.scheme == "https"


def test_services_admin_stats_tags_and_tcp_listener():
    doc = boot()
    doc["bootstrap_extensions"] = [{"name": "envoy.bootstrap.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService", "singleton": True,
        "config": {"configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "q"},
                   "vm_config": {"vm_id": "svc", "code": {"local": {"filename": str(GO_HTTP)}}}}}}]
    doc["admin"] = {"access_log_path": "/dev/null",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    doc["stats_config"] = {"stats_tags": [{"tag_name": "value", "regex": "(_value=([a-z]+))"},
                                          {"tag_name": "fixed", "fixed_value": "v"}]}
    doc["static_resources"]["listeners"].append({
        "name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": {"vm_config": {"code": {"local": {"filename": str(GO_TCP)}}}}}},
            {"name": "envoy.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp", "cluster": "up"}}]}]})
    b = read(doc)
    (svc,) = b.services
    assert svc.singleton and svc.configuration == b"q" and svc.vm_config.vm_id == "svc"
    assert b.admin == ("127.0.0.1", 0)
    assert [t.name for t in b.stats_tags] == ["value", "fixed"] and b.stats_tags[1].fixed_value == "v"
    tcp = b.listeners[1]
    assert isinstance(tcp, TcpListener) and tcp.cluster == "up" and len(tcp.filters) == 1
    assert b.plugins[0] is svc and len(b.plugins) == 2


def test_yaml_with_durations_and_lowercase_enums():
    text = textwrap.dedent(f"""
        static_resources:
          listeners:
          - address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
            filter_chains:
            - filters:
              - name: envoy.http_connection_manager
                typed_config:
                  "@type": {HCM}
                  codec_type: auto
                  route_config:
                    virtual_hosts:
                    - {{name: a, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: c, timeout: 250ms}}}}]}}
                  http_filters: [{{name: envoy.filters.http.router}}]
          clusters:
          - name: c
            connect_timeout: {{seconds: 2, nanos: 500000000}}
            type: logical_dns
            load_assignment:
              endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: localhost, port_value: 80}}}}}}}}]}}]
    """)
    b = loads(text)
    assert b.clusters["c"].connect_timeout == 2.5
    assert b.listeners[0].virtual_hosts[0].routes[0].action.timeout == 0.25


# ---- what is refused, by path -----------------------------------------------------------------
def test_unsupported_http_filter_is_named_with_its_path():
    f = {"name": "envoy.filters.http.jwt_authn", "typed_config": {"@type": "x"}}
    assert error(boot(filters=[f])) == f"{LISTENER}.http_filters[0]: unsupported filter envoy.filters.http.jwt_authn"


def test_unsupported_network_filter():
    doc = boot()
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].insert(
        0, {"name": "envoy.filters.network.rbac", "typed_config": {}})
    assert error(doc) == ("static_resources.listeners[0].filter_chains[0].filters[0]: "
                          "unsupported filter envoy.filters.network.rbac")


def test_unknown_fields_are_refused_not_ignored():
    doc = boot()
    doc["static_resources"]["clusters"][0]["outlier_detection"] = {}
    assert error(doc) == "static_resources.clusters[0].outlier_detection: unsupported field"
    doc = boot(routes=[{"match": {"prefix": "/"}, "route": {"cluster": "up", "retry_policy": {}}}])
    assert error(doc) == f"{LISTENER}.route_config.virtual_hosts[0].routes[0].route.retry_policy: unsupported field"
    doc = boot()
    doc["dynamic_resources"] = {}
    assert error(doc) == "dynamic_resources: unsupported field"


def test_type_urls_are_checked():
    f = wasm_filter()
    f["typed_config"]["@type"] = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
    msg = error(boot(filters=[f]))
    assert msg.startswith(f"{LISTENER}.http_filters[0].typed_config.@type: unexpected type")
    f = wasm_filter({"configuration": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}})
    msg = error(boot(filters=[f]))
    assert msg.startswith(f"{LISTENER}.http_filters[0].typed_config.config.configuration.@type: unsupported configuration type")


@pytest.mark.parametrize("mutate, path, message", [
    (lambda d: d["static_resources"]["clusters"][0].update(type="EDS"),
     "static_resources.clusters[0].type", "unsupported value 'EDS'"),
    (lambda d: d["static_resources"]["clusters"][0].update(lb_policy="MAGLEV"),
     "static_resources.clusters[0].lb_policy", "unsupported value 'MAGLEV'"),
    (lambda d: d["static_resources"]["clusters"][0].update(connect_timeout="soon"),
     "static_resources.clusters[0].connect_timeout", "bad duration 'soon'"),
    (lambda d: d["static_resources"]["clusters"][0]["load_assignment"].update(endpoints=[]),
     "static_resources.clusters[0].load_assignment.endpoints", "no endpoints"),
    (lambda d: d["static_resources"]["clusters"].append(cluster("up")),
     "static_resources.clusters[1].name", "duplicate cluster 'up'"),
    (lambda d: d["static_resources"]["clusters"][0].update(transport_socket={"name": "envoy.transport_sockets.alts"}),
     "static_resources.clusters[0].transport_socket.name", "unsupported transport socket"),
    (lambda d: d["static_resources"]["listeners"][0]["address"]["socket_address"].update(port_value="x"),
     "static_resources.listeners[0].address.socket_address.port_value", "expected a number, got a string"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"].append({"filters": []}),
     "static_resources.listeners[0].filter_chains", "expected one filter chain, got 2"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"].update(codec_type="HTTP2"),
     LISTENER + ".codec_type", "unsupported value 'HTTP2' (supported: AUTO, HTTP1)"),
    (lambda d: d.update(bootstrap_extensions=[{"name": "envoy.bootstrap.internal_listener"}]),
     "bootstrap_extensions[0]", "unsupported bootstrap extension"),
])
def test_error_paths(mutate, path, message):
    doc = boot()
    mutate(doc)
    msg = error(doc)
    assert msg.startswith(f"{path}: {message}"), msg


def test_route_errors():
    vh = f"{LISTENER}.route_config.virtual_hosts[0]"
    assert error(boot(routes=[{"match": {"prefix": "/"}, "redirect": {"path_redirect": "/x"}}])) == \
        f"{vh}.routes[0]: needs route or direct_response (redirect is not supported)"
    assert error(boot(routes=[{"match": {"prefix": "/", "path": "/x"}, "route": {"cluster": "up"}}])) == \
        f"{vh}.routes[0].match: needs exactly one of prefix, path, safe_regex"
    assert error(boot(routes=[{"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "up"}}])).startswith(
        f"{vh}.routes[0].match.safe_regex.regex: bad regex '('")
    assert error(boot(routes=[{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}])) == \
        "static_resources.listeners[0]: unknown cluster 'nope'"
    assert error(boot(vhosts=[{"name": "x", "domains": ["a.*.b"], "routes": []}])).startswith(
        f"{LISTENER}.route_config.virtual_hosts[0].domains[0]: bad domain 'a.*.b'")


def test_wasm_errors(tmp_path):
    base = f"{LISTENER}.http_filters[0].typed_config.config.vm_config"
    f = wasm_filter()
    f["typed_config"]["config"]["vm_config"]["code"] = {"remote": {"http_uri": {}}}
    assert error(boot(filters=[f])) == f"{base}.code.remote: only code.local is supported (remote code is not fetched)"
    f = wasm_filter()
    f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(tmp_path / "missing.wasm")
    assert error(boot(filters=[f])).startswith(f"{base}.code.local.filename: file not found")
    assert error(boot(filters=[wasm_filter(runtime="envoy.wasm.runtime.null")])) == \
        f"{base}.runtime: unsupported runtime 'envoy.wasm.runtime.null'"
    doc = boot(filters=[ROUTER, wasm_filter()])
    assert error(doc) == f"{LISTENER}.http_filters[0]: the router must be the last http filter"


def test_malformed_documents():
    with pytest.raises(BootstrapError, match="^static_resources: expected a mapping, got a list$"):
        loads("static_resources: [1]")
    from pyproxywasm.errors import ConfigError
    with pytest.raises(ConfigError, match="not valid YAML"):
        loads("a: [", source="x.yaml")
