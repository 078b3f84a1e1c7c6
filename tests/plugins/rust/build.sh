#!/usr/bin/env bash
# Rebuilds rustfilter.wasm (from src/lib.rs) and rustcallouts.wasm (from callouts/src/lib.rs),
# one Cargo workspace. Both are committed; tests never need Rust.
#
# Needs Debian's Rust toolchain (rustc 1.63, cargo 0.66 / "1.65") with the wasm32 std:
#     apt-get install -y rustc cargo libstd-rust-dev-wasm32
# This script installs nothing. It always uses Debian's /usr/bin/cargo and /usr/bin/rustc,
# even when a rustup toolchain is first on PATH (rustup's has no wasm32-wasi std here).
#
# Dependencies come from crates.io, pinned by the committed Cargo.lock to versions that
# still build with rustc 1.63 (proxy-wasm 0.2.2, hashbrown 0.14.5, ahash 0.8.11,
# zerocopy 0.7.35, once_cell 1.19.0, cfg-if 1.0.0, version_check 0.9.4, log 0.4.20).
# Cargo 0.66 only reaches crates.io through the git index on github.com by default; the
# HTTP ("sparse") index at index.crates.io is an unstable feature in that release, so it
# is switched on with -Z sparse-registry (the channel override lets a stable cargo accept
# -Z). Set RUSTFILTER_GIT_INDEX=1 to use the default git index instead.
set -euo pipefail
cd "$(dirname "$0")"

export PATH="/usr/bin:$PATH"
export RUSTC=/usr/bin/rustc
unset RUSTUP_TOOLCHAIN RUSTFLAGS CARGO_BUILD_TARGET || true
CARGO=/usr/bin/cargo

for tool in "$CARGO" "$RUSTC"; do
  if [ ! -x "$tool" ]; then
    echo "missing $tool: apt-get install -y rustc cargo libstd-rust-dev-wasm32" >&2
    exit 1
  fi
done
if [ ! -d /usr/lib/rustlib/wasm32-wasi ]; then
  echo "missing wasm32-wasi std: apt-get install -y libstd-rust-dev-wasm32" >&2
  exit 1
fi

cargo_flags=(--locked)
if [ "${RUSTFILTER_GIT_INDEX:-0}" != 1 ]; then
  export __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS=nightly
  cargo_flags=(-Z sparse-registry --locked)
fi

"$CARGO" "${cargo_flags[@]}" build --release --target wasm32-wasi --workspace
for plugin in rustfilter rustcallouts; do
  cp "target/wasm32-wasi/release/${plugin}.wasm" "${plugin}.wasm"
  chmod 644 "${plugin}.wasm"
  echo "built $(pwd)/${plugin}.wasm ($(wc -c < "${plugin}.wasm") bytes)"
done
