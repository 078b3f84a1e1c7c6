#!/usr/bin/env bash
# Generates the API reference from the docstrings into build/api (not committed).
# Needs the dev extra: pip install -e '.[dev]'. Usage: docs/api.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/api}"
python -m pdoc -o "$out" pyproxywasm pyproxywasm.testing pyproxywasm.host pyproxywasm.http \
    pyproxywasm.tcp pyproxywasm.config pyproxywasm.abi pyproxywasm.state pyproxywasm.metrics \
    pyproxywasm.logs pyproxywasm.trace pyproxywasm.builtins pyproxywasm.envoy_properties \
    pyproxywasm.errors pyproxywasm.net
echo "API reference: $out/index.html"
