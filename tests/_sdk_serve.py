"""`pyproxywasm serve` on an SDK example's own envoy.yaml, as the SDK's e2e setup starts
Envoy on it, and an httpbin.org stand-in for the upstreams that setup reaches. Shared by
tests/test_sdk_examples.py (the Go SDK's) and tests/test_rust_sdk_examples.py."""
from __future__ import annotations

import http.client
import http.server
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable

import pytest

from _servers import free_port


def eventually(check: Callable[[], bool], timeout: float, interval: float, what: Callable[[], str]) -> None:
    """The e2e test's require.Eventually: `check` true within `timeout`, tried every
    `interval`."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s; output:\n{what()}")
        time.sleep(interval)


def contains_all(text: str, expected: list[str]) -> bool:
    """The e2e test's checkMessage."""
    return all(e in text for e in expected)


# ---- an httpbin.org stand-in ----------------------------------------------------------------
class HttpBin(http.server.ThreadingHTTPServer):
    """What the examples ask of httpbin.org, answered as httpbin does: /uuid a fresh UUID
    as JSON, /bytes/<n> n random bytes, /headers the request's headers as JSON, /ip the
    client's address; every
    other path a small HTML page; all with status 200."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _HttpBinHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _HttpBinHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HttpBin

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        self.server.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        path = self.path.split("?")[0]
        if path == "/uuid":
            body, ctype = json.dumps({"uuid": str(uuid.uuid4())}).encode() + b"\n", "application/json"
        elif path.startswith("/bytes/"):
            body, ctype = os.urandom(int(path[7:])), "application/octet-stream"
        elif path == "/ip":
            body, ctype = json.dumps({"origin": self.client_address[0]}, indent=2).encode() + b"\n", "application/json"
        elif path == "/headers":
            names = {k: "-".join(w.capitalize() for w in k.split("-")) for k in self.headers}  # as httpbin shows them
            body = json.dumps({"headers": {names[k]: v for k, v in self.headers.items()}}, indent=2).encode() + b"\n"
            ctype = "application/json"
        else:
            body, ctype = b"<!DOCTYPE html>\n<html><body>httpbin</body></html>\n", "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer


# ---- serve, as the e2e test's startEnvoy --------------------------------------------------------
class Serve:
    """`pyproxywasm serve` on one example's envoy.yaml (paths, ports, addresses substituted):
    `code` maps the yaml's directory of the .wasm files to where they are here (a format
    string of `examples` and `name`),
    `upstream` names the address the httpbin stand-in replaces, `admin` the yaml's admin
    port (None: the yaml has no admin; readiness is then the first listener accepting)."""

    def __init__(self, examples: pathlib.Path, name: str, workdir: pathlib.Path, httpbin: HttpBin | None = None,
                 code: tuple[str, str] = ("./examples/", "{examples}/"), upstream: tuple[str, int] = ("httpbin.org", 80),
                 admin: int | None = 8001, edit: Callable[[str], str] | None = None,
                 ports: dict[int, int] | None = None) -> None:
        """edit: a change to the yaml's text before the substitutions (a test that must tell
        two clusters apart gives one its own port); ports: ports of the yaml that go to
        servers the test started."""
        self.examples, self.name, self.workdir, self.httpbin = examples, name, workdir, httpbin
        self.code, self.upstream, self.admin_in_yaml = code, upstream, admin
        self.edit, self.fixed_ports = edit, dict(ports or {})
        self.config = workdir / "envoy.yaml"
        self.stderr_path = workdir / "stderr.txt"
        for _ in range(3):
            self._start()
            # startEnvoy: the admin's /listeners answers 200 (5 s there; compiling an
            # example here can take longer on a loaded machine).
            if self._wait_listening(120):
                return
            # A free port taken by another process between our probe and serve's bind.
            self._err.close()
        pytest.fail(f"serve did not start:\n{self.stderr()}")

    def _start(self) -> None:
        text = (self.examples / self.name / "envoy.yaml").read_text()
        if self.edit is not None:
            text = self.edit(text)
        self.ports: dict[int, int] = dict(self.fixed_ports)
        if self.httpbin is not None:
            self.ports[self.upstream[1]] = self.httpbin.port

        def port(m: re.Match[str]) -> str:
            n = int(m.group(1))
            if n not in self.ports:
                self.ports[n] = free_port()
            return f"port_value: {self.ports[n]}"
        text = text.replace(self.code[0], self.code[1].format(examples=self.examples, name=self.name))
        text = re.sub(r"port_value: (\d+)", port, text)
        text = text.replace("address: 0.0.0.0", "address: 127.0.0.1")
        text = text.replace(f"address: {self.upstream[0]}\n", "address: 127.0.0.1\n")
        self.config.write_text(text)
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyproxywasm", "serve", str(self.config), "--concurrency", "1"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=self._err, text=True)
        self.admin = self.ports[self.admin_in_yaml] if self.admin_in_yaml else None
        self.first_port = next((p for n, p in self.ports.items()
                                if n != self.upstream[1] and n not in self.fixed_ports), None)

    def _wait_listening(self, timeout: float) -> bool:
        """True once /listeners answers 200; False if serve could not bind its ports."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self.stderr():
                    return False
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                if self.admin is None and self.first_port is None:
                    return True  # nothing listens (a bootstrap service only): its logs tell
                if self.admin is None:
                    socket.create_connection(("127.0.0.1", self.first_port), timeout=2).close()
                    return True
                status, _, body = request(self.admin, "/listeners", timeout=2)
                # ours, not another process's that got the port serve could not bind
                if status == 200 and self.proc.poll() is None and (
                        self.first_port is None or f":{self.first_port}\n".encode() in body):
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        err = self.stop()  # (a serve that never answered is not left running)
        pytest.fail(f"serve did not answer /listeners within {timeout}s:\n{err}")

    def port(self, n: int) -> int:
        """The port the example's port `n` became."""
        return self.ports[n]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.stderr()


def serving(tmp_path_factory, examples: pathlib.Path, **options):
    """A fixture body: yields start(name, httpbin=None) that starts serve on an example;
    on the way out stops each and checks it ended cleanly (exit 0, no traceback)."""
    started: list[Serve] = []

    def start(name: str, httpbin: HttpBin | None = None, **more) -> Serve:
        s = Serve(examples, name, tmp_path_factory.mktemp(name), httpbin, **{**options, **more})
        started.append(s)
        return s
    yield start
    ended = [(s, s.stop()) for s in started]  # every one stopped before any is judged
    for s, err in ended:
        assert s.proc.returncode == 0, err
        assert "Traceback" not in err, err


def request(port: int, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection, as Go's http.DefaultClient makes them (it sends
    Host as the URL gives it: localhost:<port>)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Host": f"localhost:{port}", "User-Agent": "Go-http-client/1.1"}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


def get_ok(port: int, path: str = "/", **kw) -> tuple[int, http.client.HTTPMessage, bytes] | None:
    """A request whose transport failure counts as "not yet" (the e2e loops' `err != nil`)."""
    try:
        return request(port, path, **kw)
    except OSError:
        return None


