#!/usr/bin/env bash
# Rebuilds the AssemblyScript test plugins:
#   abi020/ (@solo-io/proxy-runtime 0.1.8, assemblyscript 0.14.9) -> as_abi020.wasm
#   abi010/ (@solo-io/proxy-runtime 0.1.1, assemblyscript 0.9.4)  -> as_abi010.wasm
#   callouts020/ (proxy-runtime 0.1.8, assemblyscript 0.14.9)    -> as_http_call.wasm, as_grpc_call.wasm
# Needs node + npm and access to the npm registry. Tests only use the committed .wasm files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# build DIR OUT [ENTRY]: compiles DIR/assembly/ENTRY (default index.ts) into OUT.
# npm ci runs once per directory and run.
declare -A installed=()
build() {
    local dir="$1" out="$2" entry="${3:-index.ts}"
    echo "== $dir/assembly/$entry -> $out"
    local install=1
    [[ -n "${installed[$dir]:-}" ]] && install=0
    installed[$dir]=1
    (
        cd "$dir"
        if [[ $install == 1 ]]; then
            if [[ -f package-lock.json ]]; then
                npm ci --no-audit --no-fund
            else
                npm install --no-audit --no-fund
            fi
        fi
        # Keep -b relative: asc 0.9 resolves it against the base directory.
        npx --no-install asc "assembly/$entry" -b plugin.wasm --use abort=abort_proc_exit --optimize
    )
    cp "$dir/plugin.wasm" "$out"
    rm -f "$dir/plugin.wasm"
    echo "   $(wc -c < "$out") bytes"
}

build abi020 as_abi020.wasm
build abi010 as_abi010.wasm
build callouts020 as_http_call.wasm http_call.ts
build callouts020 as_grpc_call.wasm grpc_call.ts
