#!/usr/bin/env python3
"""What one WAL group commit's fdatasync costs on this disk, appending to a
growing file (what Herald's WAL does today) and writing into a file that was
zero-filled and synced beforehand (a pre-zeroed segment: the file's size and
blocks do not change, so the fdatasync has no metadata to write).

    python3 bench/fdatasync_cost.py [DIR] [COMMITS] [BYTES_PER_COMMIT]

DIR defaults to the current directory (run it on the disk the data dir is
on); prints wall-clock and CPU microseconds per write + fdatasync, for each
way, twice, interleaved. Bounded: COMMITS writes per pass (default 2,000).
"""

import os
import sys
import time


def measure(directory, prezero, commits, size):
    path = os.path.join(directory, f"fdatasync-cost-{os.getpid()}.bin")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        if prezero:
            os.write(fd, bytes(commits * size))
            os.fsync(fd)
        record = b"x" * size
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(commits):
            os.pwrite(fd, record, index * size)
            os.fdatasync(fd)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        os.close(fd)
        os.unlink(path)
    return wall / commits * 1e6, cpu / commits * 1e6


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    commits = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    for prezero in (False, True, False, True):
        wall, cpu = measure(directory, prezero, commits, size)
        label = "pre-zeroed" if prezero else "appending "
        print(f"{label}  wall {wall:6.1f} us  cpu {cpu:6.1f} us  per write + fdatasync")


if __name__ == "__main__":
    main()
