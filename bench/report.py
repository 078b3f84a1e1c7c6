"""One command for the middleware figures: runs the wrk benchmark (bench/wrk_middleware.py),
then writes the table into bench/README.md and a PNG plot beside the published numbers of
Envoy-based meshes.

    python -m bench.report                      # measure, then write
    python -m bench.report --from bench/results/middleware.json   # write from a saved run
"""
from __future__ import annotations

import argparse
import json
import pathlib

from . import wrk_middleware

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
PNG = ROOT / "bench" / "middleware.png"
START, END = "<!-- middleware figures: start (python -m bench.report) -->", "<!-- middleware figures: end -->"

# Published per-request costs of Wasm filters in Envoy-based proxies (for scale).
PUBLISHED_US = {"Istio (Envoy + Wasm stats filter)": 81.0, "MOSN (Go Proxy-Wasm, one header)": 61.6}
PUBLISHED_DROP = {"Istio (Envoy + Wasm stats filter)": 10.9}
TARGET_US = 15.0
TARGET_DROP = {"minimal": 5.0, "go": 10.0}
LABEL = {"minimal": "minimal filter (WAT)", "go": "Go SDK filter (header_rewrite)"}
SERVER = {"asgi": "ASGI (uvicorn)", "fastapi": "ASGI (uvicorn), FastAPI app",
          "wsgi": "WSGI (waitress, 1 thread)"}


def table(data: dict) -> str:
    s = data["summary"]
    m = data["machine"]
    lines = [
        f"Measured {data['when']} on {m['cores']} cores shared with other work (load average "
        f"{m['load_avg'][0]:.1f} at the end), Python {m['python']}; wrk {data['duration_s']:.0f} s "
        f"per run, {data['rounds']} alternating rounds, medians. The server is one process; "
        "its CPU time per request comes from /proc.",
        "",
        "| server | filter | CPU per request | added by the filter | req/s cost, CPU-bound | "
        "req/s (c=32, wall) | req/s cost, wall | p50 / p99 (c=1) | p50 added |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, rows in s.items():
        for f, r in rows.items():
            plain = f == "none"
            name = "plain app" if plain else LABEL[f]
            target = "" if plain else f" (target ≤ {TARGET_DROP[f]:.0f}%)"
            lines.append(
                f"| {SERVER[kind]} | {name} | {r['cpu_us']:.1f} µs | "
                f"{'' if plain else '%+.1f µs' % r['cpu_added_us']} | "
                f"{'' if plain else '%.1f%%' % r['cpu_drop_pct'] + target} | {r['rps']:.0f} | "
                f"{'' if plain else '%.1f%%' % r['rps_drop_pct']} | "
                f"{r['p50_us']:.0f} / {r['p99_us']:.0f} µs | "
                f"{'' if plain else '%+.0f µs' % r['added_p50_us']} |")
    inproc = data.get("inproc")
    if inproc:
        lines += ["", "The middleware alone, without a server (the app called in-process; "
                  "`bench/middleware_inproc.py`), CPU time per request:", "",
                  "| | plain app | + minimal filter | + Go SDK filter |", "|---|---|---|---|"]
        for kind, rows in inproc.items():
            lines.append(f"| {SERVER[kind].split(' ')[0]} | {rows['none']:.1f} µs | "
                         f"{rows['minimal']:.1f} µs (+{rows['minimal'] - rows['none']:.1f}) | "
                         f"{rows['go']:.1f} µs (+{rows['go'] - rows['none']:.1f}) |")
    lines += ["", "| published, for scale | added per request | req/s cost |", "|---|---|---|"]
    for name, us in PUBLISHED_US.items():
        drop = PUBLISHED_DROP.get(name)
        lines.append(f"| {name} | +{us} µs | {'−%.1f%%' % drop if drop else ''} |")
    return "\n".join(lines)


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = data["summary"]
    ours = [(f"{SERVER[k]}: {LABEL[f]}", r) for k, rows in s.items() for f, r in rows.items()
            if f != "none"]
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 8))
    inproc = data.get("inproc") or {}
    alone = [(f"{k.upper()} middleware alone: {LABEL[f]}", rows[f] - rows["none"])
             for k, rows in inproc.items() for f in ("minimal", "go")]
    names = [n for n, _ in ours] + [n for n, _ in alone] + list(PUBLISHED_US)
    vals = ([r["cpu_added_us"] for _, r in ours] + [v for _, v in alone]
            + list(PUBLISHED_US.values()))
    colors = ["tab:blue"] * len(ours) + ["tab:green"] * len(alone) + ["tab:gray"] * len(PUBLISHED_US)
    a.barh(names, vals, color=colors)
    a.axvline(TARGET_US, color="tab:red", linestyle="--", label=f"target {TARGET_US:.0f} µs")
    for y, v in enumerate(vals):
        a.text(v, y, f" {v:.1f}", va="center")
    a.set_xlabel("µs added per request (ours: server CPU per request; published: latency)")
    a.invert_yaxis()
    a.legend(loc="lower right")
    names = [n for n, _ in ours] + list(PUBLISHED_DROP)
    cpu = [r["cpu_drop_pct"] for _, r in ours] + list(PUBLISHED_DROP.values())
    wall = [r["rps_drop_pct"] for _, r in ours] + [None] * len(PUBLISHED_DROP)
    ys = range(len(names))
    b.barh([y - 0.2 for y in ys], cpu, height=0.4,
           color=["tab:blue"] * len(ours) + ["tab:gray"] * len(PUBLISHED_DROP),
           label="req/s lost, CPU-bound (ours) / published")
    b.barh([y + 0.2 for y, w in zip(ys, wall) if w is not None], [w for w in wall if w is not None],
           height=0.4, color="tab:cyan", label="req/s lost, wall clock (shared machine)")
    for y, v in zip(ys, cpu):
        b.text(v, y - 0.2, f" {v:.1f}%", va="center")
    b.set_yticks(list(ys), names)
    b.axvline(5, color="tab:red", linestyle="--", label="target 5% (minimal)")
    b.axvline(10, color="tab:orange", linestyle="--", label="target 10% (Go)")
    b.set_xlabel("req/s lost to the filter (%), against the same server's plain app")
    b.invert_yaxis()
    b.legend(loc="lower right", fontsize=7, ncol=2, framealpha=0.95)
    fig.suptitle("pyproxywasm middleware vs a plain app (wrk, one run), beside published Envoy-mesh figures")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_readme(text: str) -> None:
    readme = README.read_text()
    block = f"{START}\n{text}\n{END}"
    if START in readme:
        head, rest = readme.split(START, 1)
        readme = head + block + rest.split(END, 1)[1]
    else:
        readme = readme.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(readme)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", type=pathlib.Path,
                    help="write from this saved run instead of measuring")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--png", type=pathlib.Path, default=PNG)
    a = ap.parse_args(argv)
    if a.source:
        data = json.loads(a.source.read_text())
    else:
        data = wrk_middleware.main(["--duration", str(a.duration), "--rounds", str(a.rounds)])
    text = table(data)
    write_readme(text)
    plot(data, a.png)
    print(text)
    print(f"wrote {README} and {a.png}")


if __name__ == "__main__":
    main()
