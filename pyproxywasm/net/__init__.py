"""The network side: upstream clusters and the clients that reach them.

- cluster.py: Cluster / TlsSettings, the one description of an upstream that plugins call
  (proxy_http_call, proxy_grpc_*) and that `serve` routes to.
- loop.py: IoLoop, the process's I/O event loop thread (or a loop the embedding already
  runs); clients live on it, VM threads hand calls to it.
- http_client.py: HttpClient, pooled HTTP/1.1 (aiohttp) and HTTP/2 calls per cluster, whole
  (`request`) or streamed (`open`); failures are CalloutError with a short `reason`.
- h2_client.py: the HTTP/2 connections and pools behind HttpClient (h2 on asyncio).
- grpc_client.py: GrpcClient, unary calls and streams over grpc.aio on raw bytes;
  failures are GrpcCallError(code, message) or a stream's ("close", (code, message)).
- outbound.py: what a guest's callout becomes: checks, the call on the I/O loop, and the
  answer posted back to the dispatcher of the thread whose VM asked.
"""
from .cluster import Cluster, ClusterError, TlsSettings

__all__ = ["Cluster", "ClusterError", "TlsSettings"]
