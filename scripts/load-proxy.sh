#!/usr/bin/env bash
# The proxy's memory under the issue's load, measured: CLIENTS boto3
# clients upload SIZE_MIB objects in parallel (multipart, 8 MiB parts, one
# part at a time each), then as many download random 1 MiB ranges of them
# while one client reads a 32 MiB range slowly, through `headroom proxy
# --memory MEMORY` in front of s3s-fs on loopback. Prints the proxy's idle
# and peak RSS (VmHWM), its peak reservation and SlowDowns, and checks that
# every byte came back and nothing was left half-written upstream.
#
#   scripts/load-proxy.sh [CLIENTS] [SIZE_MIB] [MEMORY]
#
# Defaults: 32 clients, 256 MiB objects, --memory 64MiB. Keep
# 2 * CLIENTS * SIZE_MIB free on disk (sources and the upstream's copy).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

clients=${1:-32}
size_mib=${2:-256}
memory=${3:-64MiB}

if [ ! -x target/pyclients/bin/python ] || ! target/pyclients/bin/python -c 'import boto3' 2>/dev/null; then
  python3 -m venv target/pyclients
  target/pyclients/bin/pip install -q --disable-pip-version-check awscli==1.45.11 boto3
fi
cargo build --release --locked -q -p headroom --bin headroom --example s3_test_server
bin=target/release
work=$(mktemp -d)
cleanup() {
  kill "$(cat "$work/proxy.pid" 2>/dev/null)" 2>/dev/null || true
  kill "$(cat "$work/up.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/up/vault" "$work/src"
for i in $(seq 0 $((clients - 1))); do
  head -c "$((size_mib << 20))" /dev/urandom > "$work/src/f$i"
done

proxy_stack "$bin" "$work" "$memory" load load-secret-0123456789
pid=$proxy_pid
rss() { awk -v f="$1" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }

AWS_CA_BUNDLE='' AWS_ACCESS_KEY_ID=load AWS_SECRET_ACCESS_KEY=load-secret-0123456789 AWS_DEFAULT_REGION=us-east-1 \
  target/pyclients/bin/python - "$proxy" "$work/src" "$clients" "$size_mib" "$pid" <<'PY'
import os, random, sys, threading, time
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

endpoint, src, clients, size_mib, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
size = size_mib << 20
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(
    s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 30},
    max_pool_connections=clients + 4))
def status(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
s3.put_object(Bucket="vault", Key="warm", Body=b"x")
print(f"proxy idle RSS {status('VmRSS:'):.1f} MiB")
errors = []
def run(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # a client that did not succeed, even retried
        errors.append(repr(e))
def parallel(fn, n, extra=()):
    threads = [threading.Thread(target=run, args=(fn, i)) for i in range(n)] + list(extra)
    for t in threads: t.start()
    for t in threads: t.join()

one_part_at_a_time = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                                    max_concurrency=1, use_threads=False)
def upload(i):
    s3.upload_file(f"{src}/f{i}", "vault", f"load/{i}", Config=one_part_at_a_time)
start = time.time()
parallel(upload, clients)
took = time.time() - start
print(f"uploads: {clients} x {size_mib} MiB in {took:.1f} s ({clients * size / took / 1e9:.2f} GB/s), "
      f"peak RSS so far {status('VmHWM:'):.1f} MiB")

def ranges(i):
    rng = random.Random(i)
    with open(f"{src}/f{i}", "rb") as f:
        for _ in range(16):
            at = rng.randrange(0, size - (1 << 20))
            got = s3.get_object(Bucket="vault", Key=f"load/{i}", Range=f"bytes={at}-{at + (1 << 20) - 1}")["Body"].read()
            f.seek(at)
            if got != f.read(1 << 20):
                raise AssertionError(f"object {i}: range at {at} came back other bytes")
def slow_reader():
    body = s3.get_object(Bucket="vault", Key="load/0", Range=f"bytes=0-{(32 << 20) - 1}")["Body"]
    with open(f"{src}/f0", "rb") as f:
        while True:
            chunk = body.read(256 << 10)
            if not chunk:
                break
            if chunk != f.read(len(chunk)):
                raise AssertionError("the slow reader got other bytes")
            time.sleep(0.05)
slow = threading.Thread(target=run, args=(slow_reader,))
start = time.time()
parallel(ranges, clients, [slow])
print(f"ranged reads: {clients} x 16 x 1 MiB beside a slow 32 MiB reader in {time.time() - start:.1f} s")
if errors:
    print("FAILED:", *errors[:5], sep="\n  ")
    sys.exit(1)
print("every client succeeded; every range was byte-identical")
PY

metrics=$(curl -s "$proxy/metrics")
metric() { awk -v m="$1" '$1 == m { print $2 }' <<< "$metrics"; }
echo "proxy peak RSS $(rss VmHWM:) MiB at --memory $memory;" \
  "peak reserved $(awk -v b="$(metric headroom_memory_peak_reserved_bytes)" 'BEGIN { printf "%.1f", b / 1048576 }') MiB;" \
  "SlowDowns $(metric headroom_proxy_slow_downs_total)"
left=$(find "$work/up" -name '.upload*' -o -name '*.upload-*' | wc -l)
whole=$(find "$work/up/vault/load" -type f | wc -l)
echo "upstream: $whole objects, $left unfinished uploads"
[ "$whole" = "$clients" ] && [ "$left" = 0 ]
