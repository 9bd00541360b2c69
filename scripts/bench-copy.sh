#!/usr/bin/env bash
# Benchmark: headroom copy against rclone copy on the same generated data:
# local -> local, local -> S3, S3 -> S3 (server-side, and streamed with
# --no-server-side) and S3 -> local, S3 through the same loopback server
# (the s3s-fs test server, release build). Local -> local against cp -r is
# scripts/bench-copy-local.sh.
# Prints wall time, throughput and peak RSS (GNU time's %M) of each run.
#
#   scripts/bench-copy.sh [SMALL_FILES] [BIG_FILES] [BIG_MIB]
#
# Defaults: 20,000 small files (1-64 KiB) and 8 files of 256 MiB. Needs
# rclone and GNU time; installs them from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

small=${1:-20000}
big=${2:-8}
big_mib=${3:-256}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# rclone for the comparison, GNU time for wall time and peak RSS.
need rclone rclone
[ -x /usr/bin/time ] || need /usr/bin/time time

cargo build --release -q -p headroom --bin headroom --example s3_test_server
bin=target/release/headroom
server_bin=target/release/examples/s3_test_server

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "generating $small small files and $big x ${big_mib} MiB in $work/src" >&2
mkdir -p "$work/src/small" "$work/root/bench"
small_files "$work/src/small" "$small"
for i in $(seq 1 "$big"); do
  head -c "$((big_mib << 20))" /dev/urandom >"$work/src/big-$i.bin"
done
total=$(du -sb "$work/src" | cut -f1)

# The server lives until this script's end (its stdin is a fifo we hold).
mkfifo "$work/hold"
"$server_bin" --root "$work/root" <"$work/hold" >"$work/endpoint" &
server_pid=$!
exec 9>"$work/hold"
for _ in $(seq 1 50); do [ -s "$work/endpoint" ] && break; sleep 0.1; done
endpoint=$(head -1 "$work/endpoint")

export AWS_ACCESS_KEY_ID=headroom-test-key AWS_SECRET_ACCESS_KEY=headroom-test-secret
export AWS_ENDPOINT_URL=$endpoint AWS_REGION=us-east-1
unset AWS_CA_BUNDLE
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
export RCLONE_CONFIG_BENCH_ENDPOINT=$endpoint RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY RCLONE_CONFIG_BENCH_REGION=us-east-1
export RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true

run() {
  local name=$1
  shift
  local out="$work/time-$RANDOM"
  /usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>"$work/last.log" || {
    echo "$name failed:" >&2
    tail -20 "$work/last.log" >&2
    exit 1
  }
  read -r secs kib <"$out"
  awk -v n="$name" -v s="$secs" -v k="$kib" -v b="$total" \
    'BEGIN { printf "%-40s %8.2f s %9.1f MiB/s %8.1f MiB peak RSS\n", n, s, b / 1048576 / s, k / 1024 }'
}

echo "dataset: $small small + $big x ${big_mib} MiB = $((total >> 20)) MiB; server $endpoint"
run "headroom local->local (--memory 64MiB)" "$bin" --memory 64MiB copy "$work/src" "$work/ll-headroom"
rm -rf "$work/ll-headroom"
run "rclone   local->local (defaults)" rclone copy "$work/src" "$work/ll-rclone"
rm -rf "$work/ll-rclone"
run "headroom local->S3 (--memory 64MiB)" "$bin" --memory 64MiB copy "$work/src" s3://bench/headroom
run "rclone   local->S3 (defaults)" rclone copy "$work/src" bench:bench/rclone
run "headroom S3->S3 server-side" "$bin" --memory 64MiB copy s3://bench/headroom s3://bench/s2s-headroom
run "headroom S3->S3 --no-server-side" "$bin" --memory 64MiB copy --no-server-side s3://bench/headroom s3://bench/s2s-streamed
run "rclone   S3->S3 (server-side)" rclone copy bench:bench/rclone bench:bench/s2s-rclone
run "headroom S3->local (--memory 64MiB)" "$bin" --memory 64MiB copy s3://bench/headroom "$work/down-headroom"
# rclone's S3 -> local and re-run against s3s-fs take minutes (a HEAD per
# object for its mtime metadata); BENCH_RCLONE_ALL=1 runs them too.
if [ -n "${BENCH_RCLONE_ALL:-}" ]; then
  run "rclone   S3->local (defaults)" rclone copy bench:bench/rclone "$work/down-rclone"
fi
run "headroom re-run, all up to date" "$bin" --memory 64MiB copy "$work/src" s3://bench/headroom
if [ -n "${BENCH_RCLONE_ALL:-}" ]; then
  run "rclone   re-run, all up to date" rclone copy "$work/src" bench:bench/rclone
fi
diff -r "$work/src" "$work/down-headroom" && echo "headroom's download is identical to the source"
