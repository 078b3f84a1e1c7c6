"""Plugin logs: level names, the records a test reads, and Envoy's log prefix.

Each plugin logs to `pyproxywasm.plugin.<name or root_id or vm_id>` (start-up code, before
any root context, to `pyproxywasm.vm.<vm_id>`). Records carry Envoy's prefix as `extra`
fields (proxywasm_plugin, proxywasm_root_id, proxywasm_vm_id) and the context that logged
(proxywasm_context_id: an HTTP or TCP stream's id, or the root's); EnvoyFormatter writes
them as Envoy does: "wasm log <plugin> <root_id> <vm_id>: <message>", where an empty part is
left out with its space ("wasm log: <message>" for a plugin with none of the three).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ._binding import PY_LEVELS

#: Proxy-Wasm levels 0..5 by Python's names ("warn" is accepted as "warning").
LEVEL_NAMES = ("trace", "debug", "info", "warning", "error", "critical")
_PY_TO_NAME = dict(zip(PY_LEVELS, LEVEL_NAMES))
_ALIASES = {"warn": "warning", "fatal": "critical"}


def envoy_log_prefix(plugin: str = "", root_id: str = "", vm_id: str = "") -> str:
    """Envoy's prefix of a plugin's log line: "wasm log", each non-empty part of plugin
    name, root id and vm id after a space, then ": " (Envoy's PluginBase::log_prefix)."""
    return "wasm log" + "".join(" " + p for p in (plugin, root_id, vm_id) if p) + ": "


def level_name(level: str) -> str:
    """The canonical name of a level ("warn" -> "warning"); ValueError if unknown."""
    name = _ALIASES.get(level.lower(), level.lower())
    if name not in LEVEL_NAMES:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVEL_NAMES)})")
    return name


@dataclass(frozen=True)
class LogRecord:
    """One line a plugin logged."""

    logger: str
    level: str  # one of LEVEL_NAMES
    message: str
    plugin: str = ""
    root_id: str = ""
    vm_id: str = ""
    context_id: int = 0  # the stream (or root) whose callback logged; 0: VM start-up

    @property
    def envoy_prefix(self) -> str:
        return envoy_log_prefix(self.plugin, self.root_id, self.vm_id)


class LogCapture(logging.Handler):
    """Keeps every record of the pyproxywasm loggers, at every level."""

    def __init__(self) -> None:
        super().__init__(level=1)
        self.records: list[LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        level = _PY_TO_NAME.get(record.levelno, record.levelname.lower())
        self.records.append(LogRecord(
            record.name, level, record.getMessage(),
            getattr(record, "proxywasm_plugin", ""), getattr(record, "proxywasm_root_id", ""),
            getattr(record, "proxywasm_vm_id", ""), getattr(record, "proxywasm_context_id", 0)))

    def clear(self) -> None:
        self.records.clear()


class EnvoyFormatter(logging.Formatter):
    """Formats plugin records with Envoy's prefix ("wasm log <plugin> <root_id> <vm_id>: ",
    empty parts left out) in `%(envoy_prefix)s`; other records get an empty one."""

    def __init__(self, fmt: str = "[%(levelname)s] %(envoy_prefix)s%(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        if hasattr(record, "proxywasm_vm_id"):
            record.envoy_prefix = envoy_log_prefix(getattr(record, "proxywasm_plugin", ""),
                                                   getattr(record, "proxywasm_root_id", ""),
                                                   record.proxywasm_vm_id)
        else:
            record.envoy_prefix = ""
        return super().format(record)
