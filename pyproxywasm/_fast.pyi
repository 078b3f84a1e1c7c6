"""Types of the optional C extension pyproxywasm/_fast.c + _fast_exchange.c (the per-event
path of HttpStream, and the adapters' one-filter exchange)."""
from typing import Any, Callable, MutableMapping, Sequence

def init(start: int, headers: int, data: int, finish: int, new: int, read: int,
         set_property: int, vm_closed: int) -> None: ...
def set_constants(*values: object) -> None: ...
def set_helpers(asgi_path: Callable[[MutableMapping[str, Any], bytes], None],
                wsgi_path: Callable[[MutableMapping[str, Any], bytes], None]) -> None: ...

_Props = Sequence[tuple[bytes, bytes]] | None

class StreamBase:
    """HttpStream's C base: its five hot events as C methods, and the adapters' exchange."""

    def asgi_start(self, scope: MutableMapping[str, Any], props: _Props,
                   extra: _Props) -> tuple[int, bool, bool] | None: ...
    def asgi_app_scope(self, scope: MutableMapping[str, Any],
                       pending: bytes) -> tuple[dict[str, Any], bytes]: ...
    def asgi_respond(self, status: int, headers: Any, body: bytes, end: bool, head: bool,
                     resp_in: int) -> tuple[Any, ...] | None: ...
    def wsgi_start(self, environ: MutableMapping[str, Any],
                   props: _Props) -> tuple[int, bool, bool] | None: ...
    def wsgi_app_environ(self, environ: MutableMapping[str, Any]
                         ) -> tuple[dict[str, Any], bytes] | None: ...
    def wsgi_respond(self, status: str, headers: Any, body: bytes, end: bool, head: bool,
                     resp_in: int) -> tuple[Any, ...] | None: ...

class Opener:
    """A root context's stream maker (Plugin.http_stream's shortcut): None when the general
    path has work to do first."""

    def __init__(self, cls: type, root: Any, vmobj: Any, vm: Any, vma: int, root_id: int,
                 dropped: Any, level_cache: dict[Any, Any]) -> None: ...
    def __call__(self) -> Any: ...

class PluginBase:
    """Plugin's C base: http_stream through the calling thread's Opener."""

    index: int
    def http_stream(self, properties: Any = None) -> Any: ...
