#!/usr/bin/env bash
# Rebuilds every committed test plugin: Go (Go SDK), AssemblyScript (proxy-runtime), Rust
# (proxy-wasm crate), WAT. Tests never need this: the built .wasm files are committed.
# Needs Go >= 1.24, Node/npm, Debian's rustc/cargo/libstd-rust-dev-wasm32 (see rust/build.sh)
# and the installed wasmtime wheel.
# Usage: tests/plugins/build.sh [go|as|rust|wat|example|sdk_examples|rust_sdk_examples]...
# sdk_examples rebuilds the Go SDK's own examples (go/sdk_examples/) from a checkout of
# proxy-wasm-go-sdk named by GO_SDK_CHECKOUT, rust_sdk_examples the Rust SDK's
# (rust/sdk_examples/) from RUST_SDK_CHECKOUT; without those, the default run skips them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
parts=("$@")
if [ ${#parts[@]} -eq 0 ]; then
  parts=(go as rust wat example)
  if [ -n "${GO_SDK_CHECKOUT:-}" ]; then
    parts+=(sdk_examples)
  else
    echo "skipping sdk_examples: set GO_SDK_CHECKOUT to a proxy-wasm-go-sdk checkout to rebuild them" >&2
  fi
  if [ -n "${RUST_SDK_CHECKOUT:-}" ]; then
    parts+=(rust_sdk_examples)
  else
    echo "skipping rust_sdk_examples: set RUST_SDK_CHECKOUT to a proxy-wasm-rust-sdk checkout to rebuild them" >&2
  fi
fi
for part in "${parts[@]}"; do
  case "$part" in
    go) "$here/go/build.sh" ;;
    as) "$here/as/build.sh" ;;
    rust) "$here/rust/build.sh" ;;
    wat) python3 "$here/wat/build.py" ;;
    example) "$here/../../examples/header_rewrite/build.sh" ;;
    sdk_examples)
      if [ -z "${GO_SDK_CHECKOUT:-}" ]; then
        echo "sdk_examples: set GO_SDK_CHECKOUT to a proxy-wasm-go-sdk checkout" >&2; exit 2
      fi
      "$here/go/sdk_examples/build.sh" "$GO_SDK_CHECKOUT" ;;
    rust_sdk_examples)
      if [ -z "${RUST_SDK_CHECKOUT:-}" ]; then
        echo "rust_sdk_examples: set RUST_SDK_CHECKOUT to a proxy-wasm-rust-sdk checkout" >&2; exit 2
      fi
      "$here/rust/sdk_examples/build.sh" "$RUST_SDK_CHECKOUT" ;;
    *) echo "unknown part: $part (go, as, rust, wat, example, sdk_examples, rust_sdk_examples)" >&2; exit 2 ;;
  esac
done
