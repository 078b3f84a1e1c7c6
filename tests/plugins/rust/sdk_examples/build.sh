#!/usr/bin/env bash
# Rebuilds the Rust SDK's own example plugins from a checkout of proxy-wasm-rust-sdk and
# copies each example's envoy.yaml (unmodified) beside its .wasm. These are third-party
# test inputs (see README.md); their sources are not kept here.
#
#   tests/plugins/rust/sdk_examples/build.sh PATH_TO_PROXY_WASM_RUST_SDK_CHECKOUT
#
# Each example is built as the SDK's CI builds it, in the example's directory (its
# Cargo.toml takes proxy-wasm from the checkout itself):
#     cargo build --release --target=wasm32-wasip1
# Needs a current stable Rust (the examples use edition 2024) with the wasm32-wasip1
# target (`rustup target add wasm32-wasip1`) and crates.io.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -ne 1 ] || [ ! -d "$1/examples" ]; then
  echo "usage: $0 PATH_TO_PROXY_WASM_RUST_SDK_CHECKOUT" >&2
  exit 2
fi
sdk="$(cd "$1" && pwd)"
commit="$(git -C "$sdk" rev-parse HEAD 2>/dev/null || echo unknown)"
cp "$sdk/LICENSE" "$here/LICENSE"
# grpc_auth_random needs a gRPC upstream: not built here. envoy_tcp_routing needs protoc
# (Debian: protobuf-compiler) for its build.rs, which writes src/generated in the checkout.
for example in hello_world http_auth_random http_body http_config http_headers envoy_filter_metadata \
    envoy_tcp_routing; do
  (cd "$sdk/examples/$example" && cargo build --release --target=wasm32-wasip1 --quiet)
  crate="proxy_wasm_example_${example}"
  mkdir -p "$here/$example"
  cp "$sdk/examples/$example/target/wasm32-wasip1/release/$crate.wasm" "$here/$example/$crate.wasm"
  cp "$sdk/examples/$example/envoy.yaml" "$here/$example/envoy.yaml"
  echo "built $example/$crate.wasm ($(wc -c <"$here/$example/$crate.wasm") bytes)"
done
echo "$commit" >"$here/COMMIT"
echo "from proxy-wasm-rust-sdk $commit"
