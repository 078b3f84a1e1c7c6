"""The command line: `pyproxywasm run` and `pyproxywasm inspect`."""
from __future__ import annotations

import subprocess
import sys

from pyproxywasm.cli import main

from conftest import GO_HTTP, WAT


def test_run_with_the_bundled_example(capsys):
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "header_rewrite.wasm (ABI 0.2.0)" in out
    assert "+ x-pyproxywasm: hello" in out
    assert "+ x-powered-by: pyproxywasm" in out
    assert "INFO     request GET /" in out


def test_run_shows_a_local_response(capsys):
    assert main(["run", "--config", '{"deny_path_prefix": "/admin"}', "--path", "/admin/x"]) == 0
    out = capsys.readouterr().out
    assert "local response from the plugin: 403" in out
    assert "forbidden by header_rewrite" in out


def test_run_shows_edits_body_and_logs(capsys):
    code = main(["run", str(GO_HTTP), "--config", "headers buffer", "--body", "hello",
                 "-H", "x-replace:a", "-H", "x-remove:b", "--response-header", "x-resp-remove:1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "~ x-replace: a -> replaced" in out
    assert "- x-remove" in out
    assert "request body: b'hello' -> b'HELLO'" in out
    assert "- x-resp-remove" in out
    assert "INFO     request body=hello" in out


def test_run_reports_a_bad_plugin(capsys):
    assert main(["run", str(WAT / "no_marker.wasm")]) == 2
    assert "missing or unknown Proxy-Wasm ABI version" in capsys.readouterr().err


def test_run_reports_a_failing_configuration(capsys):
    assert main(["run", "--config", "{not json"]) == 2
    assert "proxy_on_configure returned false" in capsys.readouterr().err


def test_inspect(capsys):
    assert main(["inspect", str(WAT / "trap.wasm")]) == 0
    out = capsys.readouterr().out
    assert "ABI version: 0.2.1" in out
    assert "env.proxy_get_header_map_value: func (i32, i32, i32, i32, i32) -> (i32)" in out
    assert "proxy_on_request_headers: func (i32, i32, i32) -> (i32)" in out


def test_module_entry_point(tmp_path):
    # run from elsewhere, so the installed package is the one imported
    out = subprocess.run([sys.executable, "-m", "pyproxywasm", "run"], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert "x-pyproxywasm: hello" in out
