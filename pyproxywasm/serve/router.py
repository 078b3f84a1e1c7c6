"""Route selection as Envoy does it: the virtual host by the request's authority (exact,
then the longest `*suffix`, then the longest `prefix*`, then `*`), then the first route
of that host whose path and header matchers all match. Routing runs after the HTTP
filters (the router is the last filter), so it sees the authority and path they set."""
from __future__ import annotations

from typing import Sequence

from .config import Route, VirtualHost


class Router:
    def __init__(self, virtual_hosts: Sequence[VirtualHost]) -> None:
        self.exact: dict[str, VirtualHost] = {}
        self.suffixes: list[tuple[str, VirtualHost]] = []
        self.prefixes: list[tuple[str, VirtualHost]] = []
        self.default: VirtualHost | None = None
        for vh in virtual_hosts:
            for d in vh.domains:
                if d == "*":
                    self.default = self.default or vh
                elif d.startswith("*"):
                    self.suffixes.append((d[1:], vh))
                elif d.endswith("*"):
                    self.prefixes.append((d[:-1], vh))
                else:
                    self.exact.setdefault(d, vh)
        # Longest wildcard first; Envoy requires the wildcard to match at least one character.
        self.suffixes.sort(key=lambda x: -len(x[0]))
        self.prefixes.sort(key=lambda x: -len(x[0]))

    def virtual_host(self, authority: str) -> VirtualHost | None:
        # As Envoy without strip_any_host_port: a port in the authority is part of the name.
        host = authority.lower()
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        for suffix, vh in self.suffixes:
            if host.endswith(suffix) and len(host) > len(suffix):
                return vh
        for prefix, vh in self.prefixes:
            if host.startswith(prefix) and len(host) > len(prefix):
                return vh
        return self.default

    def route(self, authority: str, path: str, headers: dict[str, list[str]]) -> Route | None:
        vh = self.virtual_host(authority)
        if vh is None:
            return None
        bare = path.split("?", 1)[0]
        for r in vh.routes:
            m = r.match
            if m.prefix is not None:
                ok = bare.startswith(m.prefix) if m.case_sensitive else bare.lower().startswith(m.prefix.lower())
            elif m.path is not None:
                ok = bare == m.path if m.case_sensitive else bare.lower() == m.path.lower()
            else:
                ok = m.regex is not None and m.regex.fullmatch(bare) is not None
            if ok and all(h.matches(headers.get(h.name, [])) for h in m.headers):
                return r
        return None
