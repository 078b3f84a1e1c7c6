"""The properties Envoy fills for every plugin, with this host's defaults.

Plugins read these at start (proxy_get_property) and many fail or log errors when they
are missing. Envoy takes them from its bootstrap (node), the listener, route and cluster
a stream took; pyproxywasm has none of those, so it fills them with the defaults below.
Override any of them with Host(properties=...) / PluginHarness(properties=...) (a nested
map is merged key by key: properties={"node": {"id": "sidecar~10.0.0.1"}} keeps the
other node fields). plugin_name, plugin_root_id and plugin_vm_id come from each plugin's
configuration (the C core answers them).

    node.id              "pyproxywasm"         the bootstrap's node id
    node.cluster         "pyproxywasm"         the bootstrap's node cluster
    node.user_agent_name "pyproxywasm"
    node.metadata        {}                    an empty map
    cluster_name         "pyproxywasm"         the upstream cluster of the stream's route
    route_name           "pyproxywasm"         the name of the stream's route
    listener_direction   0                     UNSPECIFIED (1 INBOUND, 2 OUTBOUND)
    xds.node             the node map above    (xds.node.id, ...)
    xds.cluster_name, xds.route_name, xds.listener_direction: as the top-level ones
    xds.virtual_host_name "pyproxywasm"
    xds.filter_chain_name ""
"""
from __future__ import annotations

from typing import Any, Mapping

NODE: dict[str, Any] = {"id": "pyproxywasm", "cluster": "pyproxywasm",
                        "user_agent_name": "pyproxywasm", "metadata": {}}

DEFAULTS: dict[str, Any] = {
    "node": NODE,
    "cluster_name": "pyproxywasm",
    "route_name": "pyproxywasm",
    "listener_direction": 0,
    "xds": {
        "node": NODE,
        "cluster_name": "pyproxywasm",
        "route_name": "pyproxywasm",
        "listener_direction": 0,
        "virtual_host_name": "pyproxywasm",
        "filter_chain_name": "",
    },
}


def _merge(base: Mapping[Any, Any], over: Mapping[Any, Any]) -> dict[Any, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def with_defaults(properties: Mapping[Any, Any] | None) -> dict[Any, Any]:
    """The defaults, overridden by `properties` (dotted keys such as "node.id" override the
    one field)."""
    nested: dict[Any, Any] = {}
    for k, v in (properties or {}).items():
        if isinstance(k, str) and "." in k and k.split(".", 1)[0] in DEFAULTS:
            head, *rest = k.split(".")
            cur = nested.setdefault(head, {})
            for seg in rest[:-1]:
                cur = cur.setdefault(seg, {})
            cur[rest[-1]] = v
        else:
            nested = _merge(nested, {k: v})
    return _merge(DEFAULTS, nested)
