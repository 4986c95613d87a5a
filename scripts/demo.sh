#!/bin/bash
# The main job on the built-in topology: builds rotor, boots User-Mode Linux
# (a real kernel with ESP), and runs a hub and 3 nodes rotating every second
# under 30 % control-message loss, printing the hub's live key-SPI table and
# a final line with rotations done and data packets lost.
#   ROTOR_DEMO_SECONDS=60 scripts/demo.sh   runs longer
set -eu
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: cargo not found: install Rust >= 1.88" >&2; exit 1; }
cargo build --release --workspace --quiet
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export ROTOR_BIN=$TARGET_DIR/release/rotor ROTOR_XFRMCTL=$TARGET_DIR/release/rotor-xfrmctl
exec scripts/uml-run.sh --timeout 300 scripts/demo-inside.sh
