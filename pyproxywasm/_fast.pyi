"""Types of the optional C extension pyproxywasm/_fast.c (the per-event path of HttpStream)."""

def init(start: int, headers: int, data: int, finish: int) -> None: ...
def set_constants(*values: object) -> None: ...

class StreamBase:
    """HttpStream's C base: its five hot events as C methods."""
