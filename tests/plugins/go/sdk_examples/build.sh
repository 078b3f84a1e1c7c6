#!/usr/bin/env bash
# Rebuilds the Go SDK's own example plugins from a checkout of proxy-wasm-go-sdk and copies
# each example's envoy.yaml (unmodified) beside its main.wasm. These are third-party test
# inputs (see README.md); their Go sources are not kept here.
#
#   tests/plugins/go/sdk_examples/build.sh PATH_TO_PROXY_WASM_GO_SDK_CHECKOUT
#
# Each example is built exactly as the SDK's Makefile (target build.examples) does, from
# the example's directory (its go.mod replaces the SDK with the checkout itself):
#     GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o main.wasm ./main.go
# except that -o points here instead of into the checkout. Needs Go >= 1.24 and the Go
# module proxy (for the examples' own dependencies).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -ne 1 ] || [ ! -d "$1/examples" ]; then
  echo "usage: $0 PATH_TO_PROXY_WASM_GO_SDK_CHECKOUT" >&2
  exit 2
fi
sdk="$(cd "$1" && pwd)"

commit="$(git -C "$sdk" rev-parse HEAD 2>/dev/null || echo unknown)"
cp "$sdk/LICENSE" "$here/LICENSE"
cp "$sdk/NOTICE" "$here/NOTICE"

cd "$sdk/examples"
find . -mindepth 2 -type f -name main.go | sort | while read -r main; do
  dir="${main%/main.go}"; dir="${dir#./}"          # e.g. helloworld, shared_queue/sender
  example="${dir%%/*}"
  mkdir -p "$here/$dir"
  (cd "$sdk/examples/$dir" &&
    env GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o "$here/$dir/main.wasm" ./main.go)
  cp "$sdk/examples/$example/envoy.yaml" "$here/$example/envoy.yaml"
  echo "built $dir/main.wasm ($(wc -c <"$here/$dir/main.wasm") bytes)"
done
echo "$commit" >"$here/COMMIT"
echo "from proxy-wasm-go-sdk $commit"
