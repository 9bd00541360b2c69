#!/usr/bin/env bash
# Throughput and CPU cost of the encrypting proxy: the same PUTs and GETs
# (headroom copy as the client, 8 MiB multipart parts) directly to an
# upstream S3 server (s3s-fs on loopback) and through `headroom proxy` in
# front of it. Prints GB/s for each, and the proxy's CPU seconds per GB.
#
#   scripts/bench-proxy.sh [FILES] [SIZE_MIB] [PROXY_MEMORY]
#
# Defaults: 8 files of 256 MiB, a proxy with --memory 256MiB. The upstream
# writes to a temporary directory: keep FILES * SIZE_MIB * 3 free.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

files=${1:-8}
size_mib=${2:-256}
memory=${3:-256MiB}
profile=${PROFILE:-release}

if [ "$profile" = release ]; then
  cargo build --release --locked -q -p headroom --bin headroom --example s3_test_server
fi
bin=target/$profile
work=$(mktemp -d)
cleanup() {
  kill "$(cat "$work/proxy.pid" 2>/dev/null)" 2>/dev/null || true
  kill "$(cat "$work/up.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/up/direct" "$work/up/vault" "$work/src"
for i in $(seq "$files"); do
  head -c "$((size_mib << 20))" /dev/urandom > "$work/src/f$i"
done
bytes=$((files * (size_mib << 20)))

# The upstream (exits when this script does) and the proxy.
proxy_stack "$bin" "$work" "$memory" bench bench-secret-0123456789

# CPU seconds (user + system) of a process so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# run NAME ENDPOINT KEY SECRET SRC DST: one copy, timed; prints a row.
run() {
  local name=$1 endpoint=$2 key=$3 secret=$4 src=$5 dst=$6
  local before after start end
  before=$(cpu_of "$proxy_pid")
  start=$(date +%s.%N)
  env AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="$endpoint" RUST_LOG=warn \
    "$bin/headroom" --memory 512MiB copy "$src" "$dst" > /dev/null
  end=$(date +%s.%N)
  after=$(cpu_of "$proxy_pid")
  awk -v n="$name" -v b="$bytes" -v s="$start" -v e="$end" -v c0="$before" -v c1="$after" 'BEGIN {
    gb = b / 1e9; t = e - s;
    printf "%-12s %8.2f s %8.2f GB/s   proxy CPU %6.2f s/GB\n", n, t, gb / t, (c1 - c0) / gb
  }'
}

echo "$files x $size_mib MiB, proxy --memory $memory, $(nproc) cores"
run "PUT direct" "$upstream" headroom-test-key headroom-test-secret "$work/src" s3://direct/run
run "PUT proxy" "$proxy" bench bench-secret-0123456789 "$work/src" s3://vault/run
run "GET direct" "$upstream" headroom-test-key headroom-test-secret s3://direct/run "$work/get-direct"
run "GET proxy" "$proxy" bench bench-secret-0123456789 s3://vault/run "$work/get-proxy"
cmp -s "$work/src/f1" "$work/get-proxy/f1" && echo "round trip through the proxy: identical"
echo "proxy peak RSS: $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$proxy_pid/status")"
