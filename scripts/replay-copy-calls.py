#!/usr/bin/env python3
"""CPU seconds of the system calls a local copy makes, without headroom.

Copies SRC's files (one level of directories, as scripts/lib.sh's
small_files makes them) into DST, single-threaded, with one call sequence,
and prints the CPU seconds (user + system) it took:

  plain     open the source, create the destination, copy_file_range,
            close: what `cp -r` does.
  headroom  what headroom does for each file besides: statx of the
            destination (up to date?), a hidden partial file, fstat of the
            source after the copy (unchanged?), fchmod, utimensat, rename
            into place.

The difference is what headroom's guarantees cost in the kernel, in any
language. `headroom` takes variations after commas, to price each part:
-stat, -fstat, -chmod, -utime leave that call out; -rename writes under
the final name (no hidden file, no rename); +dirfd makes the destination's
calls relative to an open directory instead of a full path; +tmpfile
writes an unnamed file (O_TMPFILE) and links it into place (linkat, which
needs CAP_DAC_READ_SEARCH: run as root). DST must not exist.

Usage: replay-copy-calls.py plain|headroom[,VARIATION...] SRC DST
"""
import ctypes
import os
import random
import resource
import sys

mode, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
base, *variations = mode.split(",")
known = {"-stat", "-fstat", "-chmod", "-utime", "-rename", "+dirfd", "+tmpfile"}
if base not in ("plain", "headroom") or (base == "plain" and variations):
    sys.exit("mode must be plain, or headroom with variations after commas")
if set(variations) - known:
    sys.exit(f"unknown variations {sorted(set(variations) - known)}; known: {sorted(known)}")
full = base == "headroom"
does = lambda call: full and f"-{call}" not in variations
dirfd = "+dirfd" in variations
tmpfile = "+tmpfile" in variations
hidden = does("rename") and not tmpfile
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000

files = []
for d in sorted(os.listdir(src)):
    os.makedirs(os.path.join(dst, d))
    files += [os.path.join(d, f) for f in sorted(os.listdir(os.path.join(src, d)))]
dirs = {}
before = resource.getrusage(resource.RUSAGE_SELF)
for rel in files:
    dest = os.path.join(dst, rel)
    folder, name = os.path.split(dest)
    # The destination's calls: by full path, or relative to its directory.
    if dirfd:
        if folder not in dirs:
            dirs[folder] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        at, where = dirs[folder], lambda n: n
    else:
        at, where = None, lambda n: os.path.join(folder, n)
    if does("stat"):
        try:
            os.stat(where(name), dir_fd=at)
        except FileNotFoundError:
            pass
    s = os.open(os.path.join(src, rel), os.O_RDONLY)
    st = os.fstat(s)
    temp = ".headroom-%016x.partial" % random.getrandbits(64) if hidden else name
    if tmpfile:
        t = os.open(folder, os.O_WRONLY | os.O_TMPFILE, 0o600)
    else:
        t = os.open(where(temp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=at)
    done = 0
    while done < st.st_size:
        n = os.copy_file_range(s, t, st.st_size - done, done, done)
        if n == 0:
            break
        done += n
    if does("fstat"):
        os.fstat(s)
    if does("chmod"):
        os.fchmod(t, st.st_mode & 0o777)
    if does("utime"):
        os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))
    if tmpfile:
        target = where(name) if at is None else name
        if libc.linkat(t, b"", AT_FDCWD if at is None else at, target.encode(), AT_EMPTY_PATH):
            sys.exit(f"linkat {dest}: {os.strerror(ctypes.get_errno())}")
    os.close(s)
    os.close(t)
    if hidden:
        os.rename(where(temp), where(name), src_dir_fd=at, dst_dir_fd=at)
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(f"{mode}: {len(files)} files, {cpu:.2f} s CPU")
