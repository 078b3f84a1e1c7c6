#!/usr/bin/env bash
# Rebuilds every committed test plugin: Go (Go SDK), AssemblyScript (proxy-runtime), WAT.
# Tests never need this: the built .wasm files are committed. Needs Go >= 1.24, Node/npm
# and the installed wasmtime wheel. Usage: tests/plugins/build.sh [go|as|wat|example]...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(go as wat example)
for part in "${parts[@]}"; do
  case "$part" in
    go) "$here/go/build.sh" ;;
    as) "$here/as/build.sh" ;;
    wat) python3 "$here/wat/build.py" ;;
    example) "$here/../../examples/header_rewrite/build.sh" ;;
    *) echo "unknown part: $part (go, as, wat, example)" >&2; exit 2 ;;
  esac
done
