#!/usr/bin/env bash
# Rebuild the Go Proxy-Wasm test plugins (httpfilter.wasm, tcpfilter.wasm, callouts.wasm, builtins.wasm).
# The .wasm files are committed, so tests never need Go; run this only after
# changing the plugin sources. Needs Go >= 1.24 and the Go module proxy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 GOFLAGS=-mod=readonly
for plugin in httpfilter tcpfilter callouts builtins; do
    go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags='-s -w' \
        -o "${plugin}.wasm" "./${plugin}"
    echo "built ${plugin}.wasm ($(wc -c <"${plugin}.wasm") bytes)"
done
