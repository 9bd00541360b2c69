#!/usr/bin/env bash
# Benchmark: the same copy tasks run by 1, 2 and 3 `headroom serve`
# replicas on one PostgreSQL database, against an S3 server that answers
# every request after an injected latency (so neither side is CPU-bound
# on a 2-core machine). Prints, per fleet size, the wall time until every
# task succeeded and the objects per second.
#
#   scripts/bench-fleet.sh [TASKS] [FILES_PER_TASK] [LATENCY_MS] [SHARD_OBJECTS]
#
# Defaults: 6 tasks of 300 files of 16 KiB, 20 ms per request, shards of
# 5,000 keys (the service's default). Each replica runs at most 2 shards
# at once (--max-running 2), each 8 transfers at once. One task cut into
# shards spreads over the fleet too:
#
#   scripts/bench-fleet.sh 1 6000 20 500     # one task, 12 shards
set -euo pipefail
cd "$(dirname "$0")/.."

tasks=${1:-6}
files=${2:-300}
latency=${3:-20}
shard_objects=${4:-5000}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
start_postgres
need curl curl

cargo build --release -q -p headroom --bin headroom --example s3_test_server
bin=$PWD/target/release/headroom
server_bin=$PWD/target/release/examples/s3_test_server

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work/src" "$tasks" "$files" <<'PY'
import os, sys
root, tasks, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for t in range(tasks):
    d = os.path.join(root, f"t{t}")
    os.makedirs(d)
    for i in range(files):
        with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
            f.write(os.urandom(16 << 10))
PY

mkdir -p "$work/root/bench"
# The server lives until this script's end (its stdin is a fifo we hold).
mkfifo "$work/hold"
"$server_bin" --root "$work/root" --every 1 --kinds "stall:$latency" --lose-completions 0 \
  > "$work/s3.out" < "$work/hold" &
pids+=($!)
exec 9>"$work/hold"
for _ in $(seq 50); do [ -s "$work/s3.out" ] && break; sleep 0.1; done
endpoint=$(head -1 "$work/s3.out")
export AWS_ACCESS_KEY_ID=headroom-test-key AWS_SECRET_ACCESS_KEY=headroom-test-secret
export AWS_ENDPOINT_URL=$endpoint AWS_REGION=us-east-1
echo "bench-fleet-token" > "$work/token"
token=$(cat "$work/token")
base_db=${HEADROOM_TEST_POSTGRES%/*}

printf '%-9s %10s %12s\n' replicas seconds objects/s
for n in 1 2 3; do
  db="bench_fleet_$$_$n"
  psql "$HEADROOM_TEST_POSTGRES" -qc "CREATE DATABASE $db"
  urls=()
  for r in $(seq "$n"); do
    out="$work/r$n-$r.out"
    "$bin" --memory 256MiB serve --db "$base_db/$db" --listen 127.0.0.1:0 \
      --token-file "$work/token" --replica-id "r$r" --max-running 2 --allow-path "$work" \
      --shard-objects "$shard_objects" \
      > "$out" 2> "$work/r$n-$r.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q '^listening on ' "$out" 2>/dev/null && break; sleep 0.1; done
    urls+=("$(sed -n 's/^listening on //p' "$out" | head -1)")
  done
  start=$(date +%s.%N)
  for t in $(seq 0 $((tasks - 1))); do
    curl -sf -H "authorization: Bearer $token" -H 'content-type: application/json' \
      -d "{\"kind\":\"copy\",\"source\":\"$work/src/t$t\",\"destination\":\"s3://bench/n$n/t$t\",\"memory\":\"64MiB\",\"concurrency\":8}" \
      "${urls[0]}/api/tasks" > /dev/null
  done
  while :; do
    done_n=$(curl -sf -H "authorization: Bearer $token" "${urls[0]}/api/tasks?status=succeeded&limit=1" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
    failed=$(curl -sf -H "authorization: Bearer $token" "${urls[0]}/api/tasks?status=failed&limit=1" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
    if [ "$failed" != 0 ]; then
      curl -sf -H "authorization: Bearer $token" "${urls[0]}/api/tasks?status=failed&limit=1" >&2
      exit 1
    fi
    [ "$done_n" = "$tasks" ] && break
    sleep 0.2
  done
  end=$(date +%s.%N)
  python3 -c "import sys; s=$end-$start; print(f'{$n:<9} {s:10.1f} {$tasks*$files/s:12.0f}')"
  # The fleet of this size stops; the next one starts on a fresh database.
  for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=("${pids[0]}")
  psql "$HEADROOM_TEST_POSTGRES" -qc "DROP DATABASE $db" || true
done
