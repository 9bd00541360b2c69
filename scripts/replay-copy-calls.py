#!/usr/bin/env python3
"""CPU seconds of the system calls a local copy makes, without headroom.

Copies SRC's files (one level of directories, as scripts/lib.sh's
small_files makes them) into DST, single-threaded, with one of two call
sequences, and prints the CPU seconds (user + system) they took:

  plain     open the source, create the destination, copy_file_range,
            close: what `cp -r` does.
  headroom  what headroom does for each file besides: statx of the
            destination (up to date?), a hidden partial file, fstat of the
            source after the copy (unchanged?), fchmod, utimensat, rename
            into place.

The difference is what headroom's guarantees cost in the kernel, in any
language. DST must not exist. Usage: replay-copy-calls.py plain|headroom SRC DST
"""
import os
import random
import resource
import sys

mode, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
if mode not in ("plain", "headroom"):
    sys.exit("mode must be plain or headroom")
files = []
for d in sorted(os.listdir(src)):
    os.makedirs(os.path.join(dst, d))
    files += [os.path.join(d, f) for f in sorted(os.listdir(os.path.join(src, d)))]
full = mode == "headroom"
before = resource.getrusage(resource.RUSAGE_SELF)
for rel in files:
    dest = os.path.join(dst, rel)
    if full:
        try:
            os.stat(dest)
        except FileNotFoundError:
            pass
    s = os.open(os.path.join(src, rel), os.O_RDONLY)
    st = os.fstat(s)
    name = dest
    if full:
        name = os.path.join(os.path.dirname(dest), ".headroom-%016x.partial" % random.getrandbits(64))
    t = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    done = 0
    while done < st.st_size:
        n = os.copy_file_range(s, t, st.st_size - done, done, done)
        if n == 0:
            break
        done += n
    if full:
        os.fstat(s)
        os.fchmod(t, st.st_mode & 0o777)
        os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.close(s)
    os.close(t)
    if full:
        os.rename(name, dest)
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(f"{mode}: {len(files)} files, {cpu:.2f} s CPU")
