#!/usr/bin/env bash
# AES-256-GCM throughput by frame size (seal and open in place, one core),
# the measurement behind proxy::envelope::FRAME.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -q -p headroom --example frame_bench
