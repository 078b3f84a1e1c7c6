"""Adapters that put Proxy-Wasm HTTP filters in front of Python web apps.

- `ProxyWasmMiddleware` (ASGI 3: Starlette, FastAPI, plain ASGI; any ASGI server)
- `ProxyWasmWSGIMiddleware` (WSGI: Flask, Django; a threaded WSGI server)

Both run a chain of plugins in Envoy's http_filters order over one `FilterChain` per request.
"""
from .asgi import ProxyWasmMiddleware, StreamReset
from .chain import FilterChain, failure_policy
from .wsgi import ProxyWasmWSGIMiddleware

__all__ = ["FilterChain", "ProxyWasmMiddleware", "ProxyWasmWSGIMiddleware", "StreamReset",
           "failure_policy"]
