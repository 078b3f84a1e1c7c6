"""Upstream clusters, in Envoy's terms: a name, endpoints, timeouts, protocol and TLS.

Plugins name a cluster in proxy_http_call / proxy_grpc_call; `serve` routes to the same
objects (its Envoy-config reader fills them from `static_resources.clusters`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ConfigError


class ClusterError(ConfigError):
    """A cluster's configuration is malformed."""


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards a cluster (Envoy's UpstreamTlsContext). Verification is on by default:
    the server certificate must chain to `ca_file` (or the system store when None) and
    match `sni` (or the endpoint's host when None)."""

    ca_file: str | None = None
    sni: str | None = None
    verify: bool = True
    cert_file: str | None = None  # client certificate (PEM), for mutual TLS
    key_file: str | None = None
    alpn: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ClusterError("a client certificate needs both cert_file and key_file")
        for f in (self.ca_file, self.cert_file, self.key_file):
            if f is not None and not os.path.isfile(f):
                raise ClusterError(f"TLS file not found: {f!r}")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') as (host, port); raises ClusterError."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"endpoint {endpoint!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass(frozen=True)
class Cluster:
    """An upstream: `endpoints` are "host:port" strings, picked round robin.

    connect_timeout: seconds to establish a connection (Envoy's default, 5 s).
    request_timeout: seconds for a whole call when the plugin passes timeout 0 (None: no
    limit, as Envoy treats 0). http2: speak HTTP/2 (gRPC always does). max_connections:
    connections kept per endpoint. max_response_bytes: a callout answer larger than this
    fails the call (Envoy's buffer limit, 1 MiB, by default)."""

    name: str
    endpoints: tuple[str, ...]
    connect_timeout: float = 5.0
    request_timeout: float | None = None
    tls: TlsSettings | None = None
    http2: bool = False
    max_connections: int = 100
    max_response_bytes: int = 1 << 20
    addresses: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ClusterError("a cluster needs a name")
        eps = (self.endpoints,) if isinstance(self.endpoints, str) else tuple(self.endpoints)
        if not eps:
            raise ClusterError(f"cluster {self.name!r} has no endpoints")
        object.__setattr__(self, "endpoints", eps)
        object.__setattr__(self, "addresses", tuple(split_endpoint(e) for e in eps))
        if self.connect_timeout <= 0:
            raise ClusterError(f"cluster {self.name!r}: connect_timeout must be > 0")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ClusterError(f"cluster {self.name!r}: request_timeout must be > 0 or None")
        if self.max_connections < 1 or self.max_response_bytes < 0:
            raise ClusterError(f"cluster {self.name!r}: limits must be positive")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"
