"""What a first touch of memory costs on this machine, per 4 KiB page.

    .venv/bin/python bench/fault_cost.py [MiB] [ROUNDS]     (default 256, 3)

Maps MiB of fresh memory, writes one byte in each page and prints the microseconds per page:
private anonymous memory (what the bare plugin's bytearray is; transparent huge pages only
where madvised), a memfd (what uzram's pending ring and arena are), and a memfd whose pages were allocated first with fallocate (the touch then
only maps them). The first round can be dearer than the rest, because a virtual machine may
not have backed that memory yet, and memory the guest gave back becomes dear again a while
later. The Python loop's own cost per page is printed too (a touch of pages already mapped),
and is part of each figure.
"""

import mmap
import os
import sys
import time

PAGE = 4096


def touch(m, size):
    mv = memoryview(m)
    t = time.perf_counter()
    for off in range(0, size, PAGE):
        mv[off] = 1
    dt = time.perf_counter() - t
    mv.release()
    return dt


def memfd(size):
    fd = os.memfd_create("uzram-fault-cost")
    os.ftruncate(fd, size)
    return fd


def main():
    size = (int(sys.argv[1]) if len(sys.argv) > 1 else 256) << 20
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    pages = size // PAGE
    us = lambda s: f"{s * 1e6 / pages:5.2f}"
    print(f"{size >> 20} MiB, {pages} pages; microseconds per page")
    for r in range(rounds):
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # (mmap's default is shared)
        anon = touch(m, size)
        again = touch(m, size)
        m.close()
        fd = memfd(size)
        m = mmap.mmap(fd, size)
        shmem = touch(m, size)
        m.close()
        os.close(fd)
        fd = memfd(size)
        t = time.perf_counter()
        os.posix_fallocate(fd, 0, size)
        falloc = time.perf_counter() - t
        m = mmap.mmap(fd, size)
        mapped = touch(m, size)
        m.close()
        os.close(fd)
        print(f"round {r + 1}: anonymous {us(anon)}  memfd {us(shmem)}  memfd fallocate {us(falloc)} + touch "
              f"{us(mapped)}  (the loop alone: {us(again)})")


if __name__ == "__main__":
    main()
