"""A view of one YAML/JSON mapping that knows its own path in the document.

Why: every unsupported or malformed field must be named in one error with the path a
reader can find in the file (`static_resources.clusters[2].type: ...`). Each mapping is
read through a Node; `done()` then refuses whatever nobody read, so nothing in the config
is silently ignored.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Literal, overload

from ..errors import ConfigError


class BootstrapError(ConfigError):
    """The Envoy bootstrap cannot be served as written; the message starts with the path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(s|ms|us|ns|m|h)?$")
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "m": 60.0, "h": 3600.0, None: 1.0}


class Node:
    """One mapping at `path`. get/need read a key (and mark it read); done() raises on the
    first key that was neither read nor ignored on purpose."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise BootstrapError(path, f"expected a mapping, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def ignore(self, *keys: str) -> None:
        """Fields that change nothing a proxy here does (stat prefixes, access-log paths)."""
        self._seen.update(keys)

    def get(self, key: str, default: Any = None, kind: type | tuple[type, ...] | None = None) -> Any:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if kind is not None and not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
            raise BootstrapError(self.at(key), f"expected {_names(kind)}, got {_kind(value)}")
        return value

    def need(self, key: str, kind: type | tuple[type, ...] | None = None) -> Any:
        value = self.get(key, kind=kind)
        if value is None:
            raise BootstrapError(self.at(key), "is required")
        return value

    @overload
    def node(self, key: str, required: Literal[True]) -> "Node": ...

    @overload
    def node(self, key: str, required: bool = False) -> "Node | None": ...

    def node(self, key: str, required: bool = False) -> "Node | None":
        value = self.need(key) if required else self.get(key)
        return None if value is None else Node(value, self.at(key))

    def child(self, key: str) -> "Node":
        """A mapping field known to be there (after has())."""
        return Node(self.need(key), self.at(key))

    def _list(self, key: str) -> list[Any]:
        """A repeated field's values. As Envoy's YAML loader, a single value where a list
        is expected is a list of one (the Rust SDK's examples write `listeners:` so)."""
        value = self.get(key, [])
        return value if isinstance(value, list) else [value]

    def nodes(self, key: str) -> Iterator["Node"]:
        """The mappings of a list field, each with its index in its path."""
        for i, item in enumerate(self._list(key)):
            yield Node(item, f"{self.at(key)}[{i}]")

    def items(self, key: str, kind: type | tuple[type, ...] = str) -> list[Any]:
        values: list[Any] = self._list(key)
        for i, v in enumerate(values):
            if not isinstance(v, kind) or isinstance(v, bool):
                raise BootstrapError(f"{self.at(key)}[{i}]", f"expected {_names(kind)}, got {_kind(v)}")
        return values

    def duration(self, key: str, default: float | None = None) -> float | None:
        """A protobuf Duration: "0.25s", "5s", 1.5 (seconds), or {seconds, nanos}."""
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, dict):
            n = Node(value, self.at(key))
            secs = n.get("seconds", 0, (int, str))
            nanos = n.get("nanos", 0, int)
            n.done()
            try:
                return float(int(secs) + nanos / 1e9)
            except ValueError:
                raise BootstrapError(self.at(key), f"bad duration seconds {secs!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        m = _DURATION.match(str(value).strip())
        if not m:
            raise BootstrapError(self.at(key), f"bad duration {value!r} (expected e.g. \"0.25s\")")
        return float(m.group(1)) * _UNITS[m.group(2)]

    def enum(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """An enum field; Envoy's YAML loader takes any case ("strict_dns")."""
        value: str = self.get(key, default, str)
        up = value.upper()
        if up not in choices:
            raise BootstrapError(self.at(key), f"unsupported value {value!r} (supported: {', '.join(choices)})")
        return up

    def done(self) -> None:
        for key in self.data:
            if key not in self._seen:
                raise BootstrapError(self.at(key), "unsupported field")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _names(kind: type | tuple[type, ...] | None) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_kind(k()) if k is not None else "?" for k in kinds)
