#!/usr/bin/env bash
# Benchmark: headroom copy local -> local against `cp -r`, `cp -a` and
# rclone, on
# two datasets: many small files (1-64 KiB) and a few large ones. The
# tools alternate, RUNS times each, on a warm page cache, into a fresh
# destination each run; prints wall time and CPU seconds (user + system)
# of each run, and each tool's median. Run as root, the kernel's caches
# are dropped before each run (then the source is read once again).
#
#   scripts/bench-copy-local.sh [SMALL_FILES] [BIG_FILES] [BIG_MIB] [RUNS]
#
# Defaults: 20,000 files of 1-64 KiB (about 635 MiB) and 8 files of
# 256 MiB, 3 runs. HEADROOM_BASELINE=PATH adds another headroom binary
# (say, a build of an earlier commit) as the tool "baseline", to measure a
# change against what it changed. BENCH_FS=ext4-journal (as root) runs
# on a fresh journaled ext4 loop-mounted from a sparse file under target/,
# instead of on the disk the build is on: ext4 without a journal (as on
# some VMs' root disks) checks every candidate inode for a recent deletion
# when it allocates one (find_inode_bit -> recently_deleted), a cost that
# grows with parallel creators and that servers' journaled ext4 skips. The
# script prints which it ran on. REPLAY=1 adds, on the small set, the
# system calls of a copy replayed without headroom
# (scripts/replay-copy-calls.py): plain (what cp -r does), headroom's, and
# headroom's with one part left out or done another way, to price each
# (their times include Python's start and the listing, the same for all:
# compare them with each other).
# Needs rclone and GNU time; installs them from Debian's packages when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

small=${1:-20000}
big=${2:-8}
big_mib=${3:-256}
runs=${4:-3}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need rclone rclone
[ -x /usr/bin/time ] || need /usr/bin/time time

cargo build --release -q -p headroom --bin headroom
bin=$PWD/target/release/headroom

# On a disk, not tmpfs: what a migration copies between.
work=$(mktemp -d -p "$PWD/target" bench-copy-local.XXXXXX)
case "${BENCH_FS:-}" in
  "")
    trap 'rm -rf "$work"' EXIT
    ;;
  ext4-journal)
    [ "$(id -u)" = 0 ] || { echo "BENCH_FS=ext4-journal needs root (mount)" >&2; exit 2; }
    trap 'umount "$work" 2>/dev/null; rm -rf "$work" "$work.img"' EXIT
    # Room for both datasets twice (source and copy), sparse.
    truncate -s "$(((small * 66 / 1024 + big * big_mib) * 2 + 1024))M" "$work.img"
    mkfs.ext4 -q -F "$work.img"
    mount -o loop "$work.img" "$work"
    ;;
  *)
    echo "BENCH_FS must be empty or ext4-journal, not $BENCH_FS" >&2
    exit 2
    ;;
esac
# A mounted ext4 with a journal has a jbd2 entry named after its device.
dev=$(findmnt -no SOURCE -T "$work")
journal="without a journal"
ls /proc/fs/jbd2 2>/dev/null | grep -q "^$(basename "$dev")-" && journal="with a journal"
echo "filesystem: $(findmnt -no FSTYPE -T "$work") on $dev, $journal" >&2

echo "generating $small small files and $big x ${big_mib} MiB in $work" >&2
mkdir -p "$work/small" "$work/big"
small_files "$work/small" "$small"
for i in $(seq 1 "$big"); do
  head -c "$((big_mib << 20))" /dev/urandom >"$work/big/big-$i.bin"
done
sync

# One run: wall and CPU seconds, appended to $work/results as
# "dataset tool wall cpu".
run() {
  local dataset=$1 tool=$2
  shift 2
  rm -rf "$work/out"
  sync
  # Every run from the same state: the kernel's caches dropped where this
  # user may (root), so that the dentries and inodes the runs before
  # created and deleted do not slow the next (seen here: cp -r of the
  # small set drifting from 5.6 s to 12 s over 20 runs without it).
  echo 3 2>/dev/null >/proc/sys/vm/drop_caches || true
  # Warm cache: the source read once before every run.
  cat "$work/$dataset"/*/* "$work/$dataset"/*.bin >/dev/null 2>&1 || true
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >/dev/null 2>"$work/last.log" || {
    echo "$tool failed:" >&2
    tail -20 "$work/last.log" >&2
    exit 1
  }
  read -r wall user sys <"$work/time"
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  printf "%-6s %-24s %7.2f s wall %7.2f s CPU\n" "$dataset" "$tool" "$wall" "$cpu"
  echo "$dataset $tool $wall $cpu" >>"$work/results"
  diff -rq "$work/$dataset" "$work/out" >/dev/null || {
    echo "$tool: the copy differs from the source" >&2
    exit 1
  }
}

for dataset in small big; do
  echo "== $dataset: $(du -sh "$work/$dataset" | cut -f1), $(find "$work/$dataset" -type f | wc -l) files"
  for _ in $(seq 1 "$runs"); do
    run "$dataset" headroom "$bin" --memory 64MiB copy "$work/$dataset" "$work/out"
    if [ -n "${HEADROOM_BASELINE:-}" ]; then
      run "$dataset" baseline "$HEADROOM_BASELINE" --memory 64MiB copy "$work/$dataset" "$work/out"
    fi
    run "$dataset" cp cp -r "$work/$dataset" "$work/out"
    # What a migration uses: modes and times kept, as headroom keeps them.
    run "$dataset" cp-a cp -a "$work/$dataset" "$work/out"
    run "$dataset" rclone rclone copy "$work/$dataset" "$work/out"
    if [ "$dataset" = small ] && [ -n "${REPLAY:-}" ]; then
      variants=(plain headroom headroom,-stat headroom,-fstat headroom,-chmod headroom,-utime headroom,-rename headroom,+dirfd)
      # linkat of an unnamed file by its descriptor needs CAP_DAC_READ_SEARCH.
      [ "$(id -u)" = 0 ] && variants+=(headroom,+tmpfile)
      for v in "${variants[@]}"; do
        run small "replay:$v" python3 scripts/replay-copy-calls.py "$v" "$work/small" "$work/out"
      done
    fi
  done
done

echo
echo "medians:"
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for dataset in ("small", "big"):
    cp = [r for r in rows if r[0] == dataset and r[1] == "cp"]
    cp_wall = statistics.median(float(r[2]) for r in cp)
    cp_cpu = statistics.median(float(r[3]) for r in cp)
    tools = list(dict.fromkeys(r[1] for r in rows if r[0] == dataset))
    for tool in tools:
        mine = [r for r in rows if r[0] == dataset and r[1] == tool]
        wall = statistics.median(float(r[2]) for r in mine)
        cpu = statistics.median(float(r[3]) for r in mine)
        print(f"{dataset:6} {tool:24} wall {wall:6.2f} s ({wall / max(cp_wall, 0.01):4.2f}x cp)   CPU {cpu:6.2f} s ({cpu / max(cp_cpu, 0.01):4.2f}x cp)")
EOF
