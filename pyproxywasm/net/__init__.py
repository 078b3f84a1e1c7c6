"""The network side: upstream clusters and the clients that reach them.

- cluster.py: Cluster / TlsSettings, the one description of an upstream that plugins call
  (proxy_http_call, proxy_grpc_*) and that `serve` routes to.
- loop.py: the process's I/O event loop thread (or a loop the embedding already runs).
- http_client.py, grpc_client.py: pooled HTTP/1.1, HTTP/2 and gRPC clients per cluster.
- outbound.py: what a guest's callout becomes: checks, the call on the I/O loop, and the
  answer posted back to the dispatcher of the thread whose VM asked.
"""
from .cluster import Cluster, ClusterError, TlsSettings

__all__ = ["Cluster", "ClusterError", "TlsSettings"]
