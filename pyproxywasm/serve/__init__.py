"""`pyproxywasm serve`: a proxy from an Envoy bootstrap.

- config.py (+ node.py): the bootstrap YAML/JSON into listeners, routes, PluginConfig and
  net.Cluster objects; anything unsupported is one error naming its YAML path.
- router.py, proxy.py: route matching and the forwarding ASGI app.
- filters.py: the listener's Wasm HTTP filters: the adapters' ASGI middleware in front of the router.
- tcp_proxy.py: network filters then tcp_proxy on a TCP listener.
- admin.py: /ready, /stats, /stats/prometheus.
- server.py: the main thread and `concurrency` workers, each with its loop and VMs.
- supervisor.py, worker.py, control.py, shared_state.py: `--processes N`: a supervisor,
  N worker processes each running a Server, the admin summing their metrics.
"""
from __future__ import annotations

import pathlib

from .config import Bootstrap, load, loads
from .node import BootstrapError
from .server import Server
from .supervisor import Supervisor

DEFAULT_CONFIG = pathlib.Path(__file__).parent / "default.yaml"

__all__ = ["Bootstrap", "BootstrapError", "DEFAULT_CONFIG", "Server", "Supervisor", "load", "loads"]
