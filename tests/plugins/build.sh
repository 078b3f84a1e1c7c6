#!/usr/bin/env bash
# Rebuilds every committed test plugin: Go (Go SDK), AssemblyScript (proxy-runtime), Rust
# (proxy-wasm crate), WAT. Tests never need this: the built .wasm files are committed.
# Needs Go >= 1.24, Node/npm, Debian's rustc/cargo/libstd-rust-dev-wasm32 (see rust/build.sh)
# and the installed wasmtime wheel. Usage: tests/plugins/build.sh [go|as|rust|wat|example]...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(go as rust wat example)
for part in "${parts[@]}"; do
  case "$part" in
    go) "$here/go/build.sh" ;;
    as) "$here/as/build.sh" ;;
    rust) "$here/rust/build.sh" ;;
    wat) python3 "$here/wat/build.py" ;;
    example) "$here/../../examples/header_rewrite/build.sh" ;;
    *) echo "unknown part: $part (go, as, rust, wat, example)" >&2; exit 2 ;;
  esac
done
