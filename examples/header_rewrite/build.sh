#!/usr/bin/env bash
# Build header_rewrite.wasm, the default plugin of `pyproxywasm run`.
# The .wasm file is committed, so installing or using pyproxywasm never needs
# Go; run this only after changing main.go. Needs Go >= 1.24.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

out=../../pyproxywasm/examples/header_rewrite.wasm
mkdir -p "$(dirname "$out")"
GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 go build -buildmode=c-shared -trimpath \
    -buildvcs=false -ldflags='-s -w' -o "$out" .
echo "built $out ($(wc -c <"$out") bytes)"
