#!/usr/bin/env bash
# Rebuilds the AssemblyScript test plugins:
#   abi020/ (@solo-io/proxy-runtime 0.1.8, assemblyscript 0.14.9) -> as_abi020.wasm
#   abi010/ (@solo-io/proxy-runtime 0.1.1, assemblyscript 0.9.4)  -> as_abi010.wasm
# Needs node + npm and access to the npm registry. Tests only use the committed .wasm files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

build() {
    local dir="$1" out="$2"
    echo "== $dir -> $out"
    (
        cd "$dir"
        if [[ -f package-lock.json ]]; then
            npm ci --no-audit --no-fund
        else
            npm install --no-audit --no-fund
        fi
        # Keep -b relative: asc 0.9 resolves it against the base directory.
        npx --no-install asc assembly/index.ts -b plugin.wasm --use abort=abort_proc_exit --optimize
    )
    cp "$dir/plugin.wasm" "$out"
    rm -f "$dir/plugin.wasm"
    echo "   $(wc -c < "$out") bytes"
}

build abi020 as_abi020.wasm
build abi010 as_abi010.wasm
