#!/usr/bin/env bash
# Benchmark: headroom purge against find -delete and rclone delete on a
# generated tree of FILES files (default 1,000,000) whose mtimes spread over
# 90 days; each tool gets a freshly generated identical tree and deletes the
# files older than 30 days. Prints wall time, files/s and peak RSS (GNU
# time's %M), and checks that every tool left the same files.
#
#   scripts/bench-purge.sh [FILES] [DIR]
#
# DIR (default: a temp dir) picks the filesystem. Needs rclone and GNU time;
# installs them from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

files=${1:-1000000}
base=${2:-$(mktemp -d)}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# rclone for the comparison, GNU time for wall time and peak RSS.
need rclone rclone
[ -x /usr/bin/time ] || need /usr/bin/time time

cargo build --release -q -p headroom --bin headroom
bin=$PWD/target/release/headroom
trap 'rm -rf "$base/tree" "$base"/left-*' EXIT

generate() {
  rm -rf "$base/tree"
  python3 - "$base/tree" "$files" <<'EOF'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
now = time.time()
per_dir = 1000
for d in range((n + per_dir - 1) // per_dir):
    sub = os.path.join(root, f"{d % 100:02}", f"{d // 100:04}")
    os.makedirs(sub, exist_ok=True)
    for i in range(d * per_dir, min(n, (d + 1) * per_dir)):
        p = os.path.join(sub, f"f{i}.log")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * (i % 512))
        os.close(fd)
        # Ages spread over 0..90 days; never within 10 minutes of 30 days.
        age = (i * 7919 % (90 * 1440)) * 60 + 30
        if abs(age - 30 * 86400) < 600:
            age += 1200
        os.utime(p, (now - age, now - age))
EOF
  sync
}

run() {
  local name=$1
  shift
  generate
  local out
  out=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>"$base/last.log" || {
    echo "$name failed:" >&2
    tail -20 "$base/last.log" >&2
    exit 1
  }
  read -r secs kib <"$out"
  (cd "$base/tree" && find . -type f | sort) >"$base/left-$name"
  awk -v n="$name" -v s="$secs" -v k="$kib" -v f="$files" \
    'BEGIN { printf "%-34s %8.2f s %10.0f files/s %8.1f MiB peak RSS\n", n, s, f / s, k / 1024 }'
}

if [ -z "${SKIP_MAIN:-}" ]; then
echo "tree: $files files in $base ($(df -T "$base" | awk 'NR==2 {print $2}')), $(nproc) cores"
# -mmin +43200: older than exactly 30 days, as headroom and rclone count.
run find find "$base/tree" -type f -mmin +43200 -delete
run headroom "$bin" purge --older-than 30d "$base/tree"
run headroom-c8 "$bin" purge --older-than 30d --concurrency 8 "$base/tree"
run rclone rclone delete --min-age 30d "$base/tree"
for other in headroom headroom-c8 rclone; do
  cmp -s "$base/left-find" "$base/left-$other" || { echo "$other left different files than find" >&2; exit 1; }
done
echo "all tools left the same $(wc -l <"$base/left-find") files"
fi

# Latency-injected variant: every metadata call (open, stat, unlink) sleeps
# LATENCY first, standing in for NFS/EFS round trips; a serial tool pays
# each one in turn, headroom overlaps --concurrency of them.
latency=${LATENCY:-2ms}
files=${LATENCY_FILES:-20000}
echo "latency-injected: $files files, $latency per metadata call"
for c in 1 8 32 128; do
  run "headroom --concurrency $c" "$bin" purge --older-than 30d --concurrency "$c" --simulate-latency "$latency" "$base/tree"
  cmp -s "$base/left-headroom --concurrency 1" "$base/left-headroom --concurrency $c" || { echo "concurrency $c left different files" >&2; exit 1; }
done
