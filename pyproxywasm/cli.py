"""Command line: `pyproxywasm serve [CONFIG]` runs a proxy from an Envoy bootstrap (the
bundled example without one); `pyproxywasm run` pushes one request/response through a
plugin and shows what it changed and logged; `pyproxywasm inspect` shows a module's ABI,
imports, exports."""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from . import module
from .errors import ProxyWasmError
from .pairs import Headers
from .testing import PluginHarness

EXAMPLE = pathlib.Path(__file__).parent / "examples" / "header_rewrite.wasm"


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep and text.startswith(":"):
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    if name == "" and sep:  # a pseudo-header: ":path:/x"
        name2, sep2, value = value.partition(":")
        if not sep2:
            raise argparse.ArgumentTypeError(f"expected :NAME:VALUE, got {text!r}")
        name = ":" + name2
    elif not sep:
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip().lower(), value.strip()


def _text_or_file(value: str) -> str:
    """A literal, or @path to read it from a file."""
    if value.startswith("@"):
        return pathlib.Path(value[1:]).read_text()
    return value


def _diff(before: Sequence[tuple[str, str]], after: Headers) -> list[str]:
    lines: list[str] = []
    old = Headers((k.lower(), v) for k, v in before)
    old_names, after_names = {k for k, _ in old}, {k for k, _ in after}
    for k, v in after:
        if k not in old_names:
            lines.append(f"  + {k}: {v}")
        elif old.get_all(k) != after.get_all(k) and f"  ~ {k}" not in [l.split(":")[0] for l in lines]:
            lines.append(f"  ~ {k}: {', '.join(old.get_all(k))} -> {', '.join(after.get_all(k))}")
    for k, _ in old:
        if k not in after_names and f"  - {k}" not in lines:
            lines.append(f"  - {k}")
    return lines or ["  (unchanged)"]


def cmd_run(args: argparse.Namespace) -> int:
    plugin = args.plugin or EXAMPLE
    request = [(":method", args.method), (":path", args.path), (":authority", args.authority),
               (":scheme", "http")] + list(args.header)
    response = [(":status", str(args.status))] + list(args.response_header)
    body = args.body.encode() if args.body is not None else b""
    rbody = args.response_body.encode() if args.response_body is not None else b""
    with PluginHarness(plugin, configuration=_text_or_file(args.config),
                       vm_configuration=_text_or_file(args.vm_config), vm_id=args.vm_id,
                       root_id=args.root_id, name=args.name or pathlib.Path(plugin).stem) as h:
        print(f"plugin: {plugin} (ABI {h.plugin.vm.abi_version})")
        s = h.http(properties={"source.address": "127.0.0.1:50000", "source.port": 50000,
                               "destination.address": "127.0.0.1:8080", "destination.port": 8080,
                               "request.protocol": "HTTP/1.1"})
        s.send_request_headers(request, end_stream=not body)
        if body:
            s.send_request_body(body, end_stream=True)
        lr = s.local_response
        if lr is None and s.request_paused:
            print("request: paused by the plugin (no continue arrived)")
        elif lr is None:
            print("request headers sent upstream:")
            print("\n".join(_diff(request, s.request_headers)))
            forwarded = s.take_request_body()
            if body and forwarded != body:
                print(f"request body: {body!r} -> {forwarded!r}")
            s.send_response_headers(response, end_stream=not rbody)
            if rbody:
                s.send_response_body(rbody, end_stream=True)
        if lr is not None:
            print(f"local response from the plugin: {lr.status}"
                  + (f" ({lr.details})" if lr.details else ""))
            print("response headers sent to the client:")
            for k, v in s.response_headers:
                print(f"  {k}: {v}")
            out = s.take_response_body()
            if out:
                print(f"response body: {out!r}")
        else:
            print("response headers sent to the client:")
            print("\n".join(_diff(response, s.response_headers)))
            out = s.take_response_body()
            if rbody and out != rbody:
                print(f"response body: {rbody!r} -> {out!r}")
        s.finish()
        records = h.capture.records
        print("logs:" if records else "logs: (none)")
        for r in records:
            print(f"  {r.level.upper():8} {r.message}")
        return 1 if s.failed else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    wasm = module.read_code(args.plugin)
    spec = module.inspect(wasm)
    print(f"ABI version: {spec.abi_version}")
    print(f"sha256: {spec.digest}")
    print(f"imports ({len(spec.info.imports)}):")
    for i in spec.info.imports:
        print(f"  {i.module}.{i.name}: {i.kind} {i.type or ''}".rstrip())
    print(f"exports ({len(spec.info.exports)}):")
    for e in spec.info.exports:
        print(f"  {e.name}: {e.kind} {e.type or ''}".rstrip())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from . import serve
    from .serve import shared_state, supervisor

    from .logs import EnvoyFormatter

    # Plugin lines carry Envoy's "wasm log <plugin> <root_id> <vm_id>: " before the message.
    fmt = "[%(asctime)s][%(threadName)s][%(levelname)s][%(name)s] %(envoy_prefix)s%(message)s"
    if args.processes > 1:
        fmt = "[%(asctime)s][%(process)d][%(threadName)s][%(levelname)s][%(name)s] %(envoy_prefix)s%(message)s"
    handler = logging.StreamHandler()
    handler.setFormatter(EnvoyFormatter(fmt))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    path = args.config or serve.DEFAULT_CONFIG
    bootstrap = serve.load(path)
    state = shared_state.parse(args.shared_state, args.processes)
    runner: serve.Server | supervisor.Supervisor
    if args.processes > 1:
        runner = supervisor.Supervisor(str(path), bootstrap, args.processes, concurrency=args.concurrency,
                                       shared_state=state, singletons=args.singletons,
                                       log_level=args.log_level)
    else:
        runner = serve.Server(bootstrap, concurrency=args.concurrency,
                              shared_state=state.backend() if state is not None else None)

    def announce(s: "serve.Server | supervisor.Supervisor") -> None:
        workers = f"{args.concurrency} worker{'s' if args.concurrency > 1 else ''}"
        if args.processes > 1:
            workers = f"{args.processes} processes × {workers}"
        print(f"pyproxywasm serve: {path} ({workers})")
        if state is not None:
            print(f"  shared state: {state.describe()}")
        for name, lst in zip(bootstrap.listener_keys(), bootstrap.listeners):
            port = s.ports.get(name, lst.port)
            kind = "tcp" if isinstance(lst, serve.config.TcpListener) else "http"
            print(f"  {name}: {kind}://{lst.host}:{port}")
        if s.admin_port is not None and bootstrap.admin is not None:
            print(f"  admin: http://{bootstrap.admin[0]}:{s.admin_port}/stats/prometheus")
        first = next((lst for lst in bootstrap.listeners if isinstance(lst, serve.config.HttpListener)), None)
        if first is not None:
            host = "127.0.0.1" if first.host in ("0.0.0.0", "::") else first.host
            print(f"try: curl -i http://{host}:{s.ports.get(first.name or 'listener', first.port)}/")
        print("Ctrl-C to stop", flush=True)

    try:
        runner.run(announce)
    finally:
        if args.processes == 1 and state is not None and state.kind == "shm":
            shared_state.remove_segment(state.segment)  # (the supervisor removes its own)
    return 0


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyproxywasm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    srv = sub.add_parser("serve", help="run a proxy from an Envoy bootstrap (YAML/JSON)")
    srv.add_argument("config", nargs="?", help="Envoy bootstrap file (default: the bundled example: "
                     "header_rewrite on 127.0.0.1:10000)")
    srv.add_argument("--concurrency", type=_at_least_one, default=1, metavar="N",
                     help="worker threads (per process), each with its own event loop, listeners and VMs "
                     "(default 1)")
    srv.add_argument("--processes", type=_at_least_one, default=1, metavar="N",
                     help="worker processes under a supervisor, each with --concurrency threads, on the same "
                     "ports (SO_REUSEPORT); admin sums their metrics (default 1: one process, no supervisor)")
    srv.add_argument("--shared-state", metavar="WHERE",
                     help="where shared data and queues live: memory (each process its own), shm (one "
                     "shared-memory segment; the default with --processes > 1) or redis://host:port/db")
    srv.add_argument("--singletons", choices=["per-process", "once"], default="per-process",
                     help="with --processes > 1: bootstrap_extensions services in every process, as every "
                     "Envoy process runs its own (default), or once, in worker process 0")
    srv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="log level of the proxy and its plugins (default info, as Envoy)")
    srv.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="push one request/response through a plugin")
    run.add_argument("plugin", nargs="?", help="a .wasm plugin (default: the bundled header_rewrite example)")
    run.add_argument("--config", default="", help="plugin configuration (or @file)")
    run.add_argument("--vm-config", default="", help="VM configuration (or @file)")
    run.add_argument("--vm-id", default="")
    run.add_argument("--root-id", default="")
    run.add_argument("--name", default="")
    run.add_argument("--method", default="GET")
    run.add_argument("--path", default="/")
    run.add_argument("--authority", default="localhost")
    run.add_argument("--header", "-H", action="append", type=_header, default=[],
                     metavar="NAME:VALUE", help="request header (repeatable)")
    run.add_argument("--body", help="request body")
    run.add_argument("--status", type=int, default=200, help="upstream response status")
    run.add_argument("--response-header", action="append", type=_header, default=[],
                     metavar="NAME:VALUE", help="upstream response header (repeatable)")
    run.add_argument("--response-body", help="upstream response body")
    run.set_defaults(func=cmd_run)

    ins = sub.add_parser("inspect", help="print a module's ABI version, imports and exports")
    ins.add_argument("plugin")
    ins.set_defaults(func=cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ProxyWasmError, OSError) as e:
        print(f"pyproxywasm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
