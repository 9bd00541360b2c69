#!/usr/bin/env bash
# Benchmark: headroom ingest of EVENTS events of 1 KiB (default 1,000,000)
# from standard input into a local redis-server, against redis-benchmark
# running XADD with the same 1 KiB payload on the same server as the
# ceiling. Prints events/s, MiB/s and peak RSS (GNU time's %M).
#
#   scripts/bench-ingest.sh [EVENTS]
#
# Installs redis-server and GNU time from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

events=${1:-1000000}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need redis-server redis-server
need redis-benchmark redis-tools
[ -x /usr/bin/time ] || need /usr/bin/time time

cargo build --release -q -p headroom --bin headroom
bin=$PWD/target/release/headroom
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
trap 'kill "$(cat "$work/redis.pid")" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "generating $events events of 1 KiB"
python3 - "$work/events" "$events" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    for i in range(1, n + 1):
        head = '{"seq":%d,"pad":"' % i
        f.write(head + "p" * (1024 - len(head) - 2) + '"}\n')
PY

payload=$(python3 -c 'print("p" * 1024)')
echo
echo "== ceiling: redis-benchmark XADD, 1 KiB, 50 clients, pipeline 64"
redis-benchmark -p "$port" -n "$events" -c 50 -P 64 -q XADD ceiling '*' data "$payload" \
  | tr "\r" "\n" | grep -i "requests per second" | tail -1 | sed "s/p\{100,\}/<1KiB>/"
redis-cli -p "$port" del ceiling >/dev/null
echo "== redis-benchmark XADD, 1 KiB, 1 client, pipeline 500 (one writer, as headroom)"
redis-benchmark -p "$port" -n "$events" -c 1 -P 500 -q XADD ceiling1 '*' data "$payload" \
  | tr "\r" "\n" | grep -i "requests per second" | tail -1 | sed "s/p\{100,\}/<1KiB>/"
redis-cli -p "$port" del ceiling1 >/dev/null

for run in "500 1" "500 4" "1000 4"; do
  read -r batch pipeline <<< "$run"
  redis-cli -p "$port" del bench >/dev/null
  echo "== headroom ingest --batch-size $batch --pipeline $pipeline --memory 64MiB (stdin)"
  /usr/bin/time -f "%e s wall, peak RSS %M KiB" "$bin" --memory 64MiB --log-format json \
    ingest --from - --to "redis://127.0.0.1:$port/bench" --batch-size "$batch" --pipeline "$pipeline" \
    < "$work/events" 2> "$work/err" | python3 -c '
import json, sys
s = json.loads(sys.stdin.read().strip().splitlines()[-1])
print("%d events in %.2f s: %.0f events/s, %.1f MiB/s, peak RSS %.1f MiB" % (
    s["events_written"], s["elapsed_s"], s["events_per_second"],
    s["bytes_per_second"] / 1048576, s["peak_rss_mb"]))'
  tail -1 "$work/err"
  echo "stream length: $(redis-cli -p "$port" xlen bench)"
done

# The AT Protocol firehose: the same number of #commit frames of about
# 1 KiB from a loopback event stream (the tests' server, replaying its
# window from cursor 0 as fast as headroom reads), stored as frames under
# IDs 0-SEQ with their t and seq fields.
cargo build --release -q -p headroom --example atproto_firehose
mkfifo "$work/hold"
"$PWD/target/release/examples/atproto_firehose" "$events" 1024 > "$work/firehose.url" 2> "$work/firehose.err" < "$work/hold" &
exec 9>"$work/hold"
for _ in $(seq 600); do [ -s "$work/firehose.url" ] && break; sleep 0.1; done
url=$(head -1 "$work/firehose.url")
cat "$work/firehose.err"
for run in "500 1" "500 4" "1000 4"; do
  read -r batch pipeline <<< "$run"
  redis-cli -p "$port" del frames >/dev/null
  echo "== headroom ingest --format atproto --batch-size $batch --pipeline $pipeline --memory 64MiB"
  /usr/bin/time -f "%e s wall, peak RSS %M KiB" "$bin" --memory 64MiB --log-format json \
    ingest --format atproto --start-cursor 0 --from "$url" --to "redis://127.0.0.1:$port/frames" \
    --batch-size "$batch" --pipeline "$pipeline" 2> "$work/err" > "$work/out" &
  ingest=$!
  start=$(date +%s.%N)
  while [ "$(redis-cli -p "$port" xlen frames)" -lt "$events" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  # SIGTERM to headroom itself (GNU time does not pass it on).
  pkill -TERM -P "$ingest"; wait "$ingest" || true
  python3 -c '
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
n, wall = int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
mib = s["bytes_written"] / 1048576
print("%d frames (%.0f MiB) in %.2f s from the start to the last in the stream: %.0f events/s, %.1f MiB/s, peak RSS %.1f MiB" % (
    n, mib, wall, n / wall, mib / wall, s["peak_rss_mb"]))' "$work/out" "$events" "$start" "$end"
  tail -1 "$work/err"
  echo "stream length: $(redis-cli -p "$port" xlen frames), last ID $(redis-cli -p "$port" xinfo stream frames | sed -n '/last-generated-id/{n;p}')"
done
exec 9>&-
