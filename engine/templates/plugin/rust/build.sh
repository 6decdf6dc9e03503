#!/bin/sh
# Builds {{name}}.wasm: `./build.sh` (Rust {{rust}} with the wasm32-wasip2
# target, pinned by rust-toolchain.toml; the .wasm is already a component).
set -eu
cd "$(dirname "$0")"
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/$(echo {{name}} | tr - _).wasm" {{name}}.wasm
echo "built {{name}}.wasm; check it: weft plugin check {{name}}.wasm --sandbox --emulator stripe"
