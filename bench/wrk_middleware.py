"""wrk against a plain app and the same app behind the middleware, in one run.

For each server (uvicorn for ASGI, with the smallest possible app and with the same
response from a FastAPI app; waitress for WSGI) and each filter ("none", "minimal",
"go"), a server process is started on a free 127.0.0.1 port, pinned to one core when the
machine has two or more (wrk gets another), and measured twice:
- throughput: wrk -c32 for the duration; req/s, and the server process's CPU time per
  request (from /proc). The filter's cost per request is the CPU difference with the plain
  app's; the req/s it costs on a core of its own is 1 - cpu(plain)/cpu(filter). Both are
  far less disturbed by other load on the machine than wall-clock req/s, which is also
  reported.
- latency: wrk -c1 (one request at a time); p50 and p99. The added latency is the p50
  difference with the plain app's.
Filters alternate within each round and the rounds repeat (medians are kept), so drift on
a shared machine hits every variant alike.

    python -m bench.wrk_middleware [--duration 5] [--rounds 3] [--out bench/results/middleware.json]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILTERS = ["none", "minimal", "go"]
OUT = ROOT / "bench" / "results" / "middleware.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


def start_server(kind: str, filter_name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYPROXYWASM_BENCH_FILTER=filter_name, PYTHONPATH=str(ROOT))
    if kind in ("asgi", "fastapi"):
        cmd = [sys.executable, "-m", "uvicorn", "--factory", f"bench.middleware_apps:{kind}",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
               "--no-access-log", "--lifespan", "on"]
        try:
            import httptools  # noqa: F401  (uvicorn's fast stack, when installed)
            import uvloop  # noqa: F401
            cmd += ["--loop", "uvloop", "--http", "httptools"]
        except ImportError:
            pass
    else:
        cmd = [sys.executable, "-m", "bench.middleware_apps", "wsgi", str(port)]
    proc = subprocess.Popen(_pin(0) + cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            raise RuntimeError(f"the {kind} server ({filter_name}) did not start")
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("the server did not start")


def ready(port: int, timeout: float = 60.0) -> None:
    """Until one request is answered (a WSGI host starts its plugins on the first one)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read a latency from {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def wrk(port: int, connections: int, duration: float, pid: int | None = None) -> dict[str, float]:
    cmd = _pin(1) + ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
                     f"http://127.0.0.1:{port}/"]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if not total:
        raise RuntimeError(f"wrk got no answer:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s*(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" not in lat or "99" not in lat:
        raise RuntimeError(f"cannot read wrk's latency distribution:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses:\n{out}")
    return {"rps": rps, "p50_us": _us(lat["50"]), "p99_us": _us(lat["99"]),
            "cpu_us": cpu / total * 1e6 if pid and total else 0.0}


def measure(kind: str, duration: float, rounds: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {f: [] for f in FILTERS}
    for r in range(rounds):
        for f in FILTERS:
            for attempt in (1, 2):  # one retry: a run can starve on a shared machine
                proc, port = start_server(kind, f)
                try:
                    ready(port)
                    wrk(port, 8, 1.0)  # warm-up
                    thr = wrk(port, 32, duration, proc.pid)
                    lat = wrk(port, 1, duration)
                    break
                except RuntimeError as e:
                    if attempt == 2:
                        raise
                    print(f"{kind} {f}: run lost ({str(e).splitlines()[0]}), once more", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(10)
            runs[f].append({"rps": thr["rps"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
                            "rps_c1": lat["rps"], "cpu_us": thr["cpu_us"]})
            print(f"{kind} round {r + 1} {f:8s} {thr['rps']:9.0f} req/s  cpu {thr['cpu_us']:6.1f} us/req  "
                  f"p50 {lat['p50_us']:7.1f} us  p99 {lat['p99_us']:7.1f} us", flush=True)
    return {f: {k: statistics.median(x[k] for x in v) for k in v[0]} for f, v in runs.items()}


def summarize(results: dict[str, dict[str, dict[str, float]]]) -> dict:
    out = {}
    for kind, res in results.items():
        plain = res["none"]
        rows = {}
        for f in FILTERS:
            x = res[f]
            rows[f] = dict(x)
            rows[f]["rps_drop_pct"] = 100.0 * (1 - x["rps"] / plain["rps"])
            rows[f]["cost_us"] = (1 / x["rps"] - 1 / plain["rps"]) * 1e6
            rows[f]["added_p50_us"] = x["p50_us"] - plain["p50_us"]
            # The server's own CPU time per request: what the filter costs, much less
            # disturbed by other load on the machine than wall-clock req/s.
            rows[f]["cpu_added_us"] = x["cpu_us"] - plain["cpu_us"]
            rows[f]["cpu_drop_pct"] = 100.0 * (1 - plain["cpu_us"] / x["cpu_us"]) if x["cpu_us"] else 0.0
        out[kind] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="asgi,fastapi,wsgi")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    a = ap.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install -y wrk)")
    from . import middleware_inproc

    inproc = middleware_inproc.measure(rounds=a.rounds)
    for kind, rows in inproc.items():
        print(f"in-process {kind}: " + ", ".join(f"{f} {us:.1f} us" for f, us in rows.items()), flush=True)
    results = {k: measure(k, a.duration, a.rounds) for k in a.servers.split(",")}
    data = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {"cores": os.cpu_count(), "load_avg": os.getloadavg(),
                        "python": sys.version.split()[0]},
            "duration_s": a.duration, "rounds": a.rounds,
            "raw": results, "summary": summarize(results), "inproc": inproc}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(data, indent=2))
    print(f"wrote {a.out}")
    return data


if __name__ == "__main__":
    main()
